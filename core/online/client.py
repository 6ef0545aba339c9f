"""The job client: how an API process sends work to the workers and awaits the answers.

    predict(trip) ─> micro-batcher ─> one task per batch ─LPUSH─> tasks.trip ─> worker
                                                                                │ one predict
    trip futures <─ batch future <─ listener <─PUBLISH─ celery-task-meta-<inbox>-<uuid>
                                    (one PSUBSCRIBE celery-task-meta-<inbox>-*)

Every API process owns an *inbox*: a random prefix on the ids of the tasks it sends. One pattern
subscription on one connection receives the results of all its tasks and only those, so there is
no subscribe/unsubscribe per request, no race between a send and its subscription, and no thread
parked per waiting request: each waiting request is an asyncio future with a deadline.

Results that were published while the listener was disconnected are read back from their keys
when it reconnects; a result read is deleted, so keys do not pile up in Redis.
"""

import asyncio
import contextlib
import functools
import os
import random
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from loguru import logger
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from config import Settings
from core.errors import (
    BackendUnavailable,
    DeadlineExceeded,
    ModelError,
    PredictionFailed,
    VersionNotServed,
)
from core.infra import metrics, tracing
from core.infra.redis_clients import async_client
from core.online import fleet, protocol
from core.online.microbatch import MicroBatcher, Pending
from core.online.routing import ROUTING_KEY, Routing, version_queue
from core.online.schemas import WorkerInfo
from core.trip.pickup import wall_clock_seconds
from core.trip.schemas import BatchPrediction, TripRequest

PREDICT_BATCH_TASK = "tasks.trip.tasks.predict_batch"

_RECONNECT_BACKOFF_S = (0.05, 0.1, 0.25, 0.5, 1.0)
_DELETE_EVERY_S = 0.1
_CONFIRM_S = 5.0
# A Redis that is down closes its connections, which every client sees at once; a frozen one (a
# stalled host, a network partition) says nothing. Each send is bounded, and a watcher pings the
# broker so that requests are refused at once, not each after its own bounded wait.
_SEND_TIMEOUT_S = 1.0
_WATCH_EVERY_S = 0.25
# How often the routing (core.online.routing) and the versions live workers hold are read again.
_ROUTING_EVERY_S = 0.5
# What the API's connections call themselves (CLIENT SETNAME): in Redis's CLIENT LIST, they are
# told apart from the workers' (kombu's pidbox subscribes to patterns too).
CLIENT_NAME = "tripq-api"


class TripAnswer(NamedTuple):
    """One trip's share of its batch's answer."""

    duration: float
    batch: BatchPrediction


def _expire(future: "asyncio.Future[TripAnswer]", timeout_s: float) -> None:
    if not future.done():
        future.set_exception(DeadlineExceeded(f"no worker answered within {timeout_s:g} s"))


class JobClient:
    """Send prediction tasks and await their results, for one asyncio process."""

    def __init__(
        self,
        *,
        broker: Redis,
        backend: Redis,
        queue: str,
        batch_max_size: int = 256,
        batch_max_in_flight: int = 4,
        worker_ttl_s: float = 10.0,
    ) -> None:
        self._broker = broker
        self._backend = backend
        self._queue = queue
        self._inbox = uuid.uuid4().hex[:12]
        self._origin = f"api-{os.getpid()}@{socket.gethostname()}"
        self._pending: dict[str, asyncio.Future[protocol.TaskOutcome]] = {}
        self._read_keys: list[str] = []
        self._subscribed = asyncio.Event()
        self._broker_answers = True
        # redis-py may turn a cancellation in the middle of a command into a connection error,
        # which the loops below survive by design: they also stop on this flag.
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._batch_max_size = batch_max_size
        self._batch_max_in_flight = batch_max_in_flight
        # One micro-batcher per version asked for; None: any worker's current model.
        self._batchers: dict[str | None, MicroBatcher[TripRequest, TripAnswer]] = {}
        self._worker_ttl_s = worker_ttl_s
        self._routing = Routing()
        self._served: frozenset[str] = frozenset()
        self._exported_roles: set[tuple[str, str]] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> "JobClient":
        """Build the client the settings describe."""
        options = {"health_check_interval": 15, "client_name": CLIENT_NAME}
        broker = async_client(settings, settings.broker_url, **options)
        backend = (
            broker
            if settings.result_backend == settings.broker_url
            else async_client(settings, settings.result_backend, **options)
        )
        return cls(
            broker=broker,
            backend=backend,
            queue=settings.queue,
            batch_max_size=settings.batch_max_size,
            batch_max_in_flight=settings.batch_max_in_flight,
            worker_ttl_s=settings.worker_ttl_s,
        )

    @property
    def broker(self) -> Redis:
        """The broker's connection pool, for other users of the same Redis (core.jobs.store)."""
        return self._broker

    @property
    def origin(self) -> str:
        """This process, as the tasks it sends name their origin."""
        return self._origin

    @property
    def available(self) -> bool:
        """Tell whether work can be sent now: results are listened for and Redis answers."""
        return self._broker_answers and self._subscribed.is_set()

    async def start(self, wait_s: float = 0.0) -> None:
        """Start the result listener; wait up to `wait_s` for its subscription."""
        self._tasks = [
            asyncio.create_task(self._listen(), name="tripq-result-listener"),
            asyncio.create_task(self._delete_read_results(), name="tripq-result-reaper"),
            asyncio.create_task(self._watch_broker(), name="tripq-broker-watch"),
            asyncio.create_task(self._watch_routing(), name="tripq-routing-watch"),
        ]
        if wait_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._subscribed.wait(), wait_s)

    async def close(self) -> None:
        """Stop the listener, fail pending waits, and close connections."""
        self._closing = True
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BackendUnavailable("the API is shutting down"))
        for batcher in self._batchers.values():
            await batcher.drain()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._flush_deletes()
        await self._broker.aclose()
        if self._backend is not self._broker:
            await self._backend.aclose()

    @property
    def routing(self) -> Routing:
        """The routing as last read from Redis."""
        return self._routing

    def route(self, pinned: str | None) -> str | None:
        """Choose the version that answers a request: the one it pins, the canary for its share
        of requests, or None (any worker's current version)."""
        if pinned is not None:
            if pinned not in self._served:
                served = ", ".join(sorted(self._served)) or "none"
                raise VersionNotServed(
                    f"X-Model-Version: no live worker holds {pinned!r} (served: {served})"
                )
            return pinned
        canary = self._routing.canary
        if canary in self._served and random.random() < self._routing.canary_share:  # noqa: S311
            return canary
        return None

    def _batcher(self, version: str | None) -> MicroBatcher[TripRequest, TripAnswer]:
        batcher = self._batchers.get(version)
        if batcher is None:
            batcher = MicroBatcher(
                functools.partial(self._predict_batch, version),
                max_batch=self._batch_max_size,
                max_in_flight=self._batch_max_in_flight,
            )
            self._batchers[version] = batcher
        return batcher

    async def predict(
        self, trip: TripRequest, timeout_s: float, version: str | None = None
    ) -> TripAnswer:
        """Predict one trip within `timeout_s`, batched with the trips sent alongside it, by
        model `version` (None: a worker's current one)."""
        if not self.available:
            raise BackendUnavailable("Redis is not reachable")
        future = self._batcher(version).submit(trip, timeout_s, tracing.current.get())
        # A bare timer rather than asyncio.wait_for: this runs once per request, on the hot path.
        timer = asyncio.get_running_loop().call_later(timeout_s, _expire, future, timeout_s)
        try:
            return await future
        finally:
            timer.cancel()

    async def predict_many(
        self,
        trips: Sequence[TripRequest],
        timeout_s: float,
        chunk_size: int,
        version: str | None = None,
    ) -> list[BatchPrediction]:
        """Predict many trips within `timeout_s`, as tasks of at most `chunk_size` trips each.

        The answers come per chunk, in order: their durations, concatenated, follow `trips`.
        """
        if not self.available:
            raise BackendUnavailable("Redis is not reachable")
        deadline = asyncio.get_running_loop().time() + timeout_s
        chunks = [trips[i : i + chunk_size] for i in range(0, len(trips), chunk_size)]
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.gather(
                    *(self._run_batch(chunk, deadline, version) for chunk in chunks)
                )
        except TimeoutError:
            raise DeadlineExceeded(f"no worker answered within {timeout_s:g} s") from None

    async def _predict_batch(
        self, version: str | None, batch: Sequence[Pending[TripRequest, TripAnswer]]
    ) -> None:
        """Send one micro-batch as one task and resolve each trip's future with its answer."""
        # The task lives as long as its most patient request; the others time out on their own.
        deadline = max(p.deadline for p in batch)
        try:
            traces = [p.trace for p in batch if p.trace is not None]
            answer = await self._run_batch([p.item for p in batch], deadline, version, traces)
        except TimeoutError:
            error = DeadlineExceeded("no worker answered within the deadline")
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        for pending, duration in zip(batch, answer.durations, strict=True):
            if not pending.future.done():
                pending.future.set_result(TripAnswer(duration, answer))

    async def predict_columns(
        self, columns: Mapping[str, Sequence[int] | Sequence[float]], timeout_s: float
    ) -> BatchPrediction:
        """Predict trips already laid out as the columns of a batch task (see `batch_columns`)
        as one task, within `timeout_s`; for callers that hold many rows, such as `tripq score`.
        """
        if not self.available:
            raise BackendUnavailable("Redis is not reachable")
        deadline = asyncio.get_running_loop().time() + timeout_s
        try:
            return await self._send_columns(columns, deadline, None)
        except TimeoutError:
            raise DeadlineExceeded(f"no worker answered within {timeout_s:g} s") from None

    async def _run_batch(
        self,
        trips: Sequence[TripRequest],
        deadline: float,
        version: str | None,
        traces: Sequence[str] | None = None,
    ) -> BatchPrediction:
        """Send `trips` as one task for model `version` and return their predictions;
        TimeoutError at `deadline`. `traces`: the request ids it answers (default: this one's)."""
        if traces is None:
            trace = tracing.current.get()
            traces = [trace] if trace is not None else []
        return await self._send_columns(batch_columns(trips), deadline, version, traces)

    async def _send_columns(
        self,
        columns: Mapping[str, Sequence[int] | Sequence[float]],
        deadline: float,
        version: str | None,
        traces: Sequence[str] = (),
    ) -> BatchPrediction:
        loop = asyncio.get_running_loop()
        task_id = f"{self._inbox}-{uuid.uuid4().hex}"
        queue = self._queue if version is None else version_queue(self._queue, version)
        kwargs: dict[str, object] = {"sent_at": time.time()}
        if version is not None:
            kwargs["model_version"] = version
        if traces:
            kwargs["request_ids"] = list(traces)
        metrics.BATCH_SIZE.observe(len(columns["trip_distance"]))
        message = protocol.encode_task(
            task_id=task_id,
            task_name=PREDICT_BATCH_TASK,
            queue=queue,
            args=[columns],
            kwargs=kwargs,
            # The task expires with its requests: no worker computes an answer nobody awaits.
            expires=datetime.now(UTC) + timedelta(seconds=max(0.0, deadline - loop.time())),
            origin=self._origin,
        )
        future: asyncio.Future[protocol.TaskOutcome] = loop.create_future()
        self._pending[task_id] = future
        sent = loop.time()
        try:
            async with asyncio.timeout_at(deadline):
                await self._send(queue, message)
                outcome = await future
        finally:
            self._pending.pop(task_id, None)
        answer = batch_prediction(outcome, len(columns["trip_distance"]))
        metrics.record_phases(loop.time() - sent, answer.queue_ms, answer.inference_ms)
        return answer

    async def ping(self) -> bool:
        """Tell whether both Redis roles answer."""
        try:
            await self._broker.ping()
            if self._backend is not self._broker:
                await self._backend.ping()
        except (RedisError, OSError):
            return False
        return True

    async def queue_depth(self) -> int:
        """Count the tasks waiting in the queue and in the queues of the versions routed to."""
        queues = [self._queue, *(version_queue(self._queue, v) for v in self._served)]
        try:
            async with self._broker.pipeline(transaction=False) as pipe:
                for queue in queues:
                    pipe.llen(queue)
                return sum(int(n) for n in await pipe.execute())
        except (RedisError, OSError) as exc:
            raise BackendUnavailable("the broker is not reachable") from exc

    async def export_queues(self, extra: Sequence[str] = ()) -> None:
        """Publish how many tasks wait in each queue, and how long the oldest has waited."""
        queues = [self._queue, *(version_queue(self._queue, v) for v in self._served), *extra]
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

    async def workers(self, ttl_s: float) -> list[WorkerInfo]:
        """List the workers whose heartbeat is younger than `ttl_s`."""
        now = time.time()
        try:
            async with self._broker.pipeline(transaction=False) as pipe:
                pipe.zremrangebyscore(fleet.WORKERS_KEY, "-inf", now - ttl_s)
                pipe.zrange(fleet.WORKERS_KEY, 0, -1, withscores=True)
                pipe.hgetall(fleet.WORKERS_INFO_KEY)
                _, seen, info = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BackendUnavailable("the broker is not reachable") from exc
        return fleet.live_workers(seen, info, now)

    async def _send(self, queue: str, message: bytes) -> None:
        if not self._broker_answers:
            raise BackendUnavailable("the broker is not reachable")
        try:
            async with asyncio.timeout(_SEND_TIMEOUT_S):
                await self._broker.lpush(queue, message)
        except (RedisError, OSError) as exc:
            raise BackendUnavailable("the broker is not reachable") from exc
        except TimeoutError as exc:
            self._broker_answers = False
            raise BackendUnavailable("the broker did not answer") from exc

    async def _watch_broker(self) -> None:
        """Ping Redis every _WATCH_EVERY_S; `available` turns false while it does not answer."""
        while not self._closing:
            try:
                async with asyncio.timeout(_SEND_TIMEOUT_S):
                    answers = await self.ping()
            except TimeoutError:
                answers = False
            if answers != self._broker_answers:
                log = logger.info if answers else logger.warning
                log("Redis answers again" if answers else "Redis does not answer")
            self._broker_answers = answers
            await asyncio.sleep(_WATCH_EVERY_S)

    async def _watch_routing(self) -> None:
        """Read the routing and the versions live workers hold, every _ROUTING_EVERY_S."""
        while not self._closing:
            try:
                async with asyncio.timeout(_SEND_TIMEOUT_S):
                    raw = await self._broker.hgetall(ROUTING_KEY)
                    workers = await self.workers(self._worker_ttl_s)
                self._routing = Routing.from_hash(raw)
                self._served = frozenset(v for w in workers for v in w.model_versions)
                self._export_fleet(workers)
            except (RedisError, OSError, TimeoutError, BackendUnavailable):
                pass  # the last routing stays in force while Redis is away
            await asyncio.sleep(_ROUTING_EVERY_S)

    def _export_fleet(self, workers: Sequence[WorkerInfo]) -> None:
        """Publish the fleet as last read: live workers, and the current and canary versions
        (the current one: the routing's, else what the workers say is theirs)."""
        metrics.WORKERS_ALIVE.set(len(workers))
        current = self._routing.current or next(
            (w.model_version for w in workers if w.model_version), None
        )
        roles = {(v, r) for r, v in (("current", current), ("canary", self._routing.canary)) if v}
        # Multiprocess gauges cannot drop a series: a version no longer named reads 0.
        for version, role in self._exported_roles - roles:
            metrics.MODEL_INFO.labels(version, role).set(0)
        for version, role in roles:
            metrics.MODEL_INFO.labels(version, role).set(1)
        self._exported_roles = roles

    async def _listen(self) -> None:
        """Receive every result for this inbox, reconnecting whenever the connection drops."""
        pattern = protocol.result_key(f"{self._inbox}-*")
        attempt = 0
        while not self._closing:
            pubsub = self._backend.pubsub()
            try:
                await pubsub.psubscribe(pattern)
                await self._confirmed(pubsub)
                self._subscribed.set()
                if attempt:
                    logger.info("result listener reconnected", inbox=self._inbox)
                    await self._recover_missed()
                attempt = 0
                await self._receive(pubsub)
            except (RedisError, OSError, TimeoutError) as exc:
                self._subscribed.clear()
                delay = _RECONNECT_BACKOFF_S[min(attempt, len(_RECONNECT_BACKOFF_S) - 1)]
                if attempt == 0:
                    logger.warning("result listener lost Redis", error=str(exc))
                attempt += 1
                await asyncio.sleep(delay)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]

    @staticmethod
    async def _confirmed(pubsub: PubSub) -> None:
        """Wait for Redis to confirm the pattern subscription."""
        async with asyncio.timeout(_CONFIRM_S):
            while True:
                message = await pubsub.get_message(timeout=_CONFIRM_S)
                if message is not None and message["type"] == "psubscribe":
                    return

    async def _receive(self, pubsub: PubSub) -> None:
        prefix_len = len(protocol.RESULT_KEY_PREFIX)
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if message is None or message["type"] != "pmessage":
                continue
            task_id = message["channel"][prefix_len:].decode()
            self._resolve(task_id, protocol.decode_result(message["data"]))

    def _resolve(self, task_id: str, outcome: protocol.TaskOutcome) -> None:
        if not outcome.ready:
            return
        self._read_keys.append(protocol.result_key(task_id))
        future = self._pending.get(task_id)
        if future is not None and not future.done():
            future.set_result(outcome)

    async def _recover_missed(self) -> None:
        """Read back results published while the listener was away."""
        task_ids = list(self._pending)
        if not task_ids:
            return
        raws = await self._backend.mget([protocol.result_key(t) for t in task_ids])
        for task_id, raw in zip(task_ids, raws, strict=True):
            if raw is not None:
                self._resolve(task_id, protocol.decode_result(raw))

    async def _delete_read_results(self) -> None:
        while not self._closing:
            await asyncio.sleep(_DELETE_EVERY_S)
            await self._flush_deletes()

    async def _flush_deletes(self) -> None:
        if not self._read_keys:
            return
        keys, self._read_keys = self._read_keys, []
        try:
            await self._backend.unlink(*keys)
        except (RedisError, OSError):
            # Unread keys still expire after result_ttl_s; nothing is lost by skipping a round.
            logger.debug("could not delete read results", count=len(keys))


def batch_columns(trips: Sequence[TripRequest]) -> dict[str, Any]:
    """Lay trips out as the columns a batch task carries (request ids stay in the API).

    Pickup times travel as New York wall-clock seconds, and only when a trip has one, so the
    tasks of clients that send none are what they always were.
    """
    columns: dict[str, Any] = {
        "PULocationID": [t.PULocationID for t in trips],
        "DOLocationID": [t.DOLocationID for t in trips],
        "trip_distance": [t.trip_distance for t in trips],
    }
    if any(t.pickup_datetime is not None for t in trips):
        columns["pickup_wall_clock_s"] = [
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
