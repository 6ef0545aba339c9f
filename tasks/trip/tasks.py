"""Trip tasks: decode the payload, call the model, encode the prediction."""

import time
from typing import Any

from loguru import logger

from core.schemas import TripPrediction, TripRequest
from tasks.app import app
from tasks.offload import run_off_hub
from tasks.worker import model_holder


@app.task(name="tasks.trip.tasks.predict_ride")  # type: ignore[untyped-decorator]
def predict_ride(trip: dict[str, Any], sent_at: float) -> dict[str, Any]:
    """Predict the duration of one trip."""
    started = time.time()
    request = TripRequest.model_validate(trip)
    durations, version = run_off_hub(model_holder.predict, [request])
    inference_ms = (time.time() - started) * 1000
    prediction = TripPrediction(
        request_id=request.request_id,
        duration=durations[0],
        model_version=version,
        inference_ms=round(inference_ms, 3),
        queue_ms=round(max(0.0, started - sent_at) * 1000, 3),
    )
    logger.debug("predicted", request_id=request.request_id, ms=prediction.inference_ms)
    return prediction.model_dump()
