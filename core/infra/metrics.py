"""Prometheus metrics of the API, and how /metrics reads them (the workers': core.worker.metrics).

The API runs as several gunicorn processes behind one port, so its metrics live in
prometheus_client's multiprocess mode: each process writes its own files under
PROMETHEUS_MULTIPROC_DIR (set up by boot/gunicorn_conf.py), and a scrape of any process sums them
all. Gauges there say how they combine: `livemax`, the largest value among live processes (they
all read the same Redis).

    tripq_requests_total{endpoint,code}
    tripq_request_duration_seconds{endpoint}
    tripq_request_phase_seconds{phase}
      per task: queue (send -> a worker starts), inference (in the model),
      delivery (the rest of the round trip: the result back to the API)
    tripq_batch_size                  trips per task sent
    tripq_queue_depth{queue}          tasks waiting
    tripq_queue_oldest_age_seconds{queue}
    tripq_expired_total, tripq_rejected_total{reason}, tripq_failed_total
    tripq_workers_alive, tripq_model_info{version,role}
"""

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from config import prometheus_multiproc_dir

# The API's own registry, so that a worker process, which imports this module for its buckets,
# does not serve the API's metrics as well. Multiprocess collection reads the files instead.
API_REGISTRY = CollectorRegistry()

# Seconds: from a lean 1-trip answer (~2 ms) to the longest deadline a client may ask for (30 s).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 5000, 10_000, 50_000)

# --- API ---
REQUESTS = Counter(
    "tripq_requests",
    "HTTP requests answered, by route and status.",
    ["endpoint", "code"],
    registry=API_REGISTRY,
)
REQUEST_SECONDS = Histogram(
    "tripq_request_duration_seconds",
    "Time from a request's arrival to its reply, in the API.",
    ["endpoint"],
    buckets=LATENCY_BUCKETS,
    registry=API_REGISTRY,
)
PHASE_SECONDS = Histogram(
    "tripq_request_phase_seconds",
    "Where an answered task's round trip went: queue, inference, delivery.",
    ["phase"],
    buckets=LATENCY_BUCKETS,
    registry=API_REGISTRY,
)
BATCH_SIZE = Histogram(
    "tripq_batch_size",
    "Trips per task the API sends.",
    buckets=BATCH_BUCKETS,
    registry=API_REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "tripq_queue_depth",
    "Tasks waiting in a queue.",
    ["queue"],
    multiprocess_mode="livemax",
    registry=API_REGISTRY,
)
QUEUE_OLDEST_AGE = Gauge(
    "tripq_queue_oldest_age_seconds",
    "Age of the oldest task waiting in a queue (0 when empty).",
    ["queue"],
    multiprocess_mode="livemax",
    registry=API_REGISTRY,
)
EXPIRED = Counter(
    "tripq_expired",
    "Requests answered 504: no worker answered in time.",
    registry=API_REGISTRY,
)
REJECTED = Counter(
    "tripq_rejected",
    "Requests refused (4xx, 503), by reason.",
    ["reason"],
    registry=API_REGISTRY,
)
FAILED = Counter(
    "tripq_failed",
    "Requests answered 500: tripq failed while answering.",
    registry=API_REGISTRY,
)
WORKERS_ALIVE = Gauge(
    "tripq_workers_alive",
    "Workers whose heartbeat is fresh.",
    multiprocess_mode="livemax",
    registry=API_REGISTRY,
)
MODEL_INFO = Gauge(
    "tripq_model_info",
    "1 for each model version the routing names (role: current or canary).",
    ["version", "role"],
    multiprocess_mode="livemax",
    registry=API_REGISTRY,
)

_QUEUE, _INFERENCE, _DELIVERY = (
    PHASE_SECONDS.labels(p) for p in ("queue", "inference", "delivery")
)

_reply_series: dict[tuple[str, int], tuple[Any, Any]] = {}


# What a reply was, when not an answer (apps.middleware tells it from the HTTP status): a
# timeout, a failure, or else the reason a request was refused.
EXPIRED_REPLY = "expired"
FAILED_REPLY = "failed"


def record_reply(endpoint: str, code: int, seconds: float, outcome: str | None = None) -> None:
    """Count one reply by route and status `code`; `outcome` says what it was when not an
    answer: EXPIRED_REPLY, FAILED_REPLY, or the reason of a refusal."""
    series = _reply_series.get((endpoint, code))
    if series is None:  # resolving labels costs more than counting: once per route and status
        series = REQUESTS.labels(endpoint, str(code)), REQUEST_SECONDS.labels(endpoint)
        _reply_series[(endpoint, code)] = series
    count, seconds_of = series
    count.inc()
    seconds_of.observe(seconds)
    if outcome is None:
        return
    if outcome == EXPIRED_REPLY:
        EXPIRED.inc()
    elif outcome == FAILED_REPLY:
        FAILED.inc()
    else:
        REJECTED.labels(outcome).inc()


def record_phases(round_trip_s: float, queue_ms: float, inference_ms: float) -> None:
    """Split an answered task's round trip into queue wait, inference and result delivery."""
    queue_s, inference_s = queue_ms / 1000, inference_ms / 1000
    _QUEUE.observe(queue_s)
    _INFERENCE.observe(inference_s)
    _DELIVERY.observe(max(0.0, round_trip_s - queue_s - inference_s))


def render() -> bytes:
    """The Prometheus text of this process, or of every API process in multiprocess mode."""
    if prometheus_multiproc_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(API_REGISTRY)
