"""Micro-batching: concurrent requests of one process share one task.

A queue costs a fixed price per message (a Redis round trip, Celery's bookkeeping, a model call),
while a scikit-learn predict on a thousand rows costs little more than on one. So requests that
arrive together travel together:

    submit(trip) ─┐
    submit(trip) ─┼─> pending ──(end of this event-loop turn)──> one batch task ──> futures
    submit(trip) ─┘

The policy adapts to load without a timer. A flush is scheduled for the end of the current event
loop turn, so a lone request leaves at once (no added latency at low load), and requests parsed in
the same turn go together. While `max_in_flight` batches are already out, new requests wait for
one of them to come back, so the busier the service the larger its batches. `max_batch` caps a
batch's size.
"""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from core.online.deadline import Deadline

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(slots=True)
class Pending(Generic[Item, Result]):
    """One submitted item and the future its submitter awaits."""

    item: Item
    future: "asyncio.Future[Result]"
    deadline: Deadline  # after it, nobody awaits the result
    trace_id: str | None = None  # the submitter's X-Request-ID, for the batch's logs


SendBatch = Callable[[Sequence[Pending[Item, Result]]], Awaitable[None]]


class MicroBatcher(Generic[Item, Result]):
    """Group items submitted concurrently into batches and hand each batch to `send`.

    `send` must resolve (or fail) every future of its batch; the batcher only decides what
    travels together and when.
    """

    def __init__(
        self, send: SendBatch[Item, Result], *, max_batch: int, max_in_flight: int
    ) -> None:
        self._send = send
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._pending: list[Pending[Item, Result]] = []
        self._in_flight = 0
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        """Count the batches sent and not yet answered."""
        return self._in_flight

    def submit(
        self, item: Item, deadline: Deadline, trace_id: str | None = None
    ) -> "asyncio.Future[Result]":
        """Queue `item` for the next batch and return the future of its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._pending.append(Pending(item, future, deadline, trace_id))
        if len(self._pending) >= self._max_batch:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    async def drain(self) -> None:
        """Wait for every batch in flight to finish."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _flush(self) -> None:
        self._flush_scheduled = False
        while self._pending and self._in_flight < self._max_in_flight:
            batch = [p for p in self._pending[: self._max_batch] if not p.future.done()]
            del self._pending[: self._max_batch]
            if batch:
                self._start(batch)

    def _start(self, batch: list[Pending[Item, Result]]) -> None:
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[Pending[Item, Result]]) -> None:
        try:
            await self._send(batch)
        except BaseException as exc:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._in_flight -= 1
            # A batch came back: what queued up behind it leaves now, as one batch.
            self._flush()
