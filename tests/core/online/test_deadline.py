"""A request's Deadline: one timer fails what still waits at it; its task expires with it."""

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from core.errors import DeadlineExceeded
from core.online.deadline import Deadline, latest


def test_a_future_still_waiting_at_its_deadline_fails_with_deadline_exceeded() -> None:
    async def scenario() -> None:
        deadline = Deadline.after(0.01)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        deadline.expire_at(future)
        with pytest.raises(DeadlineExceeded, match=r"within 0\.01 s"):
            await asyncio.wait_for(future, 5)
        assert deadline.remaining() == 0.0

    asyncio.run(scenario())


def test_a_future_answered_in_time_keeps_its_answer() -> None:
    async def scenario() -> int:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        timer = Deadline.after(0.01).expire_at(future)
        future.set_result(7)
        timer.cancel()
        await asyncio.sleep(0.02)
        return await future

    assert asyncio.run(scenario()) == 7


def test_the_task_expires_when_the_deadline_passes_in_wall_clock_time() -> None:
    async def scenario() -> tuple[Deadline, datetime]:
        deadline = Deadline.after(5.0)
        return deadline, deadline.expires()

    deadline, expires = asyncio.run(scenario())

    assert abs(expires - (datetime.now(UTC) + timedelta(seconds=5))) < timedelta(seconds=1)
    assert deadline.timeout_s == 5.0


def test_a_batch_lives_as_long_as_its_most_patient_request() -> None:
    short, long = Deadline(at=1.0, timeout_s=1.0), Deadline(at=3.0, timeout_s=3.0)

    assert latest([short, long, short]) is long
