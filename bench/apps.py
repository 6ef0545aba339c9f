"""The comparison systems of `tripq bench`: FastAPI apps with tripq's request and reply contract.

    noop       validate the body, answer a constant: the ceiling of one API process
    inprocess  the model loaded in the API process, one predict per request on the event loop
    naive      the older service: a sync endpoint, Celery's send_task + AsyncResult.get per request

gunicorn builds each app by calling its factory (`bench.apps:create_noop_app()`) with tripq's own
gunicorn config, so every system runs on the same server and a process imports scikit-learn or
Celery only when its system needs them.
"""

import time
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from config import get_settings
from core.errors import ReplyCode
from core.registry import resolve_model_dir
from core.schemas import ErrorReply, Timings, TripPrediction, TripReply, TripRequest

PREDICT_PATH = "/v1/trip/predict"
NAIVE_TASK = "tasks.trip.tasks.predict_ride"
NOOP_DURATION = 12.0  # minutes; any constant would do


def _add_health(app: FastAPI, system: str) -> None:
    """Add a /health route that names the system."""

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Say that this process is alive."""
        return {"system": system}


def create_noop_app() -> FastAPI:
    """Build the ceiling: parse and validate the trip, answer a constant prediction."""
    app = FastAPI(title="bench noop")
    timings = Timings(total_ms=0.0, queue_ms=0.0, inference_ms=0.0)

    @app.post(PREDICT_PATH, response_model=TripReply)
    async def predict(trip: TripRequest) -> TripReply:
        """Answer a constant duration."""
        return TripReply(
            request_id=trip.request_id,
            duration=NOOP_DURATION,
            model_version="noop",
            timings=timings,
        )

    _add_health(app, "noop")
    return app


def create_inprocess_app() -> FastAPI:
    """Build the in-process server: the model in the API process, one predict per request."""
    # Imported here so that only this system's process pays for scikit-learn.
    from core.model import load_model

    settings = get_settings()
    model = load_model(resolve_model_dir(settings.artifact_dir, settings.serving_version))
    app = FastAPI(title="bench inprocess")

    # async, not a threadpool `def`: a sub-millisecond predict costs less than a thread hand-off.
    @app.post(PREDICT_PATH, response_model=TripReply)
    async def predict(trip: TripRequest) -> TripReply:
        """Predict on the event loop."""
        started = time.perf_counter()
        [minutes] = model.predict_trips([trip])
        ms = round((time.perf_counter() - started) * 1000, 3)
        return TripReply(
            request_id=trip.request_id,
            duration=minutes,
            model_version=model.version,
            timings=Timings(total_ms=ms, queue_ms=0.0, inference_ms=ms),
        )

    _add_health(app, "inprocess")
    return app


def _error(status: int, code: ReplyCode, request_id: str, message: str) -> JSONResponse:
    reply = ErrorReply(reply_code=code, request_id=request_id, message=message)
    return JSONResponse(reply.model_dump(mode="json"), status_code=status)


def create_naive_app() -> FastAPI:
    """Build the older service's pattern: a threadpool endpoint that blocks on AsyncResult.get."""
    # Imported here so that the other systems' processes never load Celery.
    from celery.exceptions import TimeoutError as CeleryTimeout

    from tasks.app import app as celery_app

    settings = get_settings()
    app = FastAPI(title="bench naive")

    @app.post(PREDICT_PATH, response_model=TripReply)
    def predict(trip: TripRequest) -> Any:
        """Send the task, then block this thread on its result."""
        started = time.perf_counter()
        try:
            result = celery_app.send_task(
                NAIVE_TASK,
                args=[trip.model_dump()],
                kwargs={"sent_at": time.time()},
                queue=settings.queue,
            )
            value = result.get(timeout=settings.request_timeout_s)
            prediction = TripPrediction.model_validate(value)
        except CeleryTimeout:
            return _error(504, ReplyCode.TIMEOUT, trip.request_id, "no answer within the deadline")
        except Exception as exc:
            # This design's failure under load: AsyncResult.get from many threads corrupts the
            # shared pub/sub connection, and what it raises then varies (redis, kombu, KeyError,
            # ...). Answer an error so the load generator counts it instead of hanging.
            return _error(500, ReplyCode.SERVER_ERROR, trip.request_id, type(exc).__name__)
        if prediction.request_id != trip.request_id:
            # Only correct answers count: another request's result is an error too.
            return _error(500, ReplyCode.SERVER_ERROR, trip.request_id, "another request's result")
        ms = round((time.perf_counter() - started) * 1000, 3)
        return TripReply(
            request_id=prediction.request_id,
            duration=prediction.duration,
            model_version=prediction.model_version,
            timings=Timings(
                total_ms=ms, queue_ms=prediction.queue_ms, inference_ms=prediction.inference_ms
            ),
        )

    _add_health(app, "naive")
    return app
