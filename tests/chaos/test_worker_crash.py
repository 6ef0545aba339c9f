"""A worker killed or stopped mid-work: no accepted request is lost silently, nothing hangs.

SIGKILL: every request gets its prediction or the explicit timeout reply by its deadline, the
other worker carries on, and what the dead worker held goes back to the queue once the visibility
timeout has passed. SIGTERM: the worker finishes every task it took, leaves the rest queued for
other workers, and exits 0.
"""

import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import redis

from config import Settings
from core.online import protocol
from core.online.sender import PREDICT_BATCH_TASK
from core.worker.restorer import RESTORE_EVERY_S
from tasks.app import visibility_timeout_s
from tests.chaos.conftest import LONG_TASK_MODEL, Scale
from tests.support import (
    DEADLINE_S,
    Load,
    Outcome,
    latency_summary,
    short_deadline_env,
    start_api,
    start_workers,
    tripq_env,
    varied_trips,
    wait_until,
)

QUEUE = "tasks.trip"
SLACK_S = 1.0  # how late past its deadline a reply may come on this noisy machine
STOP_S = 20.0  # bound on a worker's exit once killed or told to stop
VISIBILITY_S = visibility_timeout_s(
    Settings(request_timeout_s=DEADLINE_S, request_timeout_max_s=DEADLINE_S)
)
# Visibility timeout, then a sweep, then a restore mutex a killed sweeper may have left behind.
RESTORED_WITHIN_S = VISIBILITY_S + RESTORE_EVERY_S + 5 + 5
# A task long enough to be caught running: 1M trips, a 15 MB message, ~2.5 s of a worker here.
LONG_TASK_TRIPS = 1_000_000
TRIP = {"request_id": "after", "PULocationID": 130, "DOLocationID": 250, "trip_distance": 3.0}


def send_long_task(client: redis.Redis, expires_in_s: float) -> tuple[str, str]:
    """Queue one predict_batch task as the API writes it; return its id and delivery tag."""
    task_id = f"chaos-{uuid.uuid4().hex}"
    count = LONG_TASK_TRIPS
    columns = {
        "PULocationID": [1 + i % 265 for i in range(count)],
        "DOLocationID": [1 + (i * 7) % 265 for i in range(count)],
        "trip_distance": [1.0 + i % 20 for i in range(count)],
    }
    message = protocol.encode_task(
        task_id=task_id,
        task_name=PREDICT_BATCH_TASK,
        queue=QUEUE,
        args=[columns],
        kwargs={"sent_at": time.time()},
        expires=datetime.now(UTC) + timedelta(seconds=expires_in_s),
        origin="chaos-test",
    )
    client.lpush(QUEUE, message)
    return task_id, orjson.loads(message)["properties"]["delivery_tag"]


def task_outcome(client: redis.Redis, task_id: str) -> protocol.TaskOutcome | None:
    """Read a task's result record, if a worker wrote one."""
    raw = client.get(protocol.result_key(task_id))
    return None if raw is None else protocol.decode_result(raw)


def test_worker_sigkill_under_load_answers_every_request_by_its_deadline_with_200_or_504(
    flushed_db: redis.Redis,
    redis_url: str,
    log_dir: Path,
    scale: Scale,
    wrong_durations: Callable[[list[Outcome]], list[Outcome]],
    figures: Callable[[str], None],
) -> None:
    env = short_deadline_env(redis_url, log_dir)
    with ExitStack() as processes:
        api, base = start_api(env, log_dir)
        processes.callback(api.stop)
        victim, survivor = start_workers(env, log_dir, [1, 2])
        processes.callback(victim.stop)
        processes.callback(survivor.stop)

        trips = varied_trips(scale.kill_requests)
        with Load(base, trips, concurrency=scale.concurrency, timeout_s=DEADLINE_S + 10) as load:
            wait_until(lambda: len(load.outcomes) >= len(trips) // 3, 60, "a third of the load")
            os.kill(victim.process.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            held = flushed_db.hlen("unacked")
            outcomes = load.wait(120)
        victim.process.wait(STOP_S)

        kinds = Counter(o.kind for o in outcomes)
        late = [o for o in outcomes if o.latency_s > DEADLINE_S + SLACK_S]
        figures(
            f"{len(outcomes)} requests at {scale.concurrency} clients, worker SIGKILLed after "
            f"{len(trips) // 3}: {dict(kinds)}; unacknowledged tasks just after the kill: {held}"
        )
        figures(f"latency: {latency_summary(outcomes)}")
        assert len(outcomes) == len(trips)
        # Redis stays up, so nothing is refused: each request gets the model's answer, or a 504
        # at its deadline.
        assert set(kinds) <= {"ok", "timeout"}, kinds
        assert late == []
        assert wrong_durations(outcomes) == []
        # Only the requests in flight on the dead worker, and those that waited behind them for
        # the API's batch slots, may time out: every other one is answered.
        assert kinds["timeout"] <= 2 * scale.concurrency
        assert kinds["ok"] == len(trips) - kinds["timeout"]

        # The survivor answers, and what the dead worker held goes back to the queue once the
        # visibility timeout has passed; expired by then, it is discarded, not computed.
        reply = httpx.post(f"{base}/v1/trip/predict", json=TRIP, timeout=DEADLINE_S + 5)
        assert reply.status_code == 200
        wait_until(
            lambda: flushed_db.hlen("unacked") == 0 and flushed_db.llen(QUEUE) == 0,
            RESTORED_WITHIN_S,
            "the dead worker's tasks to leave `unacked` and the queue",
        )
        figures(
            f"unacked and queue empty {time.monotonic() - killed_at:.1f} s after the kill "
            f"(visibility timeout {VISIBILITY_S:g} s)"
        )
        assert survivor.alive()


def test_task_held_by_a_sigkilled_worker_is_put_back_and_run_by_another_worker(
    flushed_db: redis.Redis, redis_url: str, log_dir: Path, figures: Callable[[str], None]
) -> None:
    env = short_deadline_env(redis_url, log_dir) | {"SERVING_VERSION": LONG_TASK_MODEL}
    with ExitStack() as processes:
        (first,) = start_workers(env, log_dir, [1])
        processes.callback(first.stop)

        # A task whose deadline lies beyond the visibility timeout, as an older producer's
        # deadline-free predict_ride task would: worth running after its worker died.
        task_id, tag = send_long_task(flushed_db, expires_in_s=120)
        wait_until(lambda: flushed_db.hexists("unacked", tag), 30, "the first worker to take it")
        os.kill(first.process.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        first.process.wait(STOP_S)
        assert task_outcome(flushed_db, task_id) is None, "it finished before the kill"
        assert flushed_db.hexists("unacked", tag)

        (second,) = start_workers(env, log_dir, [2])
        processes.callback(second.stop)
        wait_until(
            lambda: task_outcome(flushed_db, task_id) is not None,
            RESTORED_WITHIN_S + 30,
            "the second worker to run the task",
        )
        outcome = task_outcome(flushed_db, task_id)
        figures(
            f"task held by the killed worker answered {time.monotonic() - killed_at:.1f} s "
            f"after the kill (visibility timeout {VISIBILITY_S:g} s, second worker's start "
            "included)"
        )
        assert outcome is not None
        assert outcome.status == protocol.SUCCESS
        assert len(outcome.result["durations"]) == LONG_TASK_TRIPS
        assert flushed_db.hlen("unacked") == 0
        assert flushed_db.llen(QUEUE) == 0


def test_worker_sigterm_finishes_every_task_it_took_exits_0_and_loses_no_request(
    flushed_db: redis.Redis,
    redis_url: str,
    log_dir: Path,
    scale: Scale,
    wrong_durations: Callable[[list[Outcome]], list[Outcome]],
    figures: Callable[[str], None],
) -> None:
    # Requests sent during the drain must outlive it and the next worker's start: the stopping
    # worker may still take the first of them (its consumer stops within one poll), or not.
    patience_s = 30.0
    env = tripq_env(
        redis_url,
        log_dir,
        request_timeout_s=DEADLINE_S,
        request_timeout_max_s=30,
        serving_version=LONG_TASK_MODEL,
    )
    with ExitStack() as processes:
        api, base = start_api(env, log_dir)
        processes.callback(api.stop)
        (first,) = start_workers(env, log_dir, [1])
        processes.callback(first.stop)

        task_id, tag = send_long_task(flushed_db, expires_in_s=patience_s)
        wait_until(lambda: flushed_db.hexists("unacked", tag), 30, "the worker to take the task")
        first.process.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()

        trips = varied_trips(scale.concurrency, prefix="drain-")
        with Load(
            base,
            trips,
            concurrency=scale.concurrency,
            timeout_s=patience_s + 5,
            headers={"X-Request-Timeout": str(patience_s)},
        ) as load:
            code = first.process.wait(STOP_S)
            drained_s = time.monotonic() - stopped_at
            # What the stopping worker ran, it finished; what it had not, it left in the queue.
            finished = task_outcome(flushed_db, task_id)
            assert flushed_db.hlen("unacked") == 0
            wait_until(
                lambda: len(load.outcomes) == len(trips) or flushed_db.llen(QUEUE) > 0,
                5,
                "the requests not answered to wait in the queue",
            )
            answered_by_first = len(load.outcomes)

            (second,) = start_workers(env, log_dir, [2])
            processes.callback(second.stop)
            outcomes = load.wait(patience_s + 10)

        figures(
            f"SIGTERM during a {LONG_TASK_TRIPS:,}-trip task: exit {code} after {drained_s:.1f} s; "
            f"of {len(trips)} requests sent after the signal, {answered_by_first} answered by "
            f"the stopping worker, {len(trips) - answered_by_first} left queued for the next"
        )
        assert code == 0
        assert drained_s < 15
        assert finished is not None
        assert finished.status == protocol.SUCCESS
        assert [o.kind for o in outcomes] == ["ok"] * len(trips)
        assert wrong_durations(outcomes) == []
        assert max(o.latency_s for o in outcomes) < patience_s
