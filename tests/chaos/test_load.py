"""A sustained load at 256 clients: every request answered in time, and Redis left as it was.

Every request gets its correct prediction (200; no refusal, no timeout), none later than its
deadline + 1 s; afterwards the service is ready, and Redis holds the same keys as before the load
(no result is left behind), no more connections than the pools opened in the warm-up, and no
more memory than MEMORY_GROWTH_BYTES beyond it.

    .venv/bin/pytest tests/chaos/test_load.py -q                  # 5,000 requests (CI)
    CHAOS_FULL=1 .venv/bin/pytest tests/chaos/test_load.py -q     # 100,000 requests
"""

import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from config import Settings
from core.infra.embedded_redis import EmbeddedRedis
from tests.chaos.conftest import Scale
from tests.support import (
    Load,
    Outcome,
    latency_summary,
    start_api_processes,
    start_workers,
    tripq_env,
    varied_trips,
    wait_until,
)

DEADLINE_S = Settings().request_timeout_s
SLACK_S = 1.0
WARM_UP_REQUESTS = 2_000
# Redis connections are pooled: an API process opens one per concurrent command (at most
# BATCH_MAX_IN_FLIGHT sends, the result listener, the watchers), a worker one per greenlet storing
# a result at the same moment. The warm-up opens most of them; a few more may open under the
# longer load. A leak (a connection per request or per batch) would exceed this by thousands.
CONNECTION_SLACK = 16
# Memory: allocator noise and the client buffers of the moment. (Results left behind show as keys,
# which must be the same before and after.)
MEMORY_GROWTH_BYTES = 4 * 1024 * 1024
SETTLE_S = 15.0


@dataclass(frozen=True)
class Footprint:
    """What tripq holds in Redis at one moment."""

    keys: frozenset[bytes | str]
    clients: int
    memory: int

    @classmethod
    def of(cls, client: redis.Redis) -> "Footprint":
        info = client.info()
        return cls(frozenset(client.keys("*")), info["connected_clients"], info["used_memory"])

    def describe(self) -> str:
        return f"{len(self.keys)} keys, {self.clients} connections, {self.memory / 2**20:.2f} MiB"


def run_load(base: str, count: int, concurrency: int, prefix: str) -> list[Outcome]:
    """Send `count` distinct trips from `concurrency` clients; every outcome, once all are in."""
    load = Load(
        base, varied_trips(count, prefix), concurrency=concurrency, timeout_s=DEADLINE_S + 10
    )
    with load:
        return load.wait(60 + count / 100)


def test_sustained_load_is_answered_in_time_and_leaves_redis_as_it_was(
    own_redis: EmbeddedRedis,
    log_dir: Path,
    scale: Scale,
    wrong_durations: Callable[[list[Outcome]], list[Outcome]],
    figures: Callable[[str], None],
) -> None:
    env = tripq_env(own_redis.url, log_dir)
    client = redis.Redis.from_url(own_redis.url, socket_timeout=5)
    with ExitStack() as processes:
        processes.callback(client.close)
        api, base = start_api_processes(env, log_dir, 2)
        processes.callback(api.stop)
        workers = start_workers(env, log_dir, [1, 2], concurrency=32)
        for worker in workers:
            processes.callback(worker.stop)

        run_load(base, WARM_UP_REQUESTS, scale.load_concurrency, "warm")
        wait_until(lambda: not client.keys("celery-task-meta-*"), SETTLE_S, "warm-up results gone")
        before = Footprint.of(client)

        started = time.monotonic()
        outcomes = run_load(base, scale.load_requests, scale.load_concurrency, "load")
        elapsed = time.monotonic() - started

        def settled() -> bool:
            return Footprint.of(client).keys == before.keys

        wait_until(settled, SETTLE_S, "Redis to hold the keys it held before the load")
        after = Footprint.of(client)
        ready = httpx.get(f"{base}/ready", timeout=5)
        alive = api.alive() and all(w.alive() for w in workers)

    kinds = Counter(o.kind for o in outcomes)
    slowest = max(o.latency_s for o in outcomes)
    figures(
        f"{len(outcomes)} requests at {scale.load_concurrency} clients in {elapsed:.1f} s "
        f"({len(outcomes) / elapsed:,.0f}/s): {dict(kinds)}, {latency_summary(outcomes)}"
    )
    figures(f"Redis before: {before.describe()}; after: {after.describe()}")
    # Every request answered with the model's answer: the fleet keeps up, so none is refused.
    assert kinds == Counter({"ok": scale.load_requests}), kinds
    assert slowest <= DEADLINE_S + SLACK_S
    assert wrong_durations(outcomes) == []
    assert ready.status_code == 200
    assert alive
    assert after.keys == before.keys
    assert after.clients <= before.clients + CONNECTION_SLACK
    assert after.memory <= before.memory + MEMORY_GROWTH_BYTES
