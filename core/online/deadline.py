"""A request's deadline, taken once from its headers and carried to every wait and to its task.

    Deadline.after(seconds) ── at: absolute event-loop time ──> expire_at(future): the one timer
                             └─ expires(): the task's wall-clock expiry (no worker answers late)

One timer per waiting future fails it at `at`; the task carries `expires()`, so a worker
discards what nobody awaits any more.
"""

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from core.errors import DeadlineExceeded


@dataclass(frozen=True, slots=True)
class Deadline:
    """The moment after which nobody awaits a request's answer."""

    at: float  # event-loop time (asyncio's loop.time())
    timeout_s: float  # what the client was given, for messages

    @classmethod
    def after(cls, seconds: float) -> "Deadline":
        """Make the deadline `seconds` from now, on the running event loop's clock."""
        return cls(asyncio.get_running_loop().time() + seconds, seconds)

    def remaining(self) -> float:
        """Seconds left until the deadline (0 once it passed)."""
        return max(0.0, self.at - asyncio.get_running_loop().time())

    def expires(self) -> datetime:
        """The deadline as wall-clock time: when the task carrying this request expires."""
        return datetime.now(UTC) + timedelta(seconds=self.remaining())

    def exceeded(self) -> DeadlineExceeded:
        """The error a request that reached this deadline fails with."""
        return DeadlineExceeded(f"no worker answered within {self.timeout_s:g} s")

    def expire_at(self, future: "asyncio.Future[Any]") -> asyncio.TimerHandle:
        """Fail `future` at the deadline unless it is done by then; cancel the handle to keep it.

        A bare timer rather than asyncio.timeout: this runs once per request, on the hot path.
        """
        return asyncio.get_running_loop().call_at(self.at, _expire, future, self)


def _expire(future: "asyncio.Future[Any]", deadline: Deadline) -> None:
    if not future.done():
        future.set_exception(deadline.exceeded())


def latest(deadlines: "list[Deadline]") -> Deadline:
    """The deadline of a batch: that of its most patient request."""
    return max(deadlines, key=lambda d: d.at)
