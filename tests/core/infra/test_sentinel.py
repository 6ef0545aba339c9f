"""Redis Sentinel: sentinel:// URLs in the settings, Celery's options, and predictions served
through a master that a real Sentinel names."""

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from config import PROJECT_ROOT, Settings
from core.infra.embedded_redis import EmbeddedRedis
from core.infra.redis_clients import SentinelUrl, is_sentinel, sync_client, transport_options
from core.model.registry import read_current
from tests.support import SentinelProcess, free_port, running_platform, tripq_env, wait_until

MASTER = "tripq-master"
TRIP = {"request_id": "s1", "PULocationID": 130, "DOLocationID": 250, "trip_distance": 3.0}


def test_a_sentinel_url_names_the_sentinels_and_the_masters_password_and_database() -> None:
    where = SentinelUrl.parse("sentinel://:secret@10.0.0.1:26379/3;sentinel://10.0.0.2")

    assert where.sentinels == [("10.0.0.1", 26379), ("10.0.0.2", 26379)]
    assert (where.password, where.db) == ("secret", 3)


@pytest.mark.parametrize("url", ["redis://h:6379/0", "sentinel://", "sentinel://h;redis://h"])
def test_anything_else_is_not_read_as_sentinels(url: str) -> None:
    with pytest.raises(ValueError, match="not a sentinel"):
        SentinelUrl.parse(url)


def test_settings_accept_sentinel_urls_and_give_celery_the_masters_name() -> None:
    settings = Settings(
        redis_url="sentinel://h1:26379;sentinel://h2:26379", redis_sentinel_master=MASTER
    )

    assert is_sentinel(settings.broker_url)
    assert transport_options(settings, settings.broker_url) == {"master_name": MASTER}
    assert transport_options(Settings(redis_url="redis://h:6379/0"), "redis://h:6379/0") == {}


def test_the_celery_app_reads_the_master_name_for_broker_and_result_backend(tmp_path: Path) -> None:
    env = tripq_env(
        "sentinel://127.0.0.1:1;sentinel://127.0.0.1:2", tmp_path, redis_sentinel_master=MASTER
    )
    code = (
        "from tasks.app import app; c = app.conf;"
        "print(c.broker_url.split(':')[0], c.broker_transport_options['master_name'],"
        " c.result_backend_transport_options['master_name'])"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )

    assert run.stdout.split() == ["sentinel", MASTER, MASTER]


@pytest.fixture
def sentinel_url(tmp_path: Path) -> Iterator[str]:
    """A Redis master and a Sentinel watching it; yield tripq's sentinel:// URL for them."""
    master = EmbeddedRedis(free_port(), tmp_path / "master", appendonly=False).start()
    sentinel = SentinelProcess(free_port(), MASTER, master, tmp_path / "sentinel")
    try:
        asking = redis.Redis(port=sentinel.port, socket_timeout=1)

        def names_the_master() -> bool:
            try:
                return asking.sentinel_get_master_addr_by_name(MASTER) is not None
            except redis.RedisError:
                return False

        wait_until(names_the_master, 20, "the sentinel to name the master")
        asking.close()
        yield f"sentinel://127.0.0.1:{sentinel.port}/0"
    finally:
        sentinel.stop()
        master.stop()


def test_predictions_flow_through_the_master_a_sentinel_names(
    sentinel_url: str, tmp_path: Path
) -> None:
    env = tripq_env(sentinel_url, tmp_path, redis_sentinel_master=MASTER)
    settings = Settings(redis_url=sentinel_url, redis_sentinel_master=MASTER)
    assert sync_client(settings, sentinel_url).ping()

    with running_platform(env, tmp_path) as base:
        reply = httpx.post(f"{base}/v1/trip/predict", json=TRIP, timeout=10)
        ready = httpx.get(f"{base}/ready", timeout=5)

    assert reply.status_code == 200, reply.text
    assert reply.json()["model_version"] == read_current(PROJECT_ROOT / "repo" / "models")
    assert ready.status_code == 200
