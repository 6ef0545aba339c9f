"""The micro-batcher's policy: no added latency when idle, larger batches under load."""

import asyncio
from collections.abc import Sequence

import pytest

from core.online.deadline import Deadline
from core.online.microbatch import MicroBatcher, Pending


class Recorder:
    """A `send` that records each batch and answers when told to."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.release.set()

    async def send(self, batch: Sequence[Pending[int, int]]) -> None:
        self.batches.append([p.item for p in batch])
        await self.release.wait()
        for pending in batch:
            pending.future.set_result(pending.item * 10)


def test_a_lone_request_leaves_at_once_in_a_batch_of_one() -> None:
    async def scenario() -> tuple[int, list[list[int]]]:
        recorder = Recorder()
        batcher: MicroBatcher[int, int] = MicroBatcher(
            recorder.send, max_batch=100, max_in_flight=4
        )
        return await batcher.submit(7, Deadline.after(1.0)), recorder.batches

    answer, batches = asyncio.run(scenario())

    assert answer == 70
    assert batches == [[7]]


def test_requests_of_one_event_loop_turn_travel_together() -> None:
    async def scenario() -> list[list[int]]:
        recorder = Recorder()
        batcher: MicroBatcher[int, int] = MicroBatcher(
            recorder.send, max_batch=100, max_in_flight=4
        )
        futures = [batcher.submit(i, Deadline.after(1.0)) for i in range(5)]
        assert await asyncio.gather(*futures) == [0, 10, 20, 30, 40]
        return recorder.batches

    assert asyncio.run(scenario()) == [[0, 1, 2, 3, 4]]


def test_requests_wait_for_a_free_slot_and_then_leave_as_one_batch() -> None:
    async def scenario() -> list[list[int]]:
        recorder = Recorder()
        recorder.release.clear()
        batcher: MicroBatcher[int, int] = MicroBatcher(
            recorder.send, max_batch=100, max_in_flight=1
        )
        first = batcher.submit(0, Deadline.after(1.0))
        await asyncio.sleep(0)  # the first batch leaves
        later = [batcher.submit(i, Deadline.after(1.0)) for i in range(1, 4)]
        await asyncio.sleep(0.01)
        assert recorder.batches == [[0]]  # the rest waits: the only slot is taken
        recorder.release.set()
        await asyncio.gather(first, *later)
        return recorder.batches

    assert asyncio.run(scenario()) == [[0], [1, 2, 3]]


def test_max_batch_caps_the_size_of_a_batch() -> None:
    async def scenario() -> list[list[int]]:
        recorder = Recorder()
        batcher: MicroBatcher[int, int] = MicroBatcher(recorder.send, max_batch=2, max_in_flight=8)
        await asyncio.gather(*(batcher.submit(i, Deadline.after(1.0)) for i in range(5)))
        return recorder.batches

    assert asyncio.run(scenario()) == [[0, 1], [2, 3], [4]]


def test_a_failed_send_fails_every_request_of_its_batch() -> None:
    async def failing(batch: Sequence[Pending[int, int]]) -> None:
        raise ConnectionError("redis is down")

    async def scenario() -> list[BaseException | int]:
        batcher: MicroBatcher[int, int] = MicroBatcher(failing, max_batch=10, max_in_flight=1)
        futures = [batcher.submit(i, Deadline.after(1.0)) for i in range(3)]
        return await asyncio.gather(*futures, return_exceptions=True)

    results = asyncio.run(scenario())

    assert all(isinstance(r, ConnectionError) for r in results)


def test_a_request_given_up_before_its_batch_leaves_is_not_sent() -> None:
    async def scenario() -> list[list[int]]:
        recorder = Recorder()
        batcher: MicroBatcher[int, int] = MicroBatcher(
            recorder.send, max_batch=100, max_in_flight=4
        )
        abandoned = batcher.submit(1, Deadline.after(1.0))
        kept = batcher.submit(2, Deadline.after(1.0))
        abandoned.cancel()
        await kept
        return recorder.batches

    assert asyncio.run(scenario()) == [[2]]


@pytest.mark.parametrize("in_flight", [1, 3])
def test_in_flight_never_exceeds_its_limit(in_flight: int) -> None:
    async def scenario() -> int:
        peak = 0
        batcher: MicroBatcher[int, int]

        async def send(batch: Sequence[Pending[int, int]]) -> None:
            nonlocal peak
            peak = max(peak, batcher.in_flight)
            await asyncio.sleep(0.001)
            for pending in batch:
                pending.future.set_result(pending.item)

        batcher = MicroBatcher(send, max_batch=4, max_in_flight=in_flight)
        await asyncio.gather(*(batcher.submit(i, Deadline.after(1.0)) for i in range(50)))
        return peak

    assert asyncio.run(scenario()) == in_flight
