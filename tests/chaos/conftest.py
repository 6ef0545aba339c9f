"""What the chaos tests share: their scale, the model to check answers with, and their figures.

    .venv/bin/pytest tests/chaos -q                   # short form (CI)
    CHAOS_FULL=1 .venv/bin/pytest tests/chaos -q      # full form: longer loads and outages

Both forms print what they measured in a "chaos figures" section at the end of the run. Every
process a test starts is real (Redis, `tripq api`, Celery workers) and stopped by that test; the
tests that stop Redis run their own server, never the session's.
"""

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from _pytest.terminal import TerminalReporter

from config import PROJECT_ROOT
from core.infra.embedded_redis import EmbeddedRedis
from core.model.artifact import TripModel, load_model
from core.model.registry import resolve_model_dir
from tests.support import Outcome, free_port, tripq_env

FULL = os.environ.get("CHAOS_FULL", "") not in ("", "0")

# REQUEST_TIMEOUT_S and REQUEST_TIMEOUT_MAX_S of the tests that kill or stop things: short, so that
# deadlines pass and abandoned tasks come back (after the visibility timeout) within a test.
DEADLINE_S = 2.0


# Tests that hold a worker busy with a million-trip task serve the linear baseline: about a
# second for the million, well inside the visibility timeout. The gbm takes several seconds,
# and a run outliving the visibility timeout is given back mid-way, which they do not test.
LONG_TASK_MODEL = "baseline-2021-01"


def short_deadline_env(redis_url: str, log_dir: Path) -> dict[str, str]:
    """The environment of processes whose deadlines, all of them, are DEADLINE_S."""
    return tripq_env(
        redis_url, log_dir, request_timeout_s=DEADLINE_S, request_timeout_max_s=DEADLINE_S
    )


_FIGURES = pytest.StashKey[list[str]]()


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


@pytest.fixture(scope="session")
def wrong_durations() -> Callable[[list[Outcome]], list[Outcome]]:
    """Pick, among successful outcomes, those whose duration is not the own answer of the model
    version the reply names (loaded here once per version)."""
    models: dict[str, TripModel] = {}

    def model_of(version: str) -> TripModel:
        if version not in models:
            models[version] = load_model(PROJECT_ROOT / "repo" / "models" / version)
        return models[version]

    def wrong(outcomes: list[Outcome]) -> list[Outcome]:
        ok = [o for o in outcomes if o.kind == "ok"]
        unusable = [o for o in ok if o.body is None or o.body["request_id"] != o.trip["request_id"]]
        found = list(unusable)
        for version in {o.body["model_version"] for o in ok if o not in unusable and o.body}:
            group = [
                o for o in ok if o not in unusable and o.body and o.body["model_version"] == version
            ]
            expected = model_of(version).predict_columns(
                [o.trip["PULocationID"] for o in group],
                [o.trip["DOLocationID"] for o in group],
                [o.trip["trip_distance"] for o in group],
            )
            found += [
                o
                for o, duration in zip(group, expected, strict=True)
                if o.body is None
                or abs(o.body["duration"] - duration) > 1e-9 * max(1.0, abs(duration))
            ]
        return found

    return wrong


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


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Record a figure this test measured, printed at the end of the run."""
    lines = request.config.stash.setdefault(_FIGURES, [])
    name = request.node.name

    def record(text: str) -> None:
        lines.append(f"{name}: {text}")

    return record


def pytest_terminal_summary(terminalreporter: TerminalReporter, config: pytest.Config) -> None:
    """Print the figures the chaos tests measured."""
    lines = config.stash.get(_FIGURES, [])
    if lines:
        terminalreporter.section(f"chaos figures ({'full' if FULL else 'short'} form)")
        for line in lines:
            terminalreporter.write_line(line)
