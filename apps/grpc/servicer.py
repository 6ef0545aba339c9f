"""tripq.v1.TripService: the prediction endpoints of apps.routers.trip, over gRPC.

Each call goes the path an HTTP request goes, with the same parts: the key and the version pin
checked first (metadata `x-api-key`, `x-model-version`), admission control, the trip contract
(core.trip), then the process's PredictionClient (micro-batching, the queue, the deadline).
The call's gRPC deadline is the request's Deadline, so its task expires with it.

    Predict        one trip          -> PredictReply, or the call fails (apps.grpc.status)
    PredictBatch   up to 10,000      -> one TripOutcome per trip, in order; invalid ones refused
    PredictStream  trips, as sent    -> one TripOutcome per trip, as soon as its answer comes
"""

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import grpc
import orjson
from loguru import logger
from opentelemetry.trace import Span
from pydantic import ValidationError

from apps.checks import is_valid_key
from apps.grpc.protos.tripq.v1 import trip_pb2, trip_pb2_grpc
from apps.grpc.status import abort, abort_unexpected, invalid_fields
from config import Settings
from core.errors import ReplyCode, TripqError, Unauthorized
from core.infra import otel, tracing
from core.online.admission import Admission
from core.online.client import PredictionClient, TripAnswer
from core.online.deadline import Deadline
from core.trip.batch_request import merge_replies, parse_trip_batch
from core.trip.schemas import TripRequest

Context = grpc.aio.ServicerContext[Any, Any]

SERVICE = trip_pb2.DESCRIPTOR.services_by_name["TripService"].full_name
_UNTRACED: nullcontext[None] = nullcontext()  # reused: free when tracing is off

API_KEY = "x-api-key"
MODEL_VERSION = "x-model-version"
REQUEST_ID = "x-request-id"


@dataclass(frozen=True, slots=True)
class CallPolicy:
    """How one call is served, read once from its metadata."""

    version: str | None  # the model version that must answer; None: a worker's current one


def trip_fields(message: trip_pb2.Trip) -> dict[str, Any]:
    """Give the fields a trip message carries, by name; those it leaves out are absent."""
    return {field.name: value for field, value in message.ListFields()}


def read_trip(message: trip_pb2.Trip) -> TripRequest:
    """Check a trip message against the contract; raise InvalidFields naming each bad field."""
    try:
        return TripRequest.model_validate(trip_fields(message))
    except ValidationError as exc:
        raise invalid_fields(exc) from None


def timings(total_ms: float, queue_ms: float, inference_ms: float) -> trip_pb2.Timings:
    """Say where the time of one call (or one trip of a stream) went."""
    return trip_pb2.Timings(total_ms=total_ms, queue_ms=queue_ms, inference_ms=inference_ms)


class TripServicer(trip_pb2_grpc.TripServiceServicer):
    """Serve tripq.v1.TripService through one process's prediction client."""

    def __init__(
        self,
        settings: Settings,
        predictor: PredictionClient,
        admission: Admission,
        model_version: str,
    ) -> None:
        self._settings = settings
        self._keys = settings.api_key_set
        self._predictor = predictor
        self._admission = admission
        self._model_version = model_version  # what a batch of refused trips names

    async def Predict(self, request: trip_pb2.Trip, context: Context) -> trip_pb2.PredictReply:
        """Predict how long one NYC taxi trip takes, in minutes."""
        with self._span(context, "Predict") as span:
            return await self._predict(request, context, span)

    async def PredictBatch(
        self, request: trip_pb2.PredictBatchRequest, context: Context
    ) -> trip_pb2.PredictBatchReply:
        """Predict up to 10,000 trips; each gets its own outcome, in order."""
        with self._span(context, "PredictBatch") as span:
            return await self._predict_batch(request, context, span)

    async def PredictStream(
        self, request_iterator: AsyncIterator[trip_pb2.Trip], context: Context
    ) -> AsyncIterator[trip_pb2.TripOutcome]:
        """Predict every trip sent; answer each, with its request_id, as soon as it is known."""
        with self._span(context, "PredictStream") as span:
            async for outcome in self._predict_stream(request_iterator, context, span):
                yield outcome

    async def _predict(
        self, request: trip_pb2.Trip, context: Context, span: Span | None
    ) -> trip_pb2.PredictReply:
        started = time.perf_counter()
        try:
            policy = self._policy(context, span)
            self._admission.check()
            trip = read_trip(request)
            deadline = self._deadline(context)
            with self._admission.hold():
                answer = await self._predictor.predict(trip, deadline, policy.version)
        except TripqError as exc:
            logger.info(
                "predict",
                door="grpc",
                request_id=request.request_id,
                reply_code=int(exc.reply_code),
                total_ms=_ms_since(started),
            )
            await abort(context, exc)
        except Exception as exc:
            await abort_unexpected(context, exc, "Predict")
        batch = answer.batch
        total_ms = _ms_since(started)
        logger.info(
            "predict",
            door="grpc",
            request_id=trip.request_id,
            reply_code=int(ReplyCode.OK),
            total_ms=total_ms,
            queue_ms=batch.queue_ms,
            inference_ms=batch.inference_ms,
        )
        return trip_pb2.PredictReply(
            request_id=trip.request_id,
            duration=answer.duration,
            model_version=batch.model_version,
            timings=timings(total_ms, batch.queue_ms, batch.inference_ms),
        )

    async def _predict_batch(
        self, request: trip_pb2.PredictBatchRequest, context: Context, span: Span | None
    ) -> trip_pb2.PredictBatchReply:
        started = time.perf_counter()
        try:
            policy = self._policy(context, span)
            self._admission.check()
            # The batch is read as HTTP reads one, so the envelope's limits and each refused
            # trip's message are the same by construction.
            body = orjson.dumps({"trips": [trip_fields(t) for t in request.trips]})
            trips, refused = parse_trip_batch(body)
            with self._admission.hold(len(trips)):
                answers = await self._predictor.predict_many(
                    trips, self._deadline(context), self._settings.batch_chunk_size, policy.version
                )
        except TripqError as exc:
            logger.info("predict batch", door="grpc", reply_code=int(exc.reply_code))
            await abort(context, exc)
        except Exception as exc:
            await abort_unexpected(context, exc, "PredictBatch")
        replies = merge_replies(
            [t.request_id for t in trips],
            [d for answer in answers for d in answer.durations],
            {p: o.model_dump(exclude_none=True) for p, o in refused.items()},
        )
        total_ms = _ms_since(started)
        logger.info(
            "predict batch",
            door="grpc",
            trips=len(replies),
            refused=len(refused),
            total_ms=total_ms,
        )
        return trip_pb2.PredictBatchReply(
            model_version=answers[0].model_version if answers else self._model_version,
            replies=[trip_pb2.TripOutcome(**reply) for reply in replies],
            timings=timings(
                total_ms,
                max((a.queue_ms for a in answers), default=0.0),
                sum(a.inference_ms for a in answers),
            ),
        )

    async def _predict_stream(
        self, request_iterator: AsyncIterator[trip_pb2.Trip], context: Context, span: Span | None
    ) -> AsyncIterator[trip_pb2.TripOutcome]:
        try:
            policy = self._policy(context, span)
        except TripqError as exc:
            await abort(context, exc)
        # Trips are answered concurrently, each by a task of its own that hands its outcome
        # here (or the exception it failed with); None marks the end of the trips sent.
        outcomes: asyncio.Queue[trip_pb2.TripOutcome | Exception | None] = asyncio.Queue()
        answering: set[asyncio.Task[None]] = set()
        sent = 0

        async def answer(message: trip_pb2.Trip) -> None:
            try:
                outcomes.put_nowait(await self._outcome(message, policy, context))
            except Exception as exc:  # the stream fails with it, below
                outcomes.put_nowait(exc)

        async def read() -> None:
            nonlocal sent
            try:
                async for message in request_iterator:
                    sent += 1
                    task = asyncio.create_task(answer(message))
                    answering.add(task)
                    task.add_done_callback(answering.discard)
            finally:
                outcomes.put_nowait(None)

        reader = asyncio.create_task(read())
        answered, reading = 0, True
        try:
            while reading or answered < sent:
                outcome = await outcomes.get()
                if outcome is None:
                    reading = False
                elif isinstance(outcome, Exception):
                    await abort_unexpected(context, outcome, "PredictStream")
                else:
                    answered += 1
                    yield outcome
            await reader  # a broken request stream fails the call
        finally:
            reader.cancel()
            for task in list(answering):
                task.cancel()
            logger.info("predict stream", door="grpc", trips=sent, answered=answered)

    async def _outcome(
        self, message: trip_pb2.Trip, policy: CallPolicy, context: Context
    ) -> trip_pb2.TripOutcome:
        """Answer one trip of a stream: its duration, or why it has none."""
        started = time.perf_counter()
        try:
            trip = read_trip(message)
            with self._admission.hold():
                answer: TripAnswer = await self._predictor.predict(
                    trip, self._deadline(context), policy.version
                )
        except TripqError as exc:
            return trip_pb2.TripOutcome(
                reply_code=trip_pb2.ReplyCode.ValueType(exc.reply_code),
                request_id=message.request_id[:128],
                message=exc.message,
            )
        batch = answer.batch
        return trip_pb2.TripOutcome(
            reply_code=trip_pb2.REPLY_CODE_OK,
            request_id=trip.request_id,
            duration=answer.duration,
            model_version=batch.model_version,
            timings=timings(_ms_since(started), batch.queue_ms, batch.inference_ms),
        )

    def _policy(self, context: Context, span: Span | None) -> CallPolicy:
        """Check a call's key and version pin; bind its trace id to what it logs and sends."""
        metadata = _text_metadata(context)
        if self._keys and not is_valid_key(metadata.get(API_KEY), self._keys):
            raise Unauthorized(f"{API_KEY}: missing or not valid")
        # As the HTTP door: the client's x-request-id, else the call's OpenTelemetry trace id.
        sent = metadata.get(REQUEST_ID)
        tracing.trace_id.set(tracing.take_trace_id(sent, otel.trace_id_of(span)))
        return CallPolicy(self._predictor.route(metadata.get(MODEL_VERSION)))

    @staticmethod
    def _span(context: Context, method: str) -> AbstractContextManager[Span | None]:
        """Trace one call as a server span that continues the client's trace (W3C metadata),
        when tracing is on."""
        if not otel.enabled():
            return _UNTRACED
        metadata = _text_metadata(context)
        carrier = {name: metadata[name] for name in otel.CARRIER_HEADERS if name in metadata}
        attributes = {"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": method}
        return otel.request_span(f"{SERVICE}/{method}", attributes, carrier)

    def _deadline(self, context: Context) -> Deadline:
        """Make the call's gRPC deadline the request's, capped by REQUEST_TIMEOUT_MAX_S; a call
        without one gets REQUEST_TIMEOUT_S."""
        remaining = context.time_remaining()
        if remaining is None:
            return Deadline.after(self._settings.request_timeout_s)
        return Deadline.after(min(max(0.0, remaining), self._settings.request_timeout_max_s))


def _text_metadata(context: Context) -> dict[str, str]:
    """Give a call's text metadata by key; binary values (keys ending in -bin) are left out."""
    metadata = context.invocation_metadata() or ()
    return {key: value for key, value in metadata if isinstance(value, str)}


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
