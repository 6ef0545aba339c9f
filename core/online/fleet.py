"""The worker fleet as Redis sees it: each worker writes a heartbeat, readers list the live ones.

    tripq:workers            sorted set: worker name -> time of its last heartbeat (epoch seconds)
    tripq:workers:info       hash: worker name -> JSON {model_version, model_versions, evaluators,
                                                          devices, concurrency}

A worker is live while its last heartbeat is younger than the configured TTL; stale entries are
pruned by readers, so a SIGKILLed worker disappears without anyone cleaning up after it.

An API process reads the fleet through a `FleetView`: the live workers, the versions they serve,
and the routing (core.online.routing), read again every _ROUTING_EVERY_S, which decides the
version that answers each request (a pinned one, the canary for its share, or the current one).
"""

import asyncio
import json
import random
import time
from collections.abc import Mapping, Sequence

from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.errors import BackendUnavailable, VersionNotServed
from core.infra import metrics
from core.online.broker import refused_as_unavailable
from core.online.routing import ROUTING_KEY, Routing
from core.online.schemas import WorkerInfo
from core.online.watch import Watch

WORKERS_KEY = "tripq:workers"
WORKERS_INFO_KEY = "tripq:workers:info"


def encode_worker_info(
    model_version: str | None,
    evaluators: dict[str, str],
    concurrency: int,
    devices: dict[str, str] | None = None,
) -> str:
    """Encode what a worker's heartbeat says about it: its versions, what runs each, and where."""
    return json.dumps(
        {
            "model_version": model_version,
            "model_versions": sorted(evaluators),
            "evaluators": evaluators,
            "devices": devices or {},
            "concurrency": concurrency,
        }
    )


def live_workers(
    seen: list[tuple[bytes | str, float]],
    info: Mapping[bytes | str, bytes | str | None],
    now: float | None = None,
) -> list[WorkerInfo]:
    """Describe the workers whose heartbeats (name, time) are given, with their info records."""
    now = time.time() if now is None else now
    workers = []
    for raw_name, last_seen in seen:
        name = raw_name.decode() if isinstance(raw_name, bytes) else raw_name
        raw_info = info.get(raw_name)
        details = json.loads(raw_info) if raw_info else {}
        workers.append(
            WorkerInfo(
                name=name,
                model_version=details.get("model_version"),
                model_versions=details.get("model_versions", []),
                evaluators=details.get("evaluators", {}),
                devices=details.get("devices", {}),
                concurrency=details.get("concurrency", 0),
                seen_s_ago=round(max(0.0, now - last_seen), 3),
            )
        )
    return workers


def held_versions(workers: Sequence[WorkerInfo]) -> frozenset[str]:
    """Name the model versions that `workers` hold between them."""
    return frozenset(v for w in workers for v in w.model_versions)


# How often the routing and the versions live workers hold are read again.
_ROUTING_EVERY_S = 0.5
_READ_TIMEOUT_S = 1.0


class FleetView(Watch):
    """The fleet as one API process last read it: live workers, served versions, routing."""

    _TASK_NAME = "tripq-routing-watch"

    def __init__(self, broker: Redis, worker_ttl_s: float) -> None:
        super().__init__()
        self._broker = broker
        self._worker_ttl_s = worker_ttl_s
        self._routing = Routing()
        self._served: frozenset[str] = frozenset()
        self._exported_roles: set[tuple[str, str]] = set()

    @property
    def routing(self) -> Routing:
        """The routing as last read from Redis."""
        return self._routing

    @property
    def served(self) -> frozenset[str]:
        """The model versions live workers held at the last read."""
        return self._served

    def route(self, pinned: str | None) -> str | None:
        """Choose the version that answers a request: the one it pins, the canary for its share
        of requests, or None (any worker's current version)."""
        if pinned is not None:
            if pinned not in self._served:
                served = ", ".join(sorted(self._served)) or "none"
                raise VersionNotServed(
                    f"X-Model-Version: no live worker holds {pinned!r} (served: {served})"
                )
            return pinned
        canary = self._routing.canary
        if canary in self._served and random.random() < self._routing.canary_share:  # noqa: S311
            return canary
        return None

    async def workers(self, ttl_s: float) -> list[WorkerInfo]:
        """List the workers whose heartbeat is younger than `ttl_s`."""
        now = time.time()
        with refused_as_unavailable():
            async with self._broker.pipeline(transaction=False) as pipe:
                pipe.zremrangebyscore(WORKERS_KEY, "-inf", now - ttl_s)
                pipe.zrange(WORKERS_KEY, 0, -1, withscores=True)
                pipe.hgetall(WORKERS_INFO_KEY)
                _, seen, info = await pipe.execute()
            # A killed worker never says goodbye: its info record goes with its heartbeat. (One
            # that starts between these reads loses its record until its next beat rewrites it.)
            gone = set(info) - {name for name, _ in seen}
            if gone:
                await self._broker.hdel(WORKERS_INFO_KEY, *gone)
        return live_workers(seen, info, now)

    async def _watch(self) -> None:
        """Read the routing and the versions live workers hold, every _ROUTING_EVERY_S."""
        while not self._closing:
            try:
                async with asyncio.timeout(_READ_TIMEOUT_S):
                    raw = await self._broker.hgetall(ROUTING_KEY)
                    workers = await self.workers(self._worker_ttl_s)
                self._routing = Routing.from_hash(raw)
                self._served = held_versions(workers)
                self._export(workers)
            except (RedisError, OSError, TimeoutError, BackendUnavailable):
                pass  # the last routing stays in force while Redis is away
            await asyncio.sleep(_ROUTING_EVERY_S)

    def _export(self, workers: Sequence[WorkerInfo]) -> None:
        """Publish the fleet as last read: live workers, and the current and canary versions
        (the current one: the routing's, else what the workers say is theirs)."""
        metrics.WORKERS_ALIVE.set(len(workers))
        current = self._routing.current or next(
            (w.model_version for w in workers if w.model_version), None
        )
        roles = {(v, r) for r, v in (("current", current), ("canary", self._routing.canary)) if v}
        # Multiprocess gauges cannot drop a series: a version no longer named reads 0.
        for version, role in self._exported_roles - roles:
            metrics.MODEL_INFO.labels(version, role).set(0)
        for version, role in roles:
            metrics.MODEL_INFO.labels(version, role).set(1)
        self._exported_roles = roles
