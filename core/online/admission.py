"""Admission control: an API process refuses new work it could not answer in time.

Two bounds, both cheap to check per request:

- the trips this process already holds waiting for answers (`max_pending`), so a slow fleet
  cannot make one process pile up requests without bound;
- the depth of the shared task queue in Redis (`max_queue_depth`), read in the background a few
  times a second, so all API processes stop feeding a queue the workers cannot drain.

A refused request gets Overloaded (429 with Retry-After) at once instead of a timeout later.
The API checks once before it reads a request's body (`check`: a 4 MiB batch refused anyway is
neither read nor parsed) and holds the exact count of trips once it has parsed them (`hold`).
"""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

from redis.exceptions import RedisError

from core.errors import BackendUnavailable, Overloaded

QUEUE_POLL_S = 0.1


class Admission:
    """Count the work one API process holds and refuse what exceeds its bounds."""

    def __init__(self, *, max_pending: int, max_queue_depth: int) -> None:
        self.max_pending = max_pending
        self.max_queue_depth = max_queue_depth
        self.pending = 0
        self.queue_depth = 0  # as last read from Redis

    def check(self, trips: int = 1) -> None:
        """Raise Overloaded unless `trips` more would be admitted now."""
        if self.queue_depth >= self.max_queue_depth:
            raise Overloaded(f"the queue holds {self.queue_depth} tasks; retry shortly")
        # An idle process admits any one request, so no valid request is refused for good.
        if self.pending and self.pending + trips > self.max_pending:
            raise Overloaded("this API process holds as much work as it may; retry shortly")

    @contextmanager
    def hold(self, trips: int = 1) -> Iterator[None]:
        """Admit `trips` for the duration of the block, or raise Overloaded."""
        self.check(trips)
        self.pending += trips
        try:
            yield
        finally:
            self.pending -= trips


async def watch_queue_depth(read_depth: Callable[[], Awaitable[int]], admission: Admission) -> None:
    """Keep `admission.queue_depth` current; a Redis outage leaves the last reading."""
    while True:
        # In an outage the last reading stands; requests meet the outage themselves, as 503s.
        with contextlib.suppress(BackendUnavailable):
            admission.queue_depth = await read_depth()
        await asyncio.sleep(QUEUE_POLL_S)


async def export_queue_metrics(export: Callable[[], Awaitable[None]], every_s: float) -> None:
    """Call `export` every `every_s` seconds; a Redis outage skips rounds."""
    while True:
        with contextlib.suppress(RedisError, OSError):
            await export()
        await asyncio.sleep(every_s)
