"""The prediction endpoint, in the contract of the older service."""

import time

from fastapi import APIRouter, Request
from loguru import logger

from apps.deps import JobsDep, SettingsDep
from apps.errors import ERROR_RESPONSES
from core.errors import ReplyCode, TripqError
from core.schemas import Timings, TripReply, TripRequest

router = APIRouter(prefix="/v1/trip", tags=["trip"])


@router.post("/predict", response_model=TripReply, responses=ERROR_RESPONSES)
async def predict_trip(
    trip: TripRequest, request: Request, jobs: JobsDep, settings: SettingsDep
) -> TripReply:
    """Predict how long a NYC taxi trip takes, in minutes.

    The trip is queued on Redis for a worker; the reply waits at most the request deadline
    (`REQUEST_TIMEOUT_S`), after which it answers 504 with reply_code 2 and the task expires
    unexecuted. `reply_code` is 0 on success; every other code is documented below.
    """
    started = time.perf_counter()
    request.state.request_id = trip.request_id
    try:
        prediction = await jobs.predict(trip, settings.request_timeout_s)
    except TripqError as exc:
        logger.info(
            "predict",
            request_id=trip.request_id,
            reply_code=int(exc.reply_code),
            total_ms=_ms_since(started),
        )
        raise
    total_ms = _ms_since(started)
    logger.info(
        "predict",
        request_id=trip.request_id,
        reply_code=int(ReplyCode.OK),
        total_ms=total_ms,
        queue_ms=prediction.queue_ms,
        inference_ms=prediction.inference_ms,
    )
    return TripReply(
        request_id=prediction.request_id,
        duration=prediction.duration,
        model_version=prediction.model_version,
        timings=Timings(
            total_ms=total_ms,
            queue_ms=prediction.queue_ms,
            inference_ms=prediction.inference_ms,
        ),
    )


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
