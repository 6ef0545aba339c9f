"""Prometheus metrics of a worker process, served on WORKER_METRICS_PORT + its index - 1.

tripq_worker_tasks_total{task,outcome}              success, failure, expired, revoked
tripq_worker_inference_seconds                      time in the model, per task
tripq_worker_batch_size                             trips per task
tripq_worker_model_info{version,evaluator,device}   1 for each version held: what runs it, where
"""

from prometheus_client import Counter, Gauge, Histogram

from core.infra.metrics import BATCH_BUCKETS, LATENCY_BUCKETS

WORKER_TASKS = Counter(
    "tripq_worker_tasks", "Tasks a worker ended, by task and outcome.", ["task", "outcome"]
)
WORKER_INFERENCE_SECONDS = Histogram(
    "tripq_worker_inference_seconds",
    "Time a worker spent in the model, per task.",
    buckets=LATENCY_BUCKETS,
)
WORKER_BATCH_SIZE = Histogram(
    "tripq_worker_batch_size", "Trips per task a worker predicted.", buckets=BATCH_BUCKETS
)
WORKER_MODEL_INFO = Gauge(
    "tripq_worker_model_info",
    "1 for each model version this worker holds, with what computes its answers and where its "
    "large calls run.",
    ["version", "evaluator", "device"],
)
