"""What every door of tripq holds while it serves: the HTTP API's processes and `tripq grpc` alike.

    open_door(settings) ─> Door: one broker connection pool, the prediction client on it (its
                           result subscription up, or 503/UNAVAILABLE until it is), the admission
                           bounds and the watch that keeps the queue depth current for them
    ... serve ...
    leaving the block ──> the watch stopped, the client closed, the pool closed

A door adds its own on top (the API: the job store and the queue metrics; gRPC: health).
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from redis.asyncio import Redis

from config import Settings
from core.online.admission import Admission, watch_queue_depth
from core.online.client import PredictionClient, connect_broker

# How long opening waits for the result subscription before serving (refusals until it is up).
SUBSCRIBE_WAIT_S = 2.0


@dataclass(frozen=True, slots=True)
class Door:
    """The parts a serving process shares between its requests."""

    broker: Redis  # one connection pool, shared by predictions and whatever else the door does
    predictor: PredictionClient
    admission: Admission


@contextlib.asynccontextmanager
async def open_door(settings: Settings) -> AsyncIterator[Door]:
    """Connect to the broker and start the prediction client and admission; close all on exit."""
    broker = connect_broker(settings)
    predictor = PredictionClient.from_settings(settings, broker=broker)
    admission = Admission(
        max_pending=settings.max_pending_requests, max_queue_depth=settings.queue_max_depth
    )
    try:
        await predictor.start(wait_s=SUBSCRIBE_WAIT_S)
        depth = asyncio.create_task(watch_queue_depth(predictor.queue_depth, admission))
        try:
            yield Door(broker, predictor, admission)
        finally:
            depth.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await depth
    finally:
        await predictor.close()
        await broker.aclose()
