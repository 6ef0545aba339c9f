"""Rolling a model version out to the live fleet: check it, write the routing, watch it followed.

    check_servable(version)            load it as a worker would (hash, schema, smoke prediction)
    read_routing / promoted ...        the routing in force, and the one asked for
    write_routing(routing)             CURRENT in ARTIFACT_DIR first, then the routing in Redis
                                       (CURRENT put back when Redis fails: nothing changed)
    await_followers(routing)           bounded wait for the live workers to serve its current

Workers follow the routing within a second (core.worker.follower), API processes within half a
second, without a restart. CURRENT follows the current version so a fleet started afresh serves
the same one. `tripq models` (boot.cli_models) parses and prints around these.
"""

import time
from typing import Any, cast

import redis

from config import Settings
from core.errors import TripqError
from core.infra.redis_clients import sync_client
from core.model.registry import read_current, resolve_model_dir, write_current
from core.online import fleet
from core.online.routing import ROUTING_KEY, Routing
from core.online.schemas import WorkerInfo

FOLLOW_WAIT_S = 15.0  # how long a rollout waits to see the fleet follow


def routing_client(settings: Settings) -> redis.Redis:
    """A blocking client of the Redis that holds the routing (the broker's)."""
    return sync_client(settings, settings.broker_url)


def read_routing(client: redis.Redis, settings: Settings) -> Routing:
    """The routing in Redis; before any, the version CURRENT (or SERVING_VERSION) names."""
    routing = Routing.from_hash(client.hgetall(ROUTING_KEY))
    if routing.current is None:
        current = settings.serving_version or read_current(settings.artifact_dir)
        routing = Routing(current, routing.previous, routing.canary, routing.canary_share)
    return routing


def live_workers(client: redis.Redis, settings: Settings) -> list[WorkerInfo]:
    """The workers whose heartbeat is fresh, with the models each holds."""
    since = time.time() - settings.worker_ttl_s
    seen = cast(
        list[tuple[bytes | str, float]],
        client.zrangebyscore(fleet.WORKERS_KEY, since, "+inf", withscores=True),
    )
    return fleet.live_workers(seen, client.hgetall(fleet.WORKERS_INFO_KEY))


def check_servable(settings: Settings, version: str) -> None:
    """Load `version` as a worker would; raise (InvalidArtifact, ModelError) if it cannot serve."""
    from core.model.artifact import load_model  # scikit-learn: only when a rollout needs it

    load_model(resolve_model_dir(settings.artifact_dir, version))


def write_routing(client: redis.Redis, settings: Settings, routing: Routing) -> None:
    """Write CURRENT and `routing`: CURRENT first, so that if it cannot be written nothing has
    changed yet, and if Redis then fails, CURRENT is put back."""
    assert routing.current is not None
    try:
        before: str | None = read_current(settings.artifact_dir)
    except TripqError:
        before = None
    write_current(settings.artifact_dir, routing.current)
    fields: dict[Any, Any] = routing.to_hash()  # redis-py's mapping type is invariant in its keys
    try:
        client.hset(ROUTING_KEY, mapping=fields)
    except redis.RedisError:
        if before is not None:
            write_current(settings.artifact_dir, before)
        raise


def await_followers(
    client: redis.Redis, settings: Settings, routing: Routing, wait_s: float = FOLLOW_WAIT_S
) -> tuple[int, int]:
    """Wait (at most `wait_s`) for every live worker to serve the routing's current version;
    return (workers serving it, live workers)."""
    deadline = time.monotonic() + wait_s
    while True:
        workers = live_workers(client, settings)
        following = [w for w in workers if w.model_version == routing.current]
        if len(following) == len(workers) or time.monotonic() > deadline:
            return len(following), len(workers)
        time.sleep(0.2)
