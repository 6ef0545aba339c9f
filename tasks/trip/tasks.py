"""Trip tasks: decode the payload, call the model, encode the prediction.

`predict_batch` is what the API sends (its micro-batches); `predict_ride` is the one-trip task of
the older service's contract, kept for producers that send single trips.
"""

import time
from typing import Any

from loguru import logger

from core.infra import otel, tracing
from core.trip.schemas import BatchPrediction, TripColumns, TripPrediction, TripRequest
from core.worker import metrics as worker_metrics
from tasks.app import app
from tasks.worker import model_shelf


@app.task(name="tasks.trip.tasks.predict_ride")  # type: ignore[untyped-decorator]
def predict_ride(trip: dict[str, Any], sent_at: float) -> dict[str, Any]:
    """Predict the duration of one trip."""
    started = time.time()
    request = TripRequest.model_validate(trip)
    durations, version = model_shelf.predict([request])
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


@app.task(name="tasks.trip.tasks.predict_batch")  # type: ignore[untyped-decorator]
def predict_batch(
    columns: dict[str, Any],
    sent_at: float,
    model_version: str | None = None,
    trace_ids: list[str] | None = None,
    request_ids: list[str] | None = None,
) -> dict[str, Any]:
    """Predict the durations of a batch of trips, given as columns, with one model call.

    `model_version` names the model that must answer (a pinned or canary batch, taken from that
    version's own queue); None means this worker's current model. `trace_ids`: the X-Request-ID
    of each HTTP request the batch answers, for the logs.
    """
    # `request_ids` is the name an API of the previous release sends `trace_ids` under: kept so
    # that its tasks still run during a rolling deploy (remove once no such API is left).
    trace_ids = trace_ids if trace_ids is not None else request_ids
    started = time.time()
    trips = TripColumns.model_validate(columns)
    durations, version = model_shelf.predict_columns(trips, model_version)
    inference_s = time.time() - started
    answer = BatchPrediction(
        durations=durations,
        model_version=version,
        inference_ms=round(inference_s * 1000, 3),
        queue_ms=round(max(0.0, started - sent_at) * 1000, 3),
    )
    otel.annotate(trips=len(durations), model_version=version)
    worker_metrics.WORKER_INFERENCE_SECONDS.observe(inference_s)
    worker_metrics.WORKER_BATCH_SIZE.observe(len(durations))
    logger.info(
        "predicted batch",
        trips=len(durations),
        model_version=version,
        inference_ms=answer.inference_ms,
        queue_ms=answer.queue_ms,
        **{tracing.LOG_FIELD: trace_ids or []},
    )
    return answer.model_dump()
