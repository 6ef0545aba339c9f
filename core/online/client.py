"""The prediction client: how an API process has trips predicted by the workers.

A thin composition of the parts of core.online (see its docstring for the whole flow):

    predict(trip) ─> micro-batcher ─> TaskSender ─LPUSH─> queue ─> worker
    trip futures <─ batch answer <─ ResultInbox <─PUBLISH─ worker
                    Broker (health, queue depths) · FleetView (workers, routing, versions)

Each waiting request is an asyncio future failed at its Deadline by one timer.
"""

import asyncio
import functools
from collections.abc import Sequence
from typing import NamedTuple

from opentelemetry.trace import Span
from redis.asyncio import Redis

from config import Settings
from core.errors import BackendUnavailable
from core.infra import otel, tracing
from core.infra.redis_clients import async_client
from core.online.broker import Broker
from core.online.deadline import Deadline, latest
from core.online.fleet import FleetView
from core.online.inbox import ResultInbox
from core.online.microbatch import MicroBatcher, Pending
from core.online.routing import Routing, version_queue
from core.online.schemas import WorkerInfo
from core.online.sender import Columns, TaskSender, batch_columns
from core.trip.schemas import BatchPrediction, TripRequest

# What the API's connections call themselves (CLIENT SETNAME): in Redis's CLIENT LIST, they are
# told apart from the workers' (kombu's pidbox subscribes to patterns too).
CLIENT_NAME = "tripq-api"
_CLIENT_OPTIONS = {"health_check_interval": 15, "client_name": CLIENT_NAME}


class TripAnswer(NamedTuple):
    """One trip's share of its batch's answer."""

    duration: float
    batch: BatchPrediction


class _Submitted(NamedTuple):
    """A trip waiting for its batch, and the span of the request that asked (None: untraced)."""

    trip: TripRequest
    span: Span | None


def connect_broker(settings: Settings) -> Redis:
    """Open the API's connection pool to the broker, shared by everything that uses it."""
    return async_client(settings, settings.broker_url, **_CLIENT_OPTIONS)


class PredictionClient:
    """Send prediction tasks and await their results, for one asyncio process."""

    def __init__(
        self,
        *,
        broker: Redis,
        backend: Redis,
        queue: str,
        job_queue: str = "tasks.trip.jobs",
        batch_max_size: int = 256,
        batch_max_in_flight: int = 4,
        worker_ttl_s: float = 10.0,
        owns: Sequence[Redis] = (),
    ) -> None:
        self._queue = queue
        self._job_queue = job_queue
        self._broker = Broker(broker, backend)
        self._inbox = ResultInbox(backend)
        self._sender = TaskSender(self._broker, self._inbox, queue)
        self._fleet = FleetView(broker, worker_ttl_s)
        self._owned = list(owns)  # the connections this client closes
        self._batch_max_size = batch_max_size
        self._batch_max_in_flight = batch_max_in_flight
        # One micro-batcher per version asked for; None: any worker's current model.
        self._batchers: dict[str | None, MicroBatcher[_Submitted, TripAnswer]] = {}

    @classmethod
    def from_settings(cls, settings: Settings, broker: Redis | None = None) -> "PredictionClient":
        """Build the client the settings describe, on `broker` (None: a pool of its own)."""
        owned: list[Redis] = []
        if broker is None:
            broker = connect_broker(settings)
            owned.append(broker)
        if settings.result_backend == settings.broker_url:
            backend = broker
        else:
            backend = async_client(settings, settings.result_backend, **_CLIENT_OPTIONS)
            owned.append(backend)
        return cls(
            broker=broker,
            backend=backend,
            queue=settings.queue,
            job_queue=settings.job_queue,
            batch_max_size=settings.batch_max_size,
            batch_max_in_flight=settings.batch_max_in_flight,
            worker_ttl_s=settings.worker_ttl_s,
            owns=owned,
        )

    @property
    def origin(self) -> str:
        """This process, as the tasks it sends name their origin."""
        return self._sender.origin

    @property
    def available(self) -> bool:
        """Tell whether work can be sent now: results are listened for and Redis answers."""
        return self._broker.available and self._inbox.listening

    @property
    def routing(self) -> Routing:
        """The routing as last read from Redis."""
        return self._fleet.routing

    def route(self, pinned: str | None) -> str | None:
        """Choose the version that answers a request (see FleetView.route)."""
        return self._fleet.route(pinned)

    async def start(self, wait_s: float = 0.0) -> None:
        """Start the result listener and the watchers; wait up to `wait_s` for the listener."""
        self._broker.start()
        self._fleet.start()
        await self._inbox.start(wait_s)

    async def close(self) -> None:
        """Stop the listener, fail pending waits, and close the connections this client made."""
        self._inbox.fail_waiting("the API is shutting down")
        for batcher in self._batchers.values():
            await batcher.drain()
        await self._broker.close()
        await self._fleet.close()
        await self._inbox.close()
        for connection in self._owned:
            await connection.aclose()

    async def predict(
        self, trip: TripRequest, deadline: Deadline, version: str | None = None
    ) -> TripAnswer:
        """Predict one trip by `deadline`, batched with the trips sent alongside it, by model
        `version` (None: a worker's current one)."""
        if not self.available:
            raise BackendUnavailable("Redis is not reachable")
        submitted = _Submitted(trip, otel.current_span())
        future = self._batcher(version).submit(submitted, deadline, tracing.trace_id.get())
        timer = deadline.expire_at(future)
        try:
            return await future
        finally:
            timer.cancel()

    async def predict_many(
        self,
        trips: Sequence[TripRequest],
        deadline: Deadline,
        chunk_size: int,
        version: str | None = None,
    ) -> list[BatchPrediction]:
        """Predict many trips by `deadline`, as tasks of at most `chunk_size` trips each.

        The answers come per chunk, in order: their durations, concatenated, follow `trips`.
        """
        if not self.available:
            raise BackendUnavailable("Redis is not reachable")
        trace_id = tracing.trace_id.get()
        trace_ids = [trace_id] if trace_id is not None else []
        chunks = [trips[i : i + chunk_size] for i in range(0, len(trips), chunk_size)]
        return await asyncio.gather(
            *(self._sender.send(batch_columns(c), deadline, version, trace_ids) for c in chunks)
        )

    async def predict_columns(self, columns: Columns, deadline: Deadline) -> BatchPrediction:
        """Predict trips already laid out as the columns of a batch task (see `batch_columns`)
        as one task, by `deadline`; for callers that hold many rows, such as `tripq score`."""
        if not self.available:
            raise BackendUnavailable("Redis is not reachable")
        return await self._sender.send(columns, deadline)

    async def ping(self) -> bool:
        """Tell whether both Redis roles answer."""
        return await self._broker.ping()

    async def workers(self, ttl_s: float) -> list[WorkerInfo]:
        """List the workers whose heartbeat is younger than `ttl_s`."""
        return await self._fleet.workers(ttl_s)

    async def queue_depth(self) -> int:
        """Count the tasks waiting in the online queues: the queue, and those of the versions
        served. Jobs wait in queues of their own (pinned ones too), and never count."""
        return await self._broker.queue_depth(self._queues(self._queue))

    async def export_queues(self) -> None:
        """Publish how many tasks wait in each queue, online and jobs, and how long the oldest
        has waited."""
        await self._broker.export_queues(
            [*self._queues(self._queue), *self._queues(self._job_queue)]
        )

    def _queues(self, queue: str) -> list[str]:
        """Name `queue` and its queues of the versions served."""
        return [queue, *(version_queue(queue, v) for v in self._fleet.served)]

    def _batcher(self, version: str | None) -> MicroBatcher[_Submitted, TripAnswer]:
        batcher = self._batchers.get(version)
        if batcher is None:
            batcher = MicroBatcher(
                functools.partial(self._predict_batch, version),
                max_batch=self._batch_max_size,
                max_in_flight=self._batch_max_in_flight,
            )
            self._batchers[version] = batcher
        return batcher

    async def _predict_batch(
        self, version: str | None, batch: Sequence[Pending[_Submitted, TripAnswer]]
    ) -> None:
        """Send one micro-batch as one task and resolve each trip's future with its answer."""
        # The task lives as long as its most patient request; the others time out on their own.
        deadline = latest([p.deadline for p in batch])
        trace_ids = [p.trace_id for p in batch if p.trace_id is not None]
        columns = batch_columns([p.item.trip for p in batch])
        # The batch's task span hangs under its first request and links to the others
        # (core.infra.otel says why); untraced, nothing is collected.
        spans = [p.item.span for p in batch if p.item.span is not None] if otel.enabled() else None
        answer = await self._sender.send(columns, deadline, version, trace_ids, spans)
        for pending, duration in zip(batch, answer.durations, strict=True):
            if not pending.future.done():
                pending.future.set_result(TripAnswer(duration, answer))
