"""Broker health: whether Redis answers, and how much work waits in its queues.

A Redis that is down closes its connections, which every client sees at once; a frozen one (a
stalled host, a network partition) says nothing. Each send is bounded, and a watcher pings the
broker so that requests are refused at once, not each after its own bounded wait.

A full Redis (at `maxmemory`, under the `noeviction` policy tripq's deployments set) still
answers pings and reads, but refuses every write that would grow it: a refused write is an
outage too, answered alike (see `refused_as_unavailable`), and it ends once memory is freed.
"""

import asyncio
import contextlib
import time
from collections.abc import Iterator, Sequence

from loguru import logger
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError, RedisError, ResponseError

from core.errors import BackendUnavailable
from core.infra import metrics
from core.online import protocol
from core.online.watch import Watch

SEND_TIMEOUT_S = 1.0
_WATCH_EVERY_S = 0.25

# How Redis words a write refused at maxmemory. redis-py raises OutOfMemoryError for a command,
# but a script's refused write comes (from Redis 6) as a plain ResponseError that quotes it.
_OOM_REPLY = "OOM command not allowed"


def is_out_of_memory(exc: BaseException) -> bool:
    """Tell whether Redis refused a write because it is full (maxmemory, noeviction)."""
    return isinstance(exc, OutOfMemoryError) or (
        isinstance(exc, ResponseError) and _OOM_REPLY in str(exc)
    )


@contextlib.contextmanager
def refused_as_unavailable() -> Iterator[None]:
    """Raise BackendUnavailable (503, Retry-After) for a Redis that fails the calls in the
    block: unreachable, or full. A script refused for memory wrote nothing (Redis checks
    before its first write), so the caller's write is whole or absent, never half done."""
    try:
        yield
    except (RedisError, OSError) as exc:
        if is_out_of_memory(exc):
            raise BackendUnavailable("Redis is full (maxmemory) and takes no new work") from exc
        raise BackendUnavailable("the broker is not reachable") from exc


class Broker(Watch):
    """The broker's Redis as the API uses it: push tasks, ping, and read queue depths."""

    _TASK_NAME = "tripq-broker-watch"

    def __init__(self, broker: Redis, backend: Redis) -> None:
        super().__init__()
        self._broker = broker
        self._backend = backend  # pinged too: results must come back as well
        self._answers = True

    @property
    def redis(self) -> Redis:
        """The broker's connection pool."""
        return self._broker

    @property
    def available(self) -> bool:
        """Tell whether Redis answered the last ping and the last send."""
        return self._answers

    async def push(self, queue: str, message: bytes) -> None:
        """Put a task message on `queue`, within SEND_TIMEOUT_S."""
        if not self._answers:
            raise BackendUnavailable("the broker is not reachable")
        try:
            # The timeout outside: its TimeoutError is an OSError, which the inner block takes
            # for a refusal, and a Redis that does not answer is unavailable until pinged.
            async with asyncio.timeout(SEND_TIMEOUT_S):
                with refused_as_unavailable():
                    await self._broker.lpush(queue, message)
        except TimeoutError as exc:
            self._answers = False
            raise BackendUnavailable("the broker did not answer") from exc

    async def ping(self) -> bool:
        """Tell whether both Redis roles answer."""
        try:
            await self._broker.ping()
            if self._backend is not self._broker:
                await self._backend.ping()
        except (RedisError, OSError):
            return False
        return True

    async def queue_depth(self, queues: Sequence[str]) -> int:
        """Count the tasks waiting in `queues`."""
        with refused_as_unavailable():
            async with self._broker.pipeline(transaction=False) as pipe:
                for queue in queues:
                    pipe.llen(queue)
                return sum(int(n) for n in await pipe.execute())

    async def export_queues(self, queues: Sequence[str]) -> None:
        """Publish how many tasks wait in each queue, and how long the oldest has waited."""
        async with self._broker.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.llen(queue)
                pipe.lindex(queue, -1)  # LPUSH in, BRPOP out: the oldest is the last
            replies = await pipe.execute()
        now = time.time()
        for queue, depth, oldest in zip(queues, replies[::2], replies[1::2], strict=True):
            sent = protocol.sent_at(oldest) if oldest is not None else None
            metrics.QUEUE_DEPTH.labels(queue).set(depth)
            metrics.QUEUE_OLDEST_AGE.labels(queue).set(max(0.0, now - sent) if sent else 0.0)

    async def _watch(self) -> None:
        """Ping Redis every _WATCH_EVERY_S; `available` turns false while it does not answer."""
        while not self._closing:
            try:
                async with asyncio.timeout(SEND_TIMEOUT_S):
                    answers = await self.ping()
            except TimeoutError:
                answers = False
            if answers != self._answers:
                log = logger.info if answers else logger.warning
                log("Redis answers again" if answers else "Redis does not answer")
            self._answers = answers
            await asyncio.sleep(_WATCH_EVERY_S)
