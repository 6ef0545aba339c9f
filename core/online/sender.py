"""The task sender: lay trips out as one batch task, send it with its expiry, read its answer.

    trips ─> batch_columns ─> encode_task(expires = the deadline) ─LPUSH─> queue (broker)
    answer <─ batch_prediction <─ result inbox future (failed at the deadline, if still waiting)

The API sends tasks by name, without Celery's producer, so it never imports the model code.
"""

import asyncio
import os
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.trace import Span

from core.errors import DeadlineExceeded, ModelError, PredictionFailed
from core.infra import metrics, otel
from core.online import protocol
from core.online.broker import Broker
from core.online.deadline import Deadline
from core.online.inbox import ResultInbox
from core.online.routing import version_queue
from core.trip import contract
from core.trip.pickup import wall_clock_seconds
from core.trip.schemas import BatchPrediction, TripRequest

PREDICT_BATCH_TASK = "tasks.trip.tasks.predict_batch"

Columns = Mapping[str, Sequence[int] | Sequence[float]]


class TaskSender:
    """Send batch tasks to one queue (or a version's own) and await their answers."""

    def __init__(self, broker: Broker, inbox: ResultInbox, queue: str) -> None:
        self._broker = broker
        self._inbox = inbox
        self._queue = queue
        self._origin = f"api-{os.getpid()}@{socket.gethostname()}"

    @property
    def origin(self) -> str:
        """This process, as the tasks it sends name their origin."""
        return self._origin

    async def send(
        self,
        columns: Columns,
        deadline: Deadline,
        version: str | None = None,
        trace_ids: Sequence[str] = (),
        spans: Sequence[Span] | None = None,
    ) -> BatchPrediction:
        """Send `columns` as one task for model `version` (None: a worker's current one) and
        return its answer; DeadlineExceeded at `deadline`. `trace_ids`: for the worker's logs;
        `spans`: those of the requests it answers, for its trace (None: the current span's)."""
        loop = asyncio.get_running_loop()
        task_id = self._inbox.new_task_id()
        queue = self._queue if version is None else version_queue(self._queue, version)
        kwargs: dict[str, object] = {"sent_at": time.time()}
        if version is not None:
            kwargs["model_version"] = version
        if trace_ids:
            kwargs["trace_ids"] = list(trace_ids)
        size = len(columns[contract.DISTANCE])
        metrics.BATCH_SIZE.observe(size)
        future = self._inbox.expect(task_id)
        timer = deadline.expire_at(future)
        sent = loop.time()
        try:
            with otel.send_span(PREDICT_BATCH_TASK, queue, task_id, size, spans) as trace_headers:
                message = protocol.encode_task(
                    task_id=task_id,
                    task_name=PREDICT_BATCH_TASK,
                    queue=queue,
                    args=[columns],
                    kwargs=kwargs,
                    # The task expires with its requests: no worker computes an answer nobody
                    # awaits.
                    expires=deadline.expires(),
                    origin=self._origin,
                    trace_headers=trace_headers,
                )
                await self._broker.push(queue, message)
            outcome = await future
        finally:
            timer.cancel()
            self._inbox.forget(task_id)
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: a failed send leaves the wait unread
        answer = batch_prediction(outcome, size)
        metrics.record_phases(loop.time() - sent, answer.queue_ms, answer.inference_ms)
        return answer


def batch_columns(trips: Sequence[TripRequest]) -> dict[str, Any]:
    """Lay trips out as the columns a batch task carries (request ids stay in the API).

    Pickup times travel as New York wall-clock seconds, and only when a trip has one, so the
    tasks of clients that send none are what they always were.
    """
    columns: dict[str, Any] = {
        contract.PICKUP_ZONE: [t.PULocationID for t in trips],
        contract.DROPOFF_ZONE: [t.DOLocationID for t in trips],
        contract.DISTANCE: [t.trip_distance for t in trips],
    }
    if any(t.pickup_datetime is not None for t in trips):
        columns[contract.PICKUP_TIME] = [
            None if t.pickup_datetime is None else wall_clock_seconds(t.pickup_datetime)
            for t in trips
        ]
    return columns


def batch_prediction(outcome: protocol.TaskOutcome, size: int) -> BatchPrediction:
    """Turn a finished batch task's record into its answer, or the matching domain error."""
    if outcome.status == protocol.REVOKED:
        raise DeadlineExceeded("the task expired before a worker could run it")
    if outcome.status != protocol.SUCCESS:
        detail = outcome.result if isinstance(outcome.result, dict) else {}
        if detail.get("exc_type") in {"ModelError", "InvalidArtifact"}:
            raise ModelError("the worker has no usable model")
        raise PredictionFailed("the worker failed while predicting")
    answer = BatchPrediction.model_validate(outcome.result)
    if len(answer.durations) != size:
        raise PredictionFailed("the worker answered for a different number of trips")
    return answer
