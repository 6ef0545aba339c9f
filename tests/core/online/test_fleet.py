"""The fleet as the API reads it from Redis: live workers only, and nothing of the dead kept."""

import asyncio
import time

import redis
from redis.asyncio import Redis

from core.online.fleet import WORKERS_INFO_KEY, WORKERS_KEY, FleetView, encode_worker_info
from core.online.schemas import WorkerInfo


def test_a_killed_workers_heartbeat_and_info_are_pruned_by_the_next_read(
    redis_url: str, redis_client: redis.Redis
) -> None:
    # A SIGKILLed worker never says goodbye: its last heartbeat ages, its info record stays.
    now = time.time()
    redis_client.zadd(WORKERS_KEY, {"trip1@dead-host": now - 60, "trip1@live-host": now})
    info = encode_worker_info("v1", {"v1": "compiled"}, 8)
    redis_client.hset(WORKERS_INFO_KEY, mapping={"trip1@dead-host": info, "trip1@live-host": info})

    async def read() -> list[WorkerInfo]:
        broker = Redis.from_url(redis_url)
        try:
            return await FleetView(broker, worker_ttl_s=10).workers(10)
        finally:
            await broker.aclose()

    names = {worker.name for worker in asyncio.run(read())}

    assert "trip1@live-host" in names
    assert "trip1@dead-host" not in names
    assert redis_client.zscore(WORKERS_KEY, "trip1@dead-host") is None
    assert not redis_client.hexists(WORKERS_INFO_KEY, "trip1@dead-host")
    assert redis_client.hexists(WORKERS_INFO_KEY, "trip1@live-host")
    redis_client.zrem(WORKERS_KEY, "trip1@live-host")
    redis_client.hdel(WORKERS_INFO_KEY, "trip1@live-host")
