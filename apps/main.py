"""tripq's HTTP API.

    client ── POST /v1/trip/predict ──> API (this process, asyncio)
                                         │ LPUSH task (expires = deadline)
                                         v
                                   Redis list "tasks.trip" ──> Celery worker (gevent) ──> model
                                                                      │ SET + PUBLISH result
    client <── reply {reply_code, duration} <── API <── PSUBSCRIBE ───┘

Each API process sends tasks without Celery's producer and awaits every result through one pattern
subscription (see core.online); a request that outlives its deadline gets reply_code 2.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Any

from fastapi import FastAPI
from loguru import logger

from apps.docs_assets import install_docs
from apps.errors import install_error_handlers
from apps.middleware import BodySizeLimit, RequestTracking
from apps.routers import health, jobs, trip
from config import Settings, get_settings
from core.infra import otel
from core.infra.logs import configure_logging
from core.jobs.schemas import JobBatch, JobTrip
from core.jobs.store import JobStore
from core.model.registry import serving_version
from core.online.admission import export_queue_metrics
from core.online.door import open_door
from core.trip.schemas import BatchRequest, TripRequest

# How often each API process reads the queues for /metrics (depth, oldest task's age).
_QUEUE_METRICS_EVERY_S = 1.0


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API; its lifespan owns the broker connection and the prediction client."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(
            "api",
            settings.log_dir / "apps" / "api",
            level=settings.log_level,
            json_lines=settings.log_json,
            access_log=settings.api_access_log,
        )
        # Here, in each API process after gunicorn forked it: an exporter thread of its own.
        otel.start_tracing(settings, "api")
        app.state.settings = settings
        app.state.api_keys = settings.api_key_set
        app.state.model_version = serving_version(settings.artifact_dir, settings.serving_version)
        try:
            async with open_door(settings) as door:
                app.state.predictor = door.predictor
                app.state.admission = door.admission
                # The broker's pool, shared by predictions and async jobs.
                app.state.job_store = JobStore(door.broker, settings, origin=door.predictor.origin)
                metrics = asyncio.create_task(
                    export_queue_metrics(door.predictor.export_queues, _QUEUE_METRICS_EVERY_S)
                )
                logger.info("api ready", model_version=app.state.model_version)
                try:
                    yield
                finally:
                    metrics.cancel()
        finally:
            otel.stop_tracing()  # exports the spans still held

    app = FastAPI(
        title="tripq",
        version=version("tripq"),
        summary="How long will this NYC taxi trip take? Queue-backed predictions over HTTP.",
        description=__doc__,
        lifespan=lifespan,
        # Served by install_docs instead, with their assets: FastAPI's pages load them from CDNs.
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    # Added last, so outermost: it sees every reply, the body limit's 413 included.
    app.add_middleware(RequestTracking)
    install_error_handlers(app)
    app.include_router(trip.router)
    app.include_router(jobs.router)
    app.include_router(health.router)
    install_docs(app)
    _document_request_schemas(app)
    return app


def _document_request_schemas(app: FastAPI) -> None:
    """Publish the request models that routes read themselves among the OpenAPI components."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = generate()
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            for model in (TripRequest, BatchRequest, JobTrip, JobBatch):
                schemas[model.__name__] = model.model_json_schema(
                    ref_template="#/components/schemas/{model}"
                )
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


app = create_app()
