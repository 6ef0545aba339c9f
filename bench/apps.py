"""The comparison systems of `tripq bench`: FastAPI apps with tripq's request and reply contract.

    noop                validate the body as tripq's route does, answer a constant: the ceiling
    inprocess           the model in the API process, scikit-learn's `predict` per request
    inprocess-compiled  the same with tripq's model path (compiled trees), per request
    naive               the older service: a sync endpoint, Celery's send_task + AsyncResult.get

gunicorn builds each app by calling its factory (`bench.apps:create_noop_app()`) with tripq's own
gunicorn config, so every system runs on the same server and a process imports scikit-learn or
Celery only when its system needs them.
"""

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from config import get_settings
from core.errors import ReplyCode
from core.model.registry import resolve_model_dir
from core.trip.schemas import ErrorReply, Timings, TripPrediction, TripReply, TripRequest

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
    """Build the ceiling: read and validate the trip as tripq's route does, answer a constant.

    The same path as tripq's `/v1/trip/predict` without the queue: pydantic-core validates the
    raw body in one pass and orjson writes the reply, so "the ceiling" is that of tripq's path.
    """
    app = FastAPI(title="bench noop")

    @app.post(PREDICT_PATH)
    async def predict(request: Request) -> Response:
        """Answer a constant duration."""
        trip = TripRequest.model_validate_json(await request.body())
        reply = {
            "reply_code": 0,
            "request_id": trip.request_id,
            "duration": NOOP_DURATION,
            "model_version": "noop",
            "timings": {"total_ms": 0.0, "queue_ms": 0.0, "inference_ms": 0.0},
        }
        return Response(orjson.dumps(reply), media_type="application/json")

    _add_health(app, "noop")
    return app


def create_inprocess_app() -> FastAPI:
    """Build the in-process server a user writes without tripq: the scikit-learn pipeline's
    `predict` per request, in the API process."""
    # Imported here so that only this system's process pays for scikit-learn.
    import numpy as np

    from core.model.artifact import load_model
    from core.trip.pickup import wall_clock_seconds

    model = load_model(_model_dir())
    pipeline = model.pipeline
    baseline = model.card.kind == "baseline"

    def predict_one(trip: TripRequest) -> float:
        if baseline:
            row: object = [{"PU_DO": f"{trip.PULocationID}_{trip.DOLocationID}",
                            "trip_distance": trip.trip_distance}]  # fmt: skip
        else:
            time = trip.pickup_datetime
            seconds = np.nan if time is None else wall_clock_seconds(time)
            row = np.asarray(
                [[trip.PULocationID, trip.DOLocationID, trip.trip_distance, seconds]], dtype=object
            )
        return float(pipeline.predict(row)[0])

    return _model_app("inprocess", model.version, predict_one)


def create_compiled_app() -> FastAPI:
    """Build the in-process server with tripq's own model path: compiled trees, fast features."""
    from core.model.artifact import load_model
    from core.model.trees import compile_in_child

    settings = get_settings()
    model_dir = _model_dir()
    model = load_model(model_dir)
    if model.regressor is not None:
        libraries = compile_in_child(model_dir, settings.tree_cache_dir, settings.tree_compiler)
        model.use_compiled(libraries)
    return _model_app(
        "inprocess-compiled", model.version, lambda trip: model.predict_trips([trip])[0]
    )


def _model_dir() -> Path:
    settings = get_settings()
    return resolve_model_dir(settings.artifact_dir, settings.serving_version)


def _model_app(system: str, version: str, predict_one: Callable[[TripRequest], float]) -> FastAPI:
    """An app that predicts each request on the event loop with `predict_one`."""
    app = FastAPI(title=f"bench {system}")

    # async, not a threadpool `def`: a sub-millisecond predict costs less than a thread hand-off.
    @app.post(PREDICT_PATH, response_model=TripReply)
    async def predict(trip: TripRequest) -> TripReply:
        """Predict on the event loop."""
        started = time.perf_counter()
        minutes = predict_one(trip)
        ms = round((time.perf_counter() - started) * 1000, 3)
        return TripReply(
            request_id=trip.request_id,
            duration=minutes,
            model_version=version,
            timings=Timings(total_ms=ms, queue_ms=0.0, inference_ms=ms),
        )

    _add_health(app, system)
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
