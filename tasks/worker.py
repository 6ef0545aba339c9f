"""A worker's lifecycle, wired to Celery's signals: logging and tracing at boot, services once
ready, a span per task when tracing, a goodbye (and the last spans) at exit.

Once ready, a worker loads its model and starts the services of core.worker on their own threads
(greenlets under gevent): its heartbeat, its routing follower, the sweep that gives a dead
worker's unacknowledged tasks back to their queue, and the sweep of the queues of versions no
longer served. Everything is made lazily, once per process
(core.worker.process): importing this module opens no connection.
"""

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

import gevent
from celery.signals import (
    setup_logging,
    task_postrun,
    task_prerun,
    task_revoked,
    worker_init,
    worker_ready,
    worker_shutdown,
)
from celery.worker.consumer import Consumer
from gevent import monkey
from kombu.utils import functional as kombu_functional
from loguru import logger

from config import get_settings
from core.errors import ModelError
from core.infra import otel
from core.infra.logs import configure_logging
from core.worker import metrics as worker_metrics
from core.worker.follower import RoutingFollower
from core.worker.heartbeat import Heartbeat, say_goodbye
from core.worker.process import broker_client, build_shelf, job_runner, serve_metrics, stopping
from core.worker.restorer import AbandonedTaskRestorer
from core.worker.sweeper import StrandedTaskSweeper
from tasks.offload import run_off_hub, set_offload_threads, show_warnings_on_hub

settings = get_settings()
# The process's model shelf: it loads nothing until the worker is ready (or a task asks).
model_shelf = build_shelf(run_off_hub)

# Longest wait between two attempts to reach a lost broker (see PromptReconnectConsumer).
RECONNECT_EVERY_S = 1.0


def _make_kombu_retries_cooperative() -> None:
    """Let kombu's retry loop wait as a greenlet under gevent, not as the whole process.

    With `--pool gevent` Celery monkey-patches at start-up, and gevent, while it patches
    threading, looks at Celery's lazy objects, which imports kombu before `time` is patched:
    kombu's retry loop (every broker reconnect, and the sweep below) keeps the blocking
    time.sleep. Each second it waited froze the whole worker, heartbeat and running tasks
    included, and a sweep's two-second wait delayed the consumer's reconnect after a Redis restart.
    """
    if monkey.is_module_patched("time"):
        kombu_functional.sleep = gevent.sleep  # type: ignore[attr-defined]


_make_kombu_retries_cooperative()


class PromptReconnectConsumer(Consumer):  # type: ignore[misc]
    """Celery's task consumer, retrying a lost broker every second rather than backing off to 30 s.

    Celery reconnects with kombu's default schedule (2, 4, 6 ... up to 30 s between attempts)
    and has no setting for it, so after a Redis restart a worker came back seconds after the API
    did, and up to 30 s after a long outage, while the API queued tasks nobody took. A connect
    attempt costs one refused or timed-out socket (REDIS_CONNECT_TIMEOUT_S), so try every second.
    """

    def ensure_connected(self, conn: Any) -> Any:
        """Connect `conn` as Celery does, on tripq's retry schedule."""
        conn.ensure_connection = functools.partial(
            conn.ensure_connection,
            interval_start=RECONNECT_EVERY_S / 2,
            interval_step=RECONNECT_EVERY_S / 2,
            interval_max=RECONNECT_EVERY_S,
        )
        return super().ensure_connected(conn)


@setup_logging.connect  # type: ignore[untyped-decorator]
def _configure_logging(**_: Any) -> None:
    configure_logging(
        "worker",
        settings.log_dir / "tasks" / "trip",
        level=settings.log_level,
        json_lines=settings.log_json,
    )
    # Celery logs every task received and its whole result at INFO; tripq keeps payloads out of
    # INFO logs, and one line per task would cost more than the prediction itself.
    if settings.log_level != "DEBUG":
        for name in ("celery.app.trace", "celery.worker.strategy"):
            logging.getLogger(name).setLevel(logging.WARNING)


@worker_init.connect  # type: ignore[untyped-decorator]
def _start_tracing(sender: Any, **_: Any) -> None:
    """Trace this process's tasks, when OTEL_EXPORTER_OTLP_ENDPOINT says where to: each task a
    span, and storing its result (its delivery to the API) a span inside it."""
    if not otel.start_tracing(settings, "worker"):
        return
    # Celery sends no signal around storing a result, and the backend's class depends on the URL
    # (redis, rediss, sentinel): so its one instance in this process is wrapped.
    backend = sender.app.backend
    backend.store_result = otel.traced_result_store(backend.store_result)
    # Connected only when tracing: Celery skips sending a signal that nobody receives.
    task_prerun.connect(_start_task_span, weak=False)
    task_postrun.connect(_end_task_span, weak=False)


def _start_task_span(task_id: str, task: Any, **_: Any) -> None:
    otel.start_task_span(task_id, task.name, task.request)


def _end_task_span(task_id: str, state: str | None = None, retval: object = None, **_: Any) -> None:
    otel.end_task_span(task_id, state, retval)


@worker_ready.connect  # type: ignore[untyped-decorator]
def _on_ready(sender: Any, **_: Any) -> None:
    """Load the model, then start the heartbeat, the routing follower, the restorer and the
    sweeper of stranded tasks."""
    name = sender.hostname
    set_offload_threads(settings.inference_threads)
    show_warnings_on_hub()
    try:
        model = model_shelf.get()
        logger.info("model loaded", worker=name, model_version=model.version)
    except ModelError as exc:
        # The worker stays up so that readiness can say what is wrong; its tasks fail cleanly.
        logger.error("no usable model", worker=name, error=exc.message)
    serve_metrics(name)
    client = broker_client()
    # Follow the routing once before the first heartbeat: a worker that says it holds a version
    # already takes that version's tasks.
    follower = RoutingFollower(
        sender, client, model_shelf, queues=(settings.queue, settings.job_queue)
    )
    follower.follow()
    concurrency = int(sender.controller.concurrency) if sender.controller else 0
    heartbeat = Heartbeat(
        client,
        model_shelf,
        name=name,
        concurrency=concurrency,
        interval_s=settings.worker_heartbeat_s,
    )
    start_service("tripq-heartbeat", heartbeat.run)
    start_service("tripq-restore", AbandonedTaskRestorer(sender.app).run)
    start_service("tripq-routing", follower.run)
    sweeper = StrandedTaskSweeper(
        client,
        job_runner(),
        queues=(settings.queue, settings.job_queue),
        worker_ttl_s=settings.worker_ttl_s,
        name=name,
    )
    start_service("tripq-sweep", sweeper.run)


def start_service(name: str, run: Callable[[threading.Event], None]) -> None:
    """Run a service's loop until the worker stops: a native thread under a non-gevent pool, a
    greenlet under gevent (threading is patched)."""
    threading.Thread(target=run, args=(stopping,), name=name, daemon=True).start()


@task_postrun.connect  # type: ignore[untyped-decorator]
def _count_task(sender: Any = None, state: str | None = None, **_: Any) -> None:
    worker_metrics.WORKER_TASKS.labels(
        getattr(sender, "name", "unknown"), (state or "unknown").lower()
    ).inc()


@task_revoked.connect  # type: ignore[untyped-decorator]
def _count_revoked(request: Any = None, expired: bool = False, **_: Any) -> None:
    task = getattr(request, "task", None) or getattr(request, "name", None) or "unknown"
    worker_metrics.WORKER_TASKS.labels(task, "expired" if expired else "revoked").inc()


@worker_shutdown.connect  # type: ignore[untyped-decorator]
def _on_shutdown(sender: Any, **_: Any) -> None:
    stopping.set()
    say_goodbye(broker_client(), sender.hostname)
    otel.stop_tracing()
