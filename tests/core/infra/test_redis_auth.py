"""A Redis that requires a password, or an ACL user: tripq works with them in REDIS_URL, and says
so without them."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.infra.embedded_redis import EmbeddedRedis
from tests.support import free_port, start_api, start_worker, tripq_env

TRIP = {"request_id": "auth-1", "PULocationID": 130, "DOLocationID": 250, "trip_distance": 3.0}
PASSWORD = "s3cret-for-tests"


@pytest.fixture(scope="module", params=["password", "acl-user"])
def locked_redis(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedRedis]:
    """A Redis server of this module's own that requires a password, or an ACL user's."""
    username = "tripq" if request.param == "acl-user" else None
    server = EmbeddedRedis(
        free_port(),
        tmp_path_factory.mktemp("locked-redis"),
        password=PASSWORD,
        username=username,
        appendonly=False,
    ).start()
    yield server
    server.stop()


def test_predictions_flow_when_the_credentials_are_in_redis_url(
    locked_redis: EmbeddedRedis, log_dir: Path
) -> None:
    env = tripq_env(locked_redis.url, log_dir)
    worker = start_worker(env, log_dir)
    try:
        api, base = start_api(env, log_dir)
        try:
            reply = httpx.post(f"{base}/v1/trip/predict", json=TRIP, timeout=10)
            assert reply.status_code == 200
            assert reply.json()["reply_code"] == 0
            assert "server" not in reply.headers  # no software name or version in replies
        finally:
            api.stop()
    finally:
        worker.stop()


def test_a_wrong_password_answers_503_and_readiness_says_redis_is_down(
    locked_redis: EmbeddedRedis, log_dir: Path
) -> None:
    wrong = locked_redis.url.replace(PASSWORD, "not-the-password")
    api, base = start_api(tripq_env(wrong, log_dir), log_dir)
    try:
        reply = httpx.post(f"{base}/v1/trip/predict", json=TRIP, timeout=10)
        ready = httpx.get(f"{base}/ready", timeout=10)
    finally:
        api.stop()

    assert reply.status_code == 503
    assert reply.json()["reply_code"] == 5
    assert PASSWORD not in reply.text
    assert ready.status_code == 503
    assert ready.json()["redis"] is False
