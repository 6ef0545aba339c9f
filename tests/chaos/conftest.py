"""What the chaos tests share: their scale, the model to check answers with, and their figures.

    .venv/bin/pytest tests/chaos -q                   # short form (CI)
    CHAOS_FULL=1 .venv/bin/pytest tests/chaos -q      # full form: longer loads and outages

Both forms print what they measured in the "figures" section at the end of the run. Every
process a test starts is real (Redis, `tripq api`, Celery workers) and stopped by that test; the
tests that stop Redis run their own server, never the session's.
"""

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from config import PROJECT_ROOT
from core.infra.embedded_redis import EmbeddedRedis
from core.model.artifact import TripModel, load_model
from core.model.registry import resolve_model_dir
from tests.support import free_port

FULL = os.environ.get("CHAOS_FULL", "") not in ("", "0")

# Tests that hold a worker busy with a million-trip task serve the linear baseline: about a
# second for the million, well inside the visibility timeout. The gbm takes several seconds,
# and a run outliving the visibility timeout is given back mid-way, which they do not test.
LONG_TASK_MODEL = "baseline-2021-01"


@dataclass(frozen=True)
class Scale:
    """How hard the chaos tests push: short for CI, longer with CHAOS_FULL=1."""

    full: bool
    concurrency: int  # clients of every load
    kill_requests: int  # requests of the load a worker is SIGKILLed in
    outage_requests: int  # requests answered while Redis is down
    after_kill_requests: int  # requests answered after an API process is SIGKILLed
    load_requests: int  # requests of the sustained load (test_load)
    load_concurrency: int  # its clients


@pytest.fixture(scope="session")
def scale() -> Scale:
    """The scale of this run."""
    if FULL:
        return Scale(
            full=True,
            concurrency=16,
            kill_requests=3000,
            outage_requests=1000,
            after_kill_requests=3000,
            load_requests=100_000,
            load_concurrency=256,
        )
    return Scale(
        full=False,
        concurrency=16,
        kill_requests=300,
        outage_requests=100,
        after_kill_requests=300,
        load_requests=5_000,
        load_concurrency=256,
    )


@pytest.fixture(scope="session")
def model() -> TripModel:
    """The default model, loaded here to check the service's answers."""
    return load_model(resolve_model_dir(PROJECT_ROOT / "repo" / "models", None))


@pytest.fixture
def flushed_db(redis_client: redis.Redis) -> redis.Redis:
    """The module's Redis database, emptied of what earlier tests left (queue, unacked tasks)."""
    redis_client.flushdb()
    return redis_client


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis of this test's own, append-only, on a port it keeps when restarted."""
    server = EmbeddedRedis(free_port(), tmp_path / "redis", appendonly=True).start()
    try:
        yield server
    finally:
        server.stop()
