"""A full Redis (maxmemory, noeviction): predictions and jobs are refused 503, never 500 or half
written, and served again once Redis has room, without a restart.

The module runs a Redis of its own, since it fills it: every other module shares the session's.
"""

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from core.infra.embedded_redis import EmbeddedRedis
from tests.support import free_port, running_platform, tripq_env, wait_until

TRIP = {"request_id": "full-1", "PULocationID": 130, "DOLocationID": 250, "trip_distance": 3.0}
FILL_VALUE = b"x" * 65_536
JOB_KEYS = "tripq:job:*"
QUEUES = ("tasks.trip", "tasks.trip.jobs")


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(free_port(), tmp_path_factory.mktemp("redis"), appendonly=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(own_redis: EmbeddedRedis) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(own_redis.url)
    yield connection
    connection.close()


@pytest.fixture(scope="module")
def base(own_redis: EmbeddedRedis, log_dir: Path) -> Iterator[str]:
    with running_platform(tripq_env(own_redis.url, log_dir), log_dir) as url:
        yield url


def refuses_writes(client: redis.Redis) -> bool:
    try:
        client.set("probe", "x")
    except redis.exceptions.OutOfMemoryError:
        return True
    return False


def fill(client: redis.Redis) -> None:
    """Bound Redis a little above what it holds, as deployed (noeviction), and fill it."""
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", used + 8 * 2**20)
    for batch in itertools.count():
        with client.pipeline(transaction=False) as pipe:
            for i in range(16):
                pipe.set(f"fill:{batch}:{i}", FILL_VALUE)
            pipe.execute(raise_on_error=False)
        if refuses_writes(client):
            break
    # Full to the byte, the fleet's own churn (a result expiring, a client's buffer shrinking)
    # would let a write through now and then: hold it under what it uses.
    client.config_set("maxmemory", int(client.info("memory")["used_memory"]) - 2**20)


def post(base: str, path: str, body: object) -> httpx.Response:
    return httpx.post(f"{base}{path}", json=body, timeout=10)


def assert_unavailable(reply: httpx.Response) -> None:
    body: dict[str, Any] = reply.json()
    assert reply.status_code == 503, reply.text
    assert body["reply_code"] == 5
    assert "full" in body["message"]
    assert reply.headers["retry-after"] == "1"


def test_a_full_redis_refuses_predictions_and_jobs_with_503_and_writes_nothing(
    base: str, client: redis.Redis
) -> None:
    assert post(base, "/v1/trip/predict", TRIP).status_code == 200
    fill(client)
    try:
        assert refuses_writes(client)
        queued = [client.llen(q) for q in QUEUES]

        one = post(base, "/v1/trip/predict", TRIP)
        batch = post(base, "/v1/trip/predict/batch", {"trips": [TRIP, TRIP]})
        job = post(base, "/v1/trip/jobs", TRIP)

        for reply in (one, batch, job):
            assert_unavailable(reply)
        assert [client.llen(q) for q in QUEUES] == queued  # no task half sent
        assert list(client.scan_iter(JOB_KEYS)) == []  # the refused job does not exist
    finally:
        client.config_set("maxmemory", 0)

    assert not refuses_writes(client)
    again = post(base, "/v1/trip/predict", TRIP)
    accepted = post(base, "/v1/trip/jobs", TRIP)
    assert again.status_code == 200, again.text
    assert again.json()["reply_code"] == 0
    assert accepted.status_code == 202, accepted.text
    status_url = f"{base}{accepted.json()['status_url']}"
    wait_until(
        lambda: httpx.get(status_url, timeout=5).json()["state"] == "succeeded",
        30,
        "the job accepted after the outage to be answered",
    )
