"""A worker's lifecycle: logging at boot, model and heartbeat once ready, a goodbye at exit.

Once ready, a worker also sweeps the broker for messages that a dead worker took and never
acknowledged, and gives them back to their queue (see `_restore_abandoned`).
"""

import functools
import logging
import threading
import time
from typing import Any

import gevent
import redis
from celery.signals import (
    setup_logging,
    task_postrun,
    task_revoked,
    worker_ready,
    worker_shutdown,
)
from celery.worker.consumer import Consumer
from gevent import monkey
from kombu.exceptions import OperationalError
from kombu.utils import functional as kombu_functional
from loguru import logger
from prometheus_client import start_http_server

from config import get_settings
from core.errors import ModelError
from core.infra.logs import configure_logging
from core.infra.redis_clients import sync_client
from core.model.shelf import ModelShelf
from core.model.trees import TreeBuild
from core.online import fleet
from core.online.routing import ROUTING_KEY, Routing, version_queue
from tasks import metrics as worker_metrics
from tasks.offload import run_off_hub, set_offload_threads, show_warnings_on_hub

settings = get_settings()
model_shelf = ModelShelf(
    settings.artifact_dir,
    settings.serving_version,
    offload=run_off_hub,
    trees=TreeBuild(settings.tree_compiler, settings.tree_cache_dir),
)

# Set when the worker shuts down: its background threads end.
stopping = threading.Event()

# How often a worker looks for tasks abandoned by a dead worker: three cheap Redis round trips.
RESTORE_EVERY_S = 2.0
# Longest wait between two attempts to reach a lost broker (see PromptReconnectConsumer).
RECONNECT_EVERY_S = 1.0
# How often a worker reads the routing (core.online.routing): a promotion reaches it within this.
FOLLOW_EVERY_S = 1.0


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


@worker_ready.connect  # type: ignore[untyped-decorator]
def _on_ready(sender: Any, **_: Any) -> None:
    """Load the model, then announce the worker with a heartbeat until it stops."""
    name = sender.hostname
    set_offload_threads(settings.inference_threads)
    show_warnings_on_hub()
    try:
        model = model_shelf.get()
        logger.info("model loaded", worker=name, model_version=model.version)
    except ModelError as exc:
        # The worker stays up so that readiness can say what is wrong; its tasks fail cleanly.
        logger.error("no usable model", worker=name, error=exc.message)
    # Follow the routing once before the first heartbeat: a worker that says it holds a version
    # already takes that version's tasks.
    _serve_metrics(name)
    client, consumed = broker_client(), set[str]()
    _follow_routing(sender, client, consumed)
    concurrency = int(sender.controller.concurrency) if sender.controller else 0
    # A native thread under a non-gevent pool; a greenlet under gevent (threading is patched).
    threading.Thread(
        target=_beat, args=(name, concurrency), name="tripq-heartbeat", daemon=True
    ).start()
    threading.Thread(
        target=_restore_abandoned, args=(sender.app,), name="tripq-restore", daemon=True
    ).start()
    threading.Thread(
        target=_keep_following, args=(sender, client, consumed), name="tripq-routing", daemon=True
    ).start()


def _serve_metrics(hostname: str) -> None:
    """Serve this process's Prometheus metrics on WORKER_METRICS_PORT + its index - 1."""
    if not settings.worker_metrics_port:
        return
    index = hostname.split("@", 1)[0].removeprefix("trip")
    port = settings.worker_metrics_port + (int(index) - 1 if index.isdigit() else 0)
    try:
        start_http_server(port)
    except OSError as exc:  # the worker serves on without metrics rather than not at all
        logger.error("metrics port unavailable", port=port, error=str(exc))
        return
    logger.info("metrics served", port=port)


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
    try:
        client = broker_client()
        client.zrem(fleet.WORKERS_KEY, sender.hostname)
        client.hdel(fleet.WORKERS_INFO_KEY, sender.hostname)
    except redis.RedisError as exc:
        logger.warning("could not remove heartbeat", error=str(exc))


def broker_client() -> redis.Redis:
    """A blocking client of the broker's Redis, shared by this process's threads."""
    return sync_client(settings, settings.broker_url)


def _beat(name: str, concurrency: int) -> None:
    """Write this worker's heartbeat every interval, surviving Redis outages."""
    client = broker_client()
    while not stopping.is_set():
        evaluators = model_shelf.evaluators
        info = fleet.encode_worker_info(model_shelf.loaded_version, evaluators, concurrency)
        worker_metrics.WORKER_MODEL_INFO.clear()
        for version, evaluator in evaluators.items():
            worker_metrics.WORKER_MODEL_INFO.labels(version, evaluator).set(1)
        try:
            with client.pipeline(transaction=False) as pipe:
                pipe.zadd(fleet.WORKERS_KEY, {name: time.time()})
                pipe.hset(fleet.WORKERS_INFO_KEY, name, info)
                pipe.execute()
        except redis.RedisError as exc:
            logger.warning("heartbeat failed", worker=name, error=str(exc))
        stopping.wait(settings.worker_heartbeat_s)


def _follow_routing(consumer: Any, client: redis.Redis, consumed: set[str]) -> None:
    """Hold the models the routing names, and take tasks from the queue of each one held.

    A version's queue is consumed only once its model is loaded, and no longer once it is
    dropped: a task pinned to a version never reaches a worker without it. `consumed` names the
    versions whose queues are consumed, and is kept up to date.
    """
    try:
        routing = Routing.from_hash(client.hgetall(ROUTING_KEY))
    except redis.RedisError:
        return  # the last routing stays in force; the consumer reconnects on its own
    model_shelf.follow(routing)
    held = set(model_shelf.versions)
    for version in sorted(held - consumed):
        consumer.add_task_queue(version_queue(settings.queue, version))
        consumed.add(version)
    for version in sorted(consumed - held):
        consumer.cancel_task_queue(version_queue(settings.queue, version))
        consumed.discard(version)


def _keep_following(consumer: Any, client: redis.Redis, consumed: set[str]) -> None:
    while not stopping.wait(FOLLOW_EVERY_S):
        try:
            _follow_routing(consumer, client, consumed)
        except Exception:  # a broker hiccup must not end the following for good
            logger.exception("could not follow the model routing; retrying")


def _restore_abandoned(app: Any) -> None:
    """Put back on their queue the tasks left unacknowledged past the visibility timeout.

    Kombu's Redis transport keeps every message a worker has taken in the `unacked` hash until
    the worker acknowledges it (after the task ran: acks_late), and puts back those older than
    `visibility_timeout`, so that the tasks of a SIGKILLed worker are not lost. But it sweeps
    only from a prefork worker's event loop, or when a blocking poll finds nothing to read,
    which never happens to a gevent worker: its BRPOP answers every second, empty or not. A
    killed worker's tasks stayed in `unacked` for good. Every worker therefore sweeps here, with
    kombu's own `restore_visible`; its Redis mutex and per-message transaction keep two workers
    from putting one message back twice.
    """
    connection = app.connection_for_read()
    try:
        while not stopping.wait(RESTORE_EVERY_S):
            try:
                connection.default_channel.qos.restore_visible(num=None, interval=1)
            except _restore_errors(connection) as exc:
                # The consumer reconnects on its own; this loop tries again next round.
                logger.warning("could not restore abandoned tasks", error=str(exc))
                connection.collect()
    finally:
        connection.release()


def _restore_errors(connection: Any) -> tuple[type[BaseException], ...]:
    """Name the errors of an unreachable broker: kombu's own, and its transport's."""
    return (OperationalError, *connection.connection_errors, *connection.channel_errors)
