"""One API process SIGKILLed under load: the other keeps serving, and gunicorn replaces it.

Only the requests on the killed process's connections fail (the connection drops: a client sees
it at once and may retry); every other request is answered, and within a few seconds gunicorn
runs two processes again, each listening for its results. SIGTERM, by contrast, drains: the
requests already waiting get their answers before the API exits.
"""

import signal
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx
import psutil
import pytest
import redis

from core.infra.embedded_redis import EmbeddedRedis
from core.online.client import CLIENT_NAME
from tests.chaos.conftest import Scale
from tests.support import (
    DEADLINE_S,
    Load,
    Outcome,
    Service,
    latency_summary,
    short_deadline_env,
    start_api_processes,
    start_workers,
    tripq_env,
    varied_trips,
    wait_until,
)

SLACK_S = 1.0
REPLACED_WITHIN_S = 20.0
# Long enough for a worker to start (it loads its model) while the request waits.
DRAIN_DEADLINE_S = 25.0


def api_processes(api: Service) -> set[int]:
    """The pids of gunicorn's live worker processes."""
    return {
        p.pid
        for p in psutil.Process(api.process.pid).children()
        if p.status() != psutil.STATUS_ZOMBIE
    }


def listeners(client: redis.Redis) -> set[int]:
    """Name the Redis connections that hold a result subscription: one per API process up."""
    return {
        int(c["id"])
        for c in client.client_list()
        if c.get("name") == CLIENT_NAME and int(c.get("psub", 0)) > 0
    }


def test_api_process_sigkill_fails_only_its_own_connections_and_gunicorn_replaces_it(
    own_redis: EmbeddedRedis,
    log_dir: Path,
    scale: Scale,
    wrong_durations: Callable[[list[Outcome]], list[Outcome]],
    figures: Callable[[str], None],
) -> None:
    env = short_deadline_env(own_redis.url, log_dir)
    with ExitStack() as processes:
        client = redis.Redis.from_url(own_redis.url)
        processes.callback(client.close)
        (worker,) = start_workers(env, log_dir, [1])
        processes.callback(worker.stop)
        api, base = start_api_processes(env, log_dir, 2)
        processes.callback(api.stop)

        seen: list[tuple[set[int], set[int]]] = []

        def both_listening() -> bool:
            seen.append((api_processes(api), listeners(client)))
            return len(seen[-1][0]) == 2 and len(seen[-1][1]) == 2

        try:
            wait_until(both_listening, 30, "two API processes listening for results")
        except pytest.fail.Exception:
            pytest.fail(f"last seen (processes, listeners): {seen[-1]}\n{api.log_tail()}")
        before = api_processes(api)
        listening_before = listeners(client)
        with Load(
            base,
            varied_trips(1000),
            repeat=True,
            concurrency=scale.concurrency,
            timeout_s=DEADLINE_S + 10,
        ) as load:
            wait_until(lambda: len(load.outcomes) >= 100, 30, "the API to answer")
            victim = psutil.Process(min(before))
            victim.kill()
            killed_at = time.monotonic()
            victim.wait(10)

            def replaced() -> bool:
                now = api_processes(api)
                subscribed = listeners(client) - listening_before
                return len(now) == 2 and victim.pid not in now and bool(subscribed)

            wait_until(replaced, REPLACED_WITHIN_S, "gunicorn to replace the killed process")
            replaced_at = time.monotonic()
            wait_until(
                lambda: len(load.sent_since(replaced_at)) >= scale.after_kill_requests,
                120,
                "requests after the replacement",
            )
        outcomes = load.outcomes

        failed = [o for o in outcomes if o.status is None]
        served = [o for o in outcomes if o.status is not None]
        meanwhile = [o for o in served if killed_at <= o.sent_at < replaced_at]
        figures(
            f"{len(outcomes)} requests at {scale.concurrency} clients, one of 2 API processes "
            f"SIGKILLed: {len(failed)} connection errors "
            f"({dict(Counter(o.error for o in failed))}), "
            f"{dict(Counter(o.kind for o in served))} otherwise"
        )
        figures(
            f"replaced and listening after {replaced_at - killed_at:.2f} s, during which "
            f"{len(meanwhile)} requests were answered; {latency_summary(served)}"
        )
        # Only connections to the killed process fail: at most one per client, around the kill.
        assert len(failed) <= scale.concurrency
        assert all(
            killed_at - DEADLINE_S - SLACK_S <= o.sent_at <= killed_at + SLACK_S for o in failed
        )
        assert {o.kind for o in served} == {"ok"}
        assert wrong_durations(served) == []
        assert max(o.latency_s for o in outcomes) <= DEADLINE_S + SLACK_S
        # The other process served while gunicorn replaced the killed one (when that took time).
        assert meanwhile or replaced_at - killed_at < 0.5
        assert api.alive()
        assert worker.alive()


def test_api_sigterm_answers_the_requests_already_waiting_before_it_exits(
    own_redis: EmbeddedRedis, log_dir: Path, figures: Callable[[str], None]
) -> None:
    # No worker yet: the request waits in the queue when the API is told to stop, and the
    # worker started afterwards answers it through the stopping API.
    env = tripq_env(own_redis.url, log_dir)
    trip = varied_trips(1, "drain")[0]
    client = redis.Redis.from_url(own_redis.url)
    with ExitStack() as processes:
        processes.callback(client.close)
        api, base = start_api_processes(env, log_dir, 1)
        processes.callback(api.stop)
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(
                httpx.post,
                f"{base}/v1/trip/predict",
                json=trip,
                headers={"X-Request-Timeout": str(DRAIN_DEADLINE_S)},
                timeout=DRAIN_DEADLINE_S + 10,
            )
            wait_until(lambda: client.llen("tasks.trip") == 1, 10, "the request's task queued")
            api.process.send_signal(signal.SIGTERM)
            signalled_at = time.monotonic()
            (worker,) = start_workers(env, log_dir, [1])
            processes.callback(worker.stop)
            reply = waiting.result(DRAIN_DEADLINE_S + 10)
            answered_s = time.monotonic() - signalled_at
        code = api.finish(20)
        exited_s = time.monotonic() - signalled_at

    figures(f"answered {answered_s:.1f} s after SIGTERM; the API exited {exited_s:.1f} s after it")
    assert reply.status_code == 200
    assert reply.json()["request_id"] == trip["request_id"]
    assert reply.json()["reply_code"] == 0
    assert code == 0
