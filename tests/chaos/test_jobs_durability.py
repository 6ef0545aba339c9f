"""An accepted async job is not lost: not to a worker killed mid-run, nor to a Redis restart.

A job's hash and its task message are written together (core.jobs.store); a worker SIGKILLed
while running the job leaves the message unacknowledged, and another worker runs the job again
once the visibility timeout has passed. With Redis's append-only file, a job accepted before a
restart is still there after it, and runs. A job no worker starts in time expires, never runs.
"""

import asyncio
import os
import signal
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from config import Settings
from core.infra.embedded_redis import EmbeddedRedis
from core.jobs.schemas import JobState
from core.jobs.store import JobStore, job_key
from core.model.artifact import TripModel
from core.worker.restorer import RESTORE_EVERY_S
from tasks.app import visibility_timeout_s
from tests.chaos.conftest import LONG_TASK_MODEL
from tests.support import (
    DEADLINE_S,
    short_deadline_env,
    start_api,
    start_workers,
    tripq_env,
    wait_until,
)

SETTINGS = Settings()
JOBS_QUEUE = SETTINGS.job_queue
VISIBILITY_S = visibility_timeout_s(
    Settings(request_timeout_s=DEADLINE_S, request_timeout_max_s=DEADLINE_S)
)
# Put back after the visibility timeout, a sweep, and a restore mutex the killed worker may hold.
PUT_BACK_WITHIN_S = VISIBILITY_S + RESTORE_EVERY_S + 10
# A job long enough to be caught running: a million trips, a few seconds of a worker here.
LONG_JOB_TRIPS = 1_000_000
RUN_WITHIN_S = 60.0  # bound on one run of the long job on this noisy machine
STOP_S = 20.0  # bound on a killed worker's exit
RECOVERY_S = 10.0  # bound on the API noticing that Redis left, or that it is back
TRIP: dict[str, Any] = {
    "request_id": "job-1",
    "PULocationID": 130,
    "DOLocationID": 250,
    "trip_distance": 3.0,
}


def create_long_job(redis_url: str) -> str:
    """Accept a job of LONG_JOB_TRIPS trips exactly as the API does; return its id."""
    ids = range(LONG_JOB_TRIPS)
    payload = {
        "columns": {
            "PULocationID": [1 + i % 265 for i in ids],
            "DOLocationID": [1 + (i * 11) % 265 for i in ids],
            "trip_distance": [0.5 + i % 30 for i in ids],
        },
        "request_ids": [f"t{i}" for i in ids],
        "refused": {},
    }

    async def create() -> tuple[str, str]:
        client = AsyncRedis.from_url(redis_url)
        try:
            store = JobStore(client, SETTINGS, origin="chaos-test")
            return await store.create(
                payload=payload,
                trips=LONG_JOB_TRIPS,
                body_sha="chaos",
                owner="",
                idempotency=None,
                callback_url=None,
                callback_secret=None,
                version=None,
            )
        finally:
            await client.aclose()

    return asyncio.run(create())[0]


def job_field(client: redis.Redis, job_id: str, field: str) -> str | None:
    """Read one field of a job's hash, as text."""
    value = client.hget(job_key(job_id), field)
    return value.decode() if isinstance(value, bytes) else value


def message_unacked(client: redis.Redis, job_id: str) -> bool:
    """Tell whether the job's task message was taken by a worker and not acknowledged."""
    return any(f"job-{job_id}".encode() in message for message in client.hvals("unacked"))


def test_job_held_by_a_sigkilled_worker_is_run_again_by_another_worker(
    flushed_db: redis.Redis, redis_url: str, log_dir: Path, figures: Callable[[str], None]
) -> None:
    env = short_deadline_env(redis_url, log_dir) | {"SERVING_VERSION": LONG_TASK_MODEL}
    with ExitStack() as processes:
        (first,) = start_workers(env, log_dir, [1])
        processes.callback(first.stop)
        job_id = create_long_job(redis_url)
        wait_until(
            lambda: (
                job_field(flushed_db, job_id, "state") == "running"
                and message_unacked(flushed_db, job_id)
            ),
            30,
            "the first worker to claim the job",
        )
        os.kill(first.process.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        first.process.wait(STOP_S)
        assert job_field(flushed_db, job_id, "state") == "running", "it ended before the kill"
        assert job_field(flushed_db, job_id, "finished_at") is None
        assert job_field(flushed_db, job_id, "attempts") == "1"
        assert message_unacked(flushed_db, job_id)

        (second,) = start_workers(env, log_dir, [2])
        processes.callback(second.stop)
        wait_until(
            lambda: JobState(job_field(flushed_db, job_id, "state") or "queued").final,
            PUT_BACK_WITHIN_S + RUN_WITHIN_S,
            "the second worker to run the job",
        )
        ended_s = time.monotonic() - killed_at
        run_s = float(job_field(flushed_db, job_id, "finished_at") or "nan") - float(
            job_field(flushed_db, job_id, "started_at") or "nan"
        )
        figures(
            f"{LONG_JOB_TRIPS:,}-trip job held by the killed worker ended {ended_s:.1f} s after "
            f"the kill (visibility timeout {VISIBILITY_S:g} s, second worker's start included); "
            f"its second run took {run_s:.1f} s"
        )
        state = job_field(flushed_db, job_id, "state")
        assert state == "succeeded", (state, job_field(flushed_db, job_id, "error"))
        assert job_field(flushed_db, job_id, "attempts") == "2"
        result = orjson.loads(flushed_db.hget(job_key(job_id), "result") or b"null")
        replies = result["replies"]
        assert len(replies) == LONG_JOB_TRIPS
        assert {reply["reply_code"] for reply in replies} == {0}
        assert [reply["request_id"] for reply in replies[:2]] == ["t0", "t1"]
        assert replies[-1]["request_id"] == f"t{LONG_JOB_TRIPS - 1}"
        # Acknowledged once run: nothing left taken or waiting.
        wait_until(
            lambda: flushed_db.hlen("unacked") == 0 and flushed_db.llen(JOBS_QUEUE) == 0,
            5,
            "the job's message to be acknowledged",
        )
        assert second.alive()


def get_job(base: str, job_id: str) -> httpx.Response | None:
    """GET a job; None when the API did not answer at all."""
    try:
        return httpx.get(f"{base}/v1/trip/jobs/{job_id}", timeout=2.0)
    except httpx.HTTPError:
        return None


def job_status(base: str, job_id: str) -> int | None:
    """Give the HTTP status a GET of the job gets (None: no reply)."""
    reply = get_job(base, job_id)
    return None if reply is None else reply.status_code


def read_job(base: str, job_id: str) -> dict[str, Any] | None:
    """GET a job's view, or None while the API cannot answer for it."""
    reply = get_job(base, job_id)
    if reply is None or reply.status_code != 200:
        return None
    view: dict[str, Any] = reply.json()
    return view


def job_in_state(base: str, job_id: str, state: str) -> bool:
    """Tell whether the API says the job is in `state`."""
    view = read_job(base, job_id)
    return view is not None and view["state"] == state


def submit_job(base: str) -> str:
    """POST TRIP as a job; return its id."""
    reply = httpx.post(f"{base}/v1/trip/jobs", json=TRIP, timeout=5.0)
    assert reply.status_code == 202, reply.text
    job_id: str = reply.json()["job_id"]
    assert reply.headers["Location"] == f"/v1/trip/jobs/{job_id}"
    return job_id


def test_accepted_job_survives_a_redis_restart(
    own_redis: EmbeddedRedis,
    log_dir: Path,
    model: TripModel,
    figures: Callable[[str], None],
) -> None:
    env = tripq_env(own_redis.url, log_dir)
    with ExitStack() as processes:
        api, base = start_api(env, log_dir)
        processes.callback(api.stop)
        job_id = submit_job(base)
        assert job_in_state(base, job_id, "queued")

        own_redis.stop()
        wait_until(lambda: job_status(base, job_id) == 503, RECOVERY_S, "503 while Redis is down")
        restarted_at = time.monotonic()
        own_redis.start()  # same port and folder: the append-only file is replayed
        wait_until(lambda: job_in_state(base, job_id, "queued"), RECOVERY_S, "the job after Redis")
        figures(f"job readable again {time.monotonic() - restarted_at:.2f} s after the restart")

        (worker,) = start_workers(env, log_dir, [1])
        processes.callback(worker.stop)
        started_at = time.monotonic()
        wait_until(lambda: job_in_state(base, job_id, "succeeded"), 30, "the job to succeed")
        figures(f"job succeeded {time.monotonic() - started_at:.2f} s after the worker was ready")
        view = read_job(base, job_id)
        assert view is not None
        (reply,) = view["result"]["replies"]
        (expected,) = model.predict_columns(
            [TRIP["PULocationID"]], [TRIP["DOLocationID"]], [TRIP["trip_distance"]]
        )
        assert reply["reply_code"] == 0
        assert reply["request_id"] == TRIP["request_id"]
        assert reply["duration"] == pytest.approx(expected, rel=1e-9)
        assert view["result"]["model_version"] == model.version
        assert api.alive()


def test_job_expires_when_no_worker_starts_it_in_time(
    flushed_db: redis.Redis, redis_url: str, log_dir: Path
) -> None:
    queue_timeout_s = 1.0
    env = tripq_env(redis_url, log_dir, job_queue_timeout_s=queue_timeout_s)
    with ExitStack() as processes:
        api, base = start_api(env, log_dir)
        processes.callback(api.stop)
        job_id = submit_job(base)
        wait_until(
            lambda: job_in_state(base, job_id, "expired"),
            queue_timeout_s + 5,
            "the job to expire",
        )
        assert flushed_db.llen(JOBS_QUEUE) == 1  # its message still waits

        (worker,) = start_workers(env, log_dir, [1])
        processes.callback(worker.stop)
        # Taken, and discarded unrun: its message expires with the job (Celery revokes it).
        wait_until(
            lambda: (
                flushed_db.llen(JOBS_QUEUE) == 0
                and flushed_db.hlen("unacked") == 0
                and "job task expired unrun" in worker.log_tail(100_000)
            ),
            10,
            "the worker to take the expired job's message and drop it",
        )
        view = read_job(base, job_id)
        assert view is not None
        assert view["state"] == "expired"
        assert view["started_at"] is None
        assert "result" not in view
        assert job_field(flushed_db, job_id, "attempts") is None
