"""The prediction endpoints: one trip in the contract of the older service, and batches.

Both routes read and write JSON themselves: pydantic-core validates the raw bytes in one pass and
orjson writes the reply. Against FastAPI's generic body parsing, dependency solving and response
re-validation this halves the API's CPU per request, and the API process is what limits
throughput. The request models are still published in /docs (see apps.main).
"""

import time
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from loguru import logger
from pydantic import ValidationError

from apps.checks import MODEL_VERSION_HEADER, check_client, deadline
from apps.errors import ASYNC_RESPONSE, ERROR_RESPONSES
from apps.routers.jobs import accept_job, async_preference
from core.errors import DeadlineExceeded, ReplyCode, TripqError
from core.online.admission import Admission
from core.online.client import JobClient
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


def _admit(request: Request) -> tuple[JobClient, Admission, float, str | None, bool]:
    """Check a predict request before its body is read; return how long it waits for its
    answer, the model version that must answer it (None: any worker's current one), and
    whether it prefers an async job to a timeout (`Prefer: respond-async`; a wait of 0: a
    job at once)."""
    version = check_client(request)
    timeout_s = deadline(request.headers, request.app.state.settings)
    wait_s = async_preference(request.headers)
    if wait_s is not None:
        timeout_s = min(timeout_s, wait_s)
    jobs, admission = request.app.state.jobs, request.app.state.admission
    return jobs, admission, timeout_s, version, wait_s is not None


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
    jobs, admission, timeout_s, version, prefers_async = _admit(request)
    body = await request.body()
    try:
        trip = TripRequest.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    request.state.request_id = trip.request_id
    if timeout_s == 0:
        return await accept_job(request, body, version, preference_applied=True)
    try:
        with admission.hold():
            answer = await jobs.predict(trip, timeout_s, version)
    except TripqError as exc:
        if prefers_async and isinstance(exc, DeadlineExceeded):
            return await accept_job(request, body, version, preference_applied=True)
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
    reply = {
        "reply_code": 0,
        "request_id": trip.request_id,
        "duration": answer.duration,
        "model_version": batch.model_version,
        "timings": {
            "total_ms": total_ms,
            "queue_ms": batch.queue_ms,
            "inference_ms": batch.inference_ms,
        },
    }
    return Response(orjson.dumps(reply), media_type="application/json")


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
    jobs, admission, timeout_s, version, prefers_async = _admit(request)
    body = await request.body()
    trips, refused = parse_trip_batch(body)
    if timeout_s == 0:
        return await accept_job(request, body, version, preference_applied=True)
    chunk_size = request.app.state.settings.batch_chunk_size
    try:
        with admission.hold(len(trips)):
            answers = await jobs.predict_many(trips, timeout_s, chunk_size, version)
    except DeadlineExceeded:
        if not prefers_async:
            raise
        return await accept_job(request, body, version, preference_applied=True)
    replies = merge_replies(
        [t.request_id for t in trips],
        [d for answer in answers for d in answer.durations],
        {p: o.model_dump(exclude_none=True) for p, o in refused.items()},
    )
    total_ms = _ms_since(started)
    logger.info("predict batch", trips=len(replies), refused=len(refused), total_ms=total_ms)
    reply = {
        "reply_code": 0,
        "model_version": answers[0].model_version if answers else request.app.state.model_version,
        "replies": replies,
        "timings": {
            "total_ms": total_ms,
            "queue_ms": max((a.queue_ms for a in answers), default=0.0),
            "inference_ms": sum(a.inference_ms for a in answers),
        },
    }
    return Response(orjson.dumps(reply), media_type="application/json")


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
