"""Redis stopped, killed or frozen under load, then back: explicit 503s at once, then recovery.

While Redis is down every prediction is refused at once with 503 (reply_code 5, Retry-After) and
/health still answers; when it is back (started again on its port, or resumed), the API and the
worker reconnect by themselves, and nothing stays unacknowledged. No process is restarted.
"""

import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import httpx
import psutil
import pytest
import redis

from config import Settings
from core.infra.embedded_redis import EmbeddedRedis
from core.worker.restorer import RESTORE_EVERY_S
from tasks.app import visibility_timeout_s
from tests.chaos.conftest import Scale
from tests.support import (
    DEADLINE_S,
    Load,
    Outcome,
    heartbeat_since,
    latency_summary,
    short_deadline_env,
    start_api,
    start_workers,
    varied_trips,
    wait_until,
)

SLACK_S = 1.0
OUTAGE_REPLY_S = 1.0  # the longest a refusal may take while Redis is down
RECOVERY_S = 5.0  # the longest from Redis's return to the next prediction
VISIBILITY_S = visibility_timeout_s(
    Settings(request_timeout_s=DEADLINE_S, request_timeout_max_s=DEADLINE_S)
)
# How long a frozen Redis may go unnoticed: a stopped or killed one closes its connections, which
# every client sees at once; a frozen one (SIGSTOP: as a network partition or a stalled host)
# says nothing, and only a deadline on each call can tell.
FREEZE_NOTICED_S = 1.5
# A worker told to stop with Redis away has nothing to finish: its tasks cannot answer anyway.
STOP_WHILE_DOWN_S = 10.0


def answered_ok(load: Load, since: float) -> bool:
    """Tell whether a request sent at or after `since` got its prediction."""
    return any(o.kind == "ok" for o in load.sent_since(since))


def interrupt(server: EmbeddedRedis, how: str) -> None:
    """Take Redis away: stop it (SIGTERM), kill it (SIGKILL), or freeze it (SIGSTOP)."""
    if how == "freeze":
        os.kill(_pid(server), signal.SIGSTOP)
        return
    if how == "crash":
        os.kill(_pid(server), signal.SIGKILL)
    server.stop()


def resume(server: EmbeddedRedis, how: str) -> None:
    """Bring Redis back: start it again on its port, with its data, or let it run on."""
    if how == "freeze":
        os.kill(_pid(server), signal.SIGCONT)
    else:
        server.start()


def _pid(server: EmbeddedRedis) -> int:
    assert server.pid is not None
    return server.pid


@pytest.mark.parametrize("how", ["stop", "crash", "freeze"])
def test_redis_down_answers_503_at_once_and_recovers_without_restarting_anything(
    how: str,
    own_redis: EmbeddedRedis,
    log_dir: Path,
    scale: Scale,
    wrong_durations: Callable[[list[Outcome]], list[Outcome]],
    figures: Callable[[str], None],
) -> None:
    outage_s = 15.0 if scale.full else 4.0
    env = short_deadline_env(own_redis.url, log_dir)
    with ExitStack() as processes:
        api, base = start_api(env, log_dir)
        processes.callback(api.stop)
        (worker,) = start_workers(env, log_dir, [1])
        processes.callback(worker.stop)
        api_processes = {p.pid for p in psutil.Process(api.process.pid).children()}
        client = redis.Redis.from_url(own_redis.url, socket_timeout=2)
        processes.callback(client.close)
        with Load(
            base,
            varied_trips(500),
            repeat=True,
            concurrency=8,
            pause_s=0.01,
            timeout_s=DEADLINE_S + 10,
        ) as load:
            wait_until(lambda: answered_ok(load, 0), 30, "the platform to answer")
            stopping_at = time.monotonic()
            interrupt(own_redis, how)
            try:
                down_at = time.monotonic() + (FREEZE_NOTICED_S if how == "freeze" else 0.0)
                wait_until(
                    lambda: (
                        time.monotonic() - down_at >= outage_s
                        and len(load.sent_since(down_at)) >= scale.outage_requests
                    ),
                    outage_s + 5,
                    f"{scale.outage_requests} requests answered while Redis is away",
                )
                health = httpx.get(f"{base}/health", timeout=5)
                ready = httpx.get(f"{base}/ready", timeout=5)
                starting_at = time.monotonic()
                up_wall = time.time()
            finally:
                resume(own_redis, how)
            up_at = time.monotonic()
            wait_until(lambda: answered_ok(load, up_at), RECOVERY_S, "a prediction after Redis")
            recovered_at = min(
                o.sent_at + o.latency_s for o in load.sent_since(up_at) if o.kind == "ok"
            )
            wait_until(
                lambda: heartbeat_since(client, worker.hostname, up_wall),
                RECOVERY_S,
                "the worker's heartbeat after Redis came back",
            )
            beat_at = time.monotonic()
            wait_until(
                lambda: len(load.sent_since(recovered_at + 1.0)) >= 50,
                30,
                "requests after recovery",
            )
        outcomes = load.outcomes

        # Sent while Redis was away, early enough to have been refused before it came back.
        during = [o for o in outcomes if down_at <= o.sent_at < starting_at - OUTAGE_REPLY_S]
        after = [o for o in outcomes if o.sent_at >= recovered_at + 1.0]
        kinds = Counter(o.kind for o in outcomes)
        figures(
            f"Redis {how} for {starting_at - stopping_at:.1f} s under {len(outcomes)} requests: "
            f"{dict(kinds)}"
        )
        figures(
            f"while down: {len(during)} requests, {dict(Counter(o.kind for o in during))}, "
            f"{latency_summary(during)}"
        )
        figures(
            f"after Redis answered again: first prediction in {recovered_at - up_at:.2f} s, "
            f"worker heartbeat in {beat_at - up_at:.2f} s"
        )
        assert during
        assert {o.kind for o in during} == {"unavailable"}
        assert max(o.latency_s for o in during) < OUTAGE_REPLY_S
        assert {o.retry_after for o in during} == {"1"}
        assert health.status_code == 200
        assert ready.status_code == 503
        # Requests caught in flight by the stop may time out; none is left hanging, none fails.
        assert set(kinds) <= {"ok", "timeout", "unavailable"}, kinds
        assert max(o.latency_s for o in outcomes) <= DEADLINE_S + SLACK_S
        assert after
        assert {o.kind for o in after} == {"ok"}
        assert wrong_durations(outcomes) == []

        # Tasks the worker held when Redis went away go back to the queue, expired, and are
        # discarded: nothing stays unacknowledged.
        wait_until(
            lambda: client.hlen("unacked") == 0 and client.llen("tasks.trip") == 0,
            VISIBILITY_S + RESTORE_EVERY_S + 5 + 5,
            "nothing left unacknowledged or queued",
        )
        assert api.alive()
        assert worker.alive()
        assert {p.pid for p in psutil.Process(api.process.pid).children()} == api_processes


def test_a_worker_told_to_stop_while_redis_is_down_exits_at_once(
    own_redis: EmbeddedRedis, log_dir: Path, figures: Callable[[str], None]
) -> None:
    env = short_deadline_env(own_redis.url, log_dir)
    (worker,) = start_workers(env, log_dir, [1])
    events = redis.Redis.from_url(own_redis.url).pubsub()  # type: ignore[no-untyped-call,unused-ignore]
    try:
        # Redis goes away just after one of Celery's own heartbeat events, as in the field.
        events.psubscribe("*celeryev/worker.heartbeat")
        wait_until(
            lambda: (m := events.get_message(timeout=0.5)) is not None and m["type"] == "pmessage",
            10,
            "a heartbeat event from the worker",
        )
        interrupt(own_redis, "crash")
        # Two missed heartbeats (WORKER_HEARTBEAT_S apart) span at least one of Celery's own
        # heartbeat events, which is what kept a stopping worker waiting for the broker.
        wait_until(
            lambda: worker.log_tail(1_000_000).count("heartbeat failed") >= 2,
            20,
            "the worker to miss two heartbeats",
        )
        worker.process.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        wait_until(lambda: not worker.alive(), STOP_WHILE_DOWN_S, "the worker to exit")
        exited_s = time.monotonic() - stopped_at
    finally:
        events.close()
        worker.stop()

    figures(f"SIGTERM with Redis down: the worker exited {exited_s:.1f} s later")
    assert worker.process.returncode == 0
