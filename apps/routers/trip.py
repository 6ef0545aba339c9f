"""The prediction endpoints: one trip in the contract of the older service, and batches.

Both routes read and write JSON themselves: pydantic-core validates the raw bytes in one pass and
orjson writes the reply. Against FastAPI's generic body parsing, dependency solving and response
re-validation this halves the API's CPU per request, and the API process is what limits
throughput. The request models are still published in /docs (see apps.main).
"""

import math
import time
from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from loguru import logger
from pydantic import ValidationError
from starlette.datastructures import Headers

from apps.errors import ERROR_RESPONSES
from config import Settings
from core.errors import InvalidTrip, ReplyCode, TripqError, Unauthorized
from core.jobs import JobClient
from core.limits import Admission
from core.schemas import BatchReply, TripReply, TripRequest
from core.trip_batch import parse_trip_batch

router = APIRouter(prefix="/v1/trip", tags=["trip"])


# X-Request-Timeout is described in each route's text rather than here: a generated client would
# send tiny deadlines, whose honest answer is a 504.
_HEADERS = [
    {
        "name": "X-Model-Version",
        "in": "header",
        "required": False,
        "description": "Pin the model version that must answer (409 when no live worker holds "
        "it); by default the current version, or the canary for its share of requests.",
        "schema": {"type": "string"},
    },
]


def _json_body(model_name: str) -> dict[str, Any]:
    """Describe to /docs a JSON request body that the route reads itself, and its headers."""
    schema = {"$ref": f"#/components/schemas/{model_name}"}
    return {
        "parameters": _HEADERS,
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
    }


def _admit(request: Request) -> tuple[JobClient, Admission, float, str | None]:
    """Check what every predict request must pass before its body is read; return its deadline
    and the model version that must answer it (None: any worker's current one).

    Reads app state rather than declared dependencies: FastAPI's dependency solving costs more
    per request than everything tripq itself does on this path.
    """
    settings: Settings = request.app.state.settings
    headers = request.headers
    keys = request.app.state.api_keys
    if keys and headers.get("x-api-key") not in keys:
        raise Unauthorized("X-API-Key: missing or not valid")
    content_type = headers.get("content-type")
    if content_type is not None and not _is_json(content_type):
        raise HTTPException(415, f"content-type: expected application/json, got {content_type}")
    jobs: JobClient = request.app.state.jobs
    version = jobs.route(headers.get("x-model-version"))
    return jobs, request.app.state.admission, _deadline(headers, settings), version


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _deadline(headers: Headers, settings: Settings) -> float:
    """Read the client's X-Request-Timeout (seconds), capped by config; else the default."""
    asked = headers.get("x-request-timeout")
    if asked is None:
        return settings.request_timeout_s
    try:
        seconds = float(asked)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise InvalidTrip(f"X-Request-Timeout: must be a positive number of seconds, got {asked!r}")
    return min(seconds, settings.request_timeout_max_s)


@router.post(
    "/predict",
    response_model=TripReply,
    responses=ERROR_RESPONSES,
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
    jobs, admission, timeout_s, version = _admit(request)
    try:
        trip = TripRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    request.state.request_id = trip.request_id
    try:
        with admission.hold():
            answer = await jobs.predict(trip, timeout_s, version)
    except TripqError as exc:
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
    responses=ERROR_RESPONSES,
    openapi_extra=_json_body("BatchRequest"),
)
async def predict_trip_batch(request: Request) -> Response:
    """Predict up to 10,000 trips in one request; each trip gets its own reply, in order.

    A trip that fails validation gets reply_code 1 and a message naming its field, and the others
    are still answered. The batch as a whole answers 400 only when it is not a batch at all, and
    504/503/500 when no prediction could be made.
    """
    started = time.perf_counter()
    jobs, admission, timeout_s, version = _admit(request)
    trips, refused = parse_trip_batch(await request.body())
    chunk_size = request.app.state.settings.batch_chunk_size
    with admission.hold(len(trips)):
        answers = await jobs.predict_many(trips, timeout_s, chunk_size, version)
    durations = iter([d for answer in answers for d in answer.durations])
    valid = iter(trips)
    replies: list[dict[str, Any]] = []
    for position in range(len(trips) + len(refused)):
        outcome = refused.get(position)
        if outcome is not None:
            replies.append(outcome.model_dump(exclude_none=True))
        else:
            replies.append(
                {"reply_code": 0, "request_id": next(valid).request_id, "duration": next(durations)}
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
