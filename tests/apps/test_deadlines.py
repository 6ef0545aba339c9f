"""Deadlines with no worker, and a Redis that does not answer: explicit replies, never a hang."""

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from redis.client import PubSub

from tests.support import Service, free_port, start_api, start_worker, tripq_env, wait_until

TRIP = {"request_id": "late-1", "PULocationID": 130, "DOLocationID": 250, "trip_distance": 3.0}
DEADLINE_S = 1.0
SLACK_S = 0.5


@pytest.fixture(scope="module")
def api_without_workers(redis_url: str, log_dir: Path) -> Iterator[str]:
    """Run the API with a one-second deadline and no worker at all."""
    api, base = start_api(tripq_env(redis_url, log_dir, request_timeout_s=DEADLINE_S), log_dir)
    yield base
    api.stop()


def published_statuses(results: PubSub, until: str, timeout_s: float) -> list[str]:
    """Collect the statuses of task records published until one has status `until`."""
    statuses: list[str] = []
    deadline = time.monotonic() + timeout_s
    while until not in statuses and time.monotonic() < deadline:
        message = results.get_message(timeout=0.5)
        if message and message["type"] == "pmessage":
            statuses.append(json.loads(message["data"])["status"])
    return statuses


def test_predict_times_out_with_reply_code_when_no_worker_and_the_task_never_runs(
    api_without_workers: str,
    redis_url: str,
    redis_client: redis.Redis,
    log_dir: Path,
) -> None:
    started = time.monotonic()
    reply = httpx.post(f"{api_without_workers}/v1/trip/predict", json=TRIP, timeout=10)
    elapsed = time.monotonic() - started

    assert reply.status_code == 504
    assert reply.json()["reply_code"] == 2
    assert reply.json()["request_id"] == "late-1"
    assert DEADLINE_S <= elapsed < DEADLINE_S + SLACK_S
    assert redis_client.llen("tasks.trip") == 1

    # A worker that starts afterwards takes the task off the queue and discards it as expired:
    # the only record it publishes for the task says REVOKED, never SUCCESS.
    results = redis_client.pubsub()  # type: ignore[no-untyped-call,unused-ignore]
    results.psubscribe("celery-task-meta-*")
    worker = start_worker(tripq_env(redis_url, log_dir), log_dir)
    try:
        wait_until(lambda: redis_client.llen("tasks.trip") == 0, 30, "the worker to take the task")
        assert published_statuses(results, until="REVOKED", timeout_s=30) == ["REVOKED"]

        # The same worker answers fresh requests: the refusal above was the deadline's doing.
        fresh = httpx.post(f"{api_without_workers}/v1/trip/predict", json=TRIP, timeout=10)
        assert fresh.status_code == 200
        assert fresh.json()["reply_code"] == 0
    finally:
        worker.stop()
        results.close()


def test_ready_answers_503_when_no_worker_is_alive(
    api_without_workers: str, redis_client: redis.Redis
) -> None:
    wait_until(
        lambda: httpx.get(f"{api_without_workers}/ready", timeout=5).json()["workers"] == [],
        15,
        "the stopped worker's heartbeat to go stale",
    )
    reply = httpx.get(f"{api_without_workers}/ready", timeout=5)

    assert reply.status_code == 503
    assert reply.json()["ready"] is False
    assert reply.json()["redis"] is True


def test_unreachable_redis_answers_503_at_once(log_dir: Path) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    api, base = start_api(tripq_env(dead_redis, log_dir, request_timeout_s=5), log_dir)
    try:
        started = time.monotonic()
        reply = httpx.post(f"{base}/v1/trip/predict", json=TRIP, timeout=10)
        elapsed = time.monotonic() - started

        assert reply.status_code == 503
        assert reply.json()["reply_code"] == 5
        assert reply.headers["retry-after"] == "1"
        assert elapsed < 1.0
        assert httpx.get(f"{base}/health", timeout=5).status_code == 200
        assert httpx.get(f"{base}/ready", timeout=5).status_code == 503
    finally:
        api.stop()


def test_api_process_exits_cleanly_on_sigterm(redis_url: str, log_dir: Path) -> None:
    api, _ = start_api(tripq_env(redis_url, log_dir), log_dir)

    assert isinstance(api, Service)
    assert api.stop() == 0
