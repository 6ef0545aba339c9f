"""The gRPC process: grpcio's asyncio server with tripq.v1.TripService, health and reflection.

    client ── tripq.v1.TripService/Predict ──> this process (grpc.aio; one event loop)
                                                │ the same PredictionClient and Admission as the
                                                │ HTTP API's lifespan makes (apps.main)
                                                v
                                          Redis list "tasks.trip" ──> Celery worker ──> model

grpc.health.v1, as the API's /health and /ready do, says two things:

    ""                     SERVING while the process serves; NOT_SERVING once it drains
                           (what the orchestrators probe: it never waits on Redis)
    tripq.v1.TripService   SERVING once Redis answers and results are listened for,
                           NOT_SERVING while they are not, and once the process drains

Server reflection lists the services, so grpcurl and similar tools need no proto file.
"""

import asyncio
import contextlib
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # type: ignore[import-untyped]
from grpc_reflection.v1alpha import reflection  # type: ignore[import-untyped]
from loguru import logger

from apps.grpc.protos.tripq.v1 import trip_pb2_grpc
from apps.grpc.servicer import SERVICE, TripServicer
from config import Settings
from core.infra import otel
from core.infra.logs import configure_logging
from core.model.registry import serving_version
from core.online.client import PredictionClient
from core.online.door import Door, open_door

_HEALTH_EVERY_S = 0.25
# In-flight calls finish within this once SIGTERM comes (at most their deadline), then are cut.
DRAIN_EXTRA_S = 1.0


def make_server(settings: Settings) -> grpc.aio.Server:
    """Build the server: messages up to MAX_BODY_BYTES, and one process per port."""
    return grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            # grpcio lets a second server share a bound port by default; a busy port must fail.
            ("grpc.so_reuseport", 0),
        ]
    )


async def watch_health(predictor: PredictionClient, servicer: health.aio.HealthServicer) -> None:
    """Say the service is SERVING while the prediction client can send work, NOT_SERVING while
    it cannot."""
    serving: bool | None = None
    while True:
        available = predictor.available
        if available != serving:
            await servicer.set(SERVICE, _status(available))
            serving = available
        await asyncio.sleep(_HEALTH_EVERY_S)


def _status(serving: bool) -> int:
    if serving:
        return int(health_pb2.HealthCheckResponse.SERVING)
    return int(health_pb2.HealthCheckResponse.NOT_SERVING)


async def serve(settings: Settings, host: str, port: int) -> None:
    """Serve tripq.v1.TripService on host:port until SIGTERM or SIGINT."""
    configure_logging(
        "grpc",
        settings.log_dir / "apps" / "grpc",
        level=settings.log_level,
        json_lines=settings.log_json,
    )
    otel.start_tracing(settings, "grpc")
    try:
        async with open_door(settings) as door:
            await _serve(settings, door, host, port)
    finally:
        otel.stop_tracing()


async def _serve(settings: Settings, door: Door, host: str, port: int) -> None:
    """Serve through `door` until SIGTERM or SIGINT, then drain."""
    server = make_server(settings)
    version = serving_version(settings.artifact_dir, settings.serving_version)
    trip_pb2_grpc.add_TripServiceServicer_to_server(
        TripServicer(settings, door.predictor, door.admission, version), server
    )
    health_servicer = health.aio.HealthServicer()
    await health_servicer.set("", _status(True))
    await health_servicer.set(SERVICE, _status(False))  # until the watch says otherwise
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    services = [SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(services, server)
    server.add_insecure_port(f"{host}:{port}")
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    health_watch = asyncio.create_task(watch_health(door.predictor, health_servicer))
    try:
        await server.start()
        logger.info("grpc ready", address=f"{host}:{port}", service=SERVICE)
        await stopping.wait()
        logger.info("grpc stopping")
    finally:
        health_watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await health_watch
    await health_servicer.enter_graceful_shutdown()  # NOT_SERVING, all, from now on
    await server.stop(settings.request_timeout_max_s + DRAIN_EXTRA_S)
