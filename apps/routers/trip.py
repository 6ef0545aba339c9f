"""The prediction endpoints: one trip in the contract of the older service, and batches.

Both routes read and write JSON themselves: pydantic-core validates the raw bytes in one pass and
serializes the reply from its typed model (TripReply, BatchReply: the documented shape is the
served one). Against FastAPI's generic body parsing, dependency solving and response handling
this halves the API's CPU per request, and the API process is what limits throughput. The
request models are still published in /docs (see apps.main).
"""

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from loguru import logger
from pydantic import ValidationError

from apps.checks import MODEL_VERSION_HEADER, OnTimeout, RequestPolicy, request_policy
from apps.errors import ASYNC_RESPONSE, ERROR_RESPONSES
from apps.routers.jobs import accept_job
from core.errors import DeadlineExceeded, ReplyCode, TripqError
from core.online.admission import Admission
from core.online.client import PredictionClient
from core.trip.batch_request import merge_replies, parse_trip_batch
from core.trip.schemas import BatchReply, TripReply, TripRequest

router = APIRouter(prefix="/v1/trip", tags=["trip"])


# X-Request-Timeout is described in each route's text rather than here: a generated client would
# send tiny deadlines, whose honest answer is a 504.
_HEADERS = [
    MODEL_VERSION_HEADER,
    {
        "name": "Prefer",
        "in": "header",
        "required": False,
        "description": "`respond-async` (RFC 7240): when no answer comes within the deadline, "
        "or within `wait=N` seconds if sent, answer 202 with an async job (see /v1/trip/jobs) "
        "instead of 504; `wait=0` queues the job at once.",
        "schema": {"type": "string", "examples": ["respond-async, wait=2"]},
    },
]


def _json_body(model_name: str) -> dict[str, Any]:
    """Describe to /docs a JSON request body that the route reads itself, and its headers."""
    schema = {"$ref": f"#/components/schemas/{model_name}"}
    return {
        "parameters": _HEADERS,
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
    }


def _admit(request: Request) -> tuple[PredictionClient, Admission, RequestPolicy]:
    """Check a predict request before its body is read; return the client and admission that
    serve it, and the policy it is served under (deadline, version, what a timeout gets)."""
    policy = request_policy(request)
    admission: Admission = request.app.state.admission
    # Refused now if it would be refused once parsed: an overloaded API must not read and parse
    # a 4 MiB batch only to answer 429. A job made at once is not held, so not admitted here.
    if not policy.job_now:
        admission.check()
    return request.app.state.predictor, admission, policy


async def _hand_over(request: Request, body: bytes, policy: RequestPolicy) -> Response:
    """Make the request's trips an async job, as its `Prefer: respond-async` asks."""
    return await accept_job(request, body, policy.version, preference_applied=True)


@router.post(
    "/predict",
    response_model=TripReply,
    responses=ERROR_RESPONSES | ASYNC_RESPONSE,
    openapi_extra=_json_body("TripRequest"),
)
async def predict_trip(request: Request) -> Response:
    """Predict how long a NYC taxi trip takes, in minutes.

    The trip is queued on Redis for a worker, together with the trips other clients send at the
    same moment; the reply waits at most the request deadline (`REQUEST_TIMEOUT_S`, or the
    `X-Request-Timeout` header), after which it answers 504 with reply_code 2 and the task expires
    unexecuted. `X-Model-Version` pins the model version that must answer (409 when no live
    worker holds it); `model_version` in the reply names the one that did. `reply_code` is 0 on
    success; every other code is documented below.
    """
    started = time.perf_counter()
    predictor, admission, policy = _admit(request)
    body = await request.body()
    try:
        trip = TripRequest.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    request.state.request_id = trip.request_id
    if policy.job_now:
        return await _hand_over(request, body, policy)
    try:
        with admission.hold():
            answer = await predictor.predict(trip, policy.deadline, policy.version)
    except TripqError as exc:
        if policy.on_timeout is OnTimeout.HAND_OVER and isinstance(exc, DeadlineExceeded):
            return await _hand_over(request, body, policy)
        logger.info(
            "predict",
            request_id=trip.request_id,
            reply_code=int(exc.reply_code),
            total_ms=_ms_since(started),
        )
        raise
    total_ms = _ms_since(started)
    batch = answer.batch
    logger.info(
        "predict",
        request_id=trip.request_id,
        reply_code=int(ReplyCode.OK),
        total_ms=total_ms,
        queue_ms=batch.queue_ms,
        inference_ms=batch.inference_ms,
    )
    # Validated from a dict: in pydantic-core, cheaper than model_construct's Python loop.
    reply = TripReply.model_validate(
        {
            "reply_code": ReplyCode.OK,
            "request_id": trip.request_id,
            "duration": answer.duration,
            "model_version": batch.model_version,
            "timings": {
                "total_ms": total_ms,
                "queue_ms": batch.queue_ms,
                "inference_ms": batch.inference_ms,
            },
        }
    )
    return Response(reply.model_dump_json(), media_type="application/json")


@router.post(
    "/predict/batch",
    response_model=BatchReply,
    responses=ERROR_RESPONSES | ASYNC_RESPONSE,
    openapi_extra=_json_body("BatchRequest"),
)
async def predict_trip_batch(request: Request) -> Response:
    """Predict up to 10,000 trips in one request; each trip gets its own reply, in order.

    A trip that fails validation gets reply_code 1 and a message naming its field, and the others
    are still answered. The batch as a whole answers 400 only when it is not a batch at all, and
    504/503/500 when no prediction could be made.
    """
    started = time.perf_counter()
    predictor, admission, policy = _admit(request)
    body = await request.body()
    trips, refused = parse_trip_batch(body)
    if policy.job_now:
        return await _hand_over(request, body, policy)
    chunk_size = request.app.state.settings.batch_chunk_size
    try:
        with admission.hold(len(trips)):
            answers = await predictor.predict_many(
                trips, policy.deadline, chunk_size, policy.version
            )
    except DeadlineExceeded:
        if policy.on_timeout is not OnTimeout.HAND_OVER:
            raise
        return await _hand_over(request, body, policy)
    replies = merge_replies(
        [t.request_id for t in trips],
        [d for answer in answers for d in answer.durations],
        {p: o.model_dump(exclude_none=True) for p, o in refused.items()},
    )
    total_ms = _ms_since(started)
    logger.info("predict batch", trips=len(replies), refused=len(refused), total_ms=total_ms)
    reply = BatchReply.model_validate(
        {
            "reply_code": ReplyCode.OK,
            "model_version": answers[0].model_version
            if answers
            else request.app.state.model_version,
            "replies": replies,
            "timings": {
                "total_ms": total_ms,
                "queue_ms": max((a.queue_ms for a in answers), default=0.0),
                "inference_ms": sum(a.inference_ms for a in answers),
            },
        }
    )
    # A reply's absent fields (a refused trip's duration, an answered one's message) stay out.
    return Response(reply.model_dump_json(exclude_none=True), media_type="application/json")


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
