"""Jobs belong to the API key that made them: reads, cancels, idempotency and quotas, per key.

Two APIs share this module's Redis, both with API_KEYS: `keyed` has a worker behind it; `held`
sends its jobs to a queue no worker reads, so they stay queued, and has small per-key quotas.
"""

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from core.jobs.store import IDEMPOTENCY_KEY_PREFIX, JOB_KEY_PREFIX, OWNER_KEY_PREFIX, job_key
from tests.support import running_platform, start_api, tripq_env, wait_until

KEY_A, KEY_B, KEY_C = "key-a-0123456789", "key-b-0123456789", "key-c-0123456789"
TRIP = {"request_id": "o1", "PULocationID": 130, "DOLocationID": 250, "trip_distance": 3.0}
HELD_JOBS = "held.trip.jobs"
HELD_MAX_OPEN = 3
HELD_MAX_BYTES = 60_000


@pytest.fixture(scope="module")
def keyed(redis_url: str, log_dir: Path) -> Iterator[str]:
    """An API with keys A, B and C and one worker; yield its base URL."""
    env = tripq_env(redis_url, log_dir, api_keys=f"{KEY_A},{KEY_B},{KEY_C}")
    with running_platform(env, log_dir) as url:
        yield url


@pytest.fixture(scope="module")
def held(redis_url: str, log_dir: Path, keyed: str) -> Iterator[str]:
    """An API whose jobs no worker takes, with per-key quotas of HELD_MAX_OPEN jobs and
    HELD_MAX_BYTES bytes."""
    env = tripq_env(
        redis_url,
        log_dir,
        api_keys=f"{KEY_A},{KEY_B},{KEY_C}",
        job_queue=HELD_JOBS,
        jobs_max_queued_per_key=HELD_MAX_OPEN,
        jobs_max_bytes_per_key=HELD_MAX_BYTES,
    )
    api, url = start_api(env, log_dir)
    yield url
    api.stop()


def submit(base: str, key: str, body: object, **headers: str) -> httpx.Response:
    headers = {"X-API-Key": key, **headers}
    return httpx.post(f"{base}/v1/trip/jobs", json=body, headers=headers, timeout=10)


def read(base: str, key: str, job_id: str) -> httpx.Response:
    return httpx.get(f"{base}/v1/trip/jobs/{job_id}", headers={"X-API-Key": key}, timeout=5)


def cancel(base: str, key: str, job_id: str) -> httpx.Response:
    return httpx.delete(f"{base}/v1/trip/jobs/{job_id}", headers={"X-API-Key": key}, timeout=5)


def batch(trips: int) -> dict[str, Any]:
    return {"trips": [{**TRIP, "request_id": f"b{i}"} for i in range(trips)]}


def test_another_key_gets_404_for_a_job_it_did_not_make_and_cannot_cancel_it(held: str) -> None:
    job_id = submit(held, KEY_A, TRIP).json()["job_id"]

    assert read(held, KEY_B, job_id).status_code == 404
    assert cancel(held, KEY_B, job_id).status_code == 404
    # Word for word what an unknown id gets: another key learns nothing of the job.
    assert read(held, KEY_B, job_id).json()["message"] == (
        f"job {job_id}: not found (unknown, or removed after it ended)"
    )
    assert read(held, KEY_A, job_id).json()["state"] == "queued"
    assert cancel(held, KEY_A, job_id).json()["state"] == "canceled"


def test_the_owner_reads_its_result_and_the_job_keeps_no_payload_once_ended(
    keyed: str, redis_client: redis.Redis
) -> None:
    job_id = submit(keyed, KEY_A, batch(20)).json()["job_id"]
    wait_until(
        lambda: read(keyed, KEY_A, job_id).json()["state"] == "succeeded", 30, "the job to end"
    )

    assert len(read(keyed, KEY_A, job_id).json()["result"]["replies"]) == 20
    assert read(keyed, KEY_B, job_id).status_code == 404
    assert not redis_client.hexists(job_key(job_id), "payload")


def test_an_idempotency_key_is_the_callers_own(held: str) -> None:
    headers = {"Idempotency-Key": "order-1"}
    a = submit(held, KEY_A, TRIP, **headers).json()["job_id"]
    b = submit(held, KEY_B, TRIP, **headers).json()["job_id"]

    assert a != b
    assert submit(held, KEY_A, TRIP, **headers).json()["job_id"] == a
    for key, job_id in ((KEY_A, a), (KEY_B, b)):
        cancel(held, key, job_id)


def test_concurrent_retries_under_one_idempotency_key_make_one_job(
    held: str, redis_client: redis.Redis
) -> None:
    queued_before = redis_client.llen(HELD_JOBS)
    headers = {"Idempotency-Key": "order-concurrent"}
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda _: submit(held, KEY_C, TRIP, **headers), range(32)))

    assert [r.status_code for r in replies] == [202] * 32
    assert len({r.json()["job_id"] for r in replies}) == 1
    assert redis_client.llen(HELD_JOBS) == queued_before + 1
    cancel(held, KEY_C, replies[0].json()["job_id"])


def test_a_key_past_its_open_jobs_quota_gets_429_while_another_key_is_served(held: str) -> None:
    made = [submit(held, KEY_A, TRIP) for _ in range(HELD_MAX_OPEN)]
    refused = submit(held, KEY_A, TRIP)
    other = submit(held, KEY_B, TRIP)

    assert [r.status_code for r in made] == [202] * HELD_MAX_OPEN
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["reply_code"] == 4
    assert "JOBS_MAX_QUEUED_PER_KEY" in refused.json()["message"]
    assert other.status_code == 202
    # An ended job frees its place.
    assert cancel(held, KEY_A, made[0].json()["job_id"]).status_code == 200
    again = submit(held, KEY_A, TRIP)
    assert again.status_code == 202
    for reply in [*made[1:], again]:
        cancel(held, KEY_A, reply.json()["job_id"])
    cancel(held, KEY_B, other.json()["job_id"])


def test_a_key_past_its_bytes_quota_gets_429_and_a_lone_large_job_is_still_accepted(
    held: str, redis_client: redis.Redis
) -> None:
    large = submit(held, KEY_B, batch(4000))  # over HELD_MAX_BYTES alone: accepted, held alone
    refused = submit(held, KEY_B, TRIP)

    assert large.status_code == 202
    assert refused.status_code == 429
    assert "JOBS_MAX_BYTES_PER_KEY" in refused.json()["message"]
    # A canceled job drops its payload, and its bytes leave the quota.
    cancel(held, KEY_B, large.json()["job_id"])
    assert not redis_client.hexists(job_key(large.json()["job_id"]), "payload")
    small = submit(held, KEY_B, TRIP)
    assert small.status_code == 202
    cancel(held, KEY_B, small.json()["job_id"])


def test_every_key_a_job_writes_expires(held: str, redis_client: redis.Redis) -> None:
    submit(held, KEY_C, TRIP, **{"Idempotency-Key": "expiring"})

    prefixes = (JOB_KEY_PREFIX, IDEMPOTENCY_KEY_PREFIX, OWNER_KEY_PREFIX)
    kept = [k for p in prefixes for k in redis_client.scan_iter(match=f"{p}*")]
    assert {p for p in prefixes if any(k.startswith(p.encode()) for k in kept)} == set(prefixes)
    assert {k: redis_client.ttl(k) for k in kept if redis_client.ttl(k) < 0} == {}
