"""A worker's lifecycle: logging at boot, model and heartbeat once ready, a goodbye at exit."""

import logging
import threading
import time
from typing import Any

import redis
from celery.signals import setup_logging, worker_ready, worker_shutdown
from loguru import logger

from config import get_settings
from core import fleet
from core.errors import ModelError
from core.logs import configure_logging
from core.serving import ModelHolder
from tasks.offload import run_off_hub, set_offload_threads

settings = get_settings()
model_holder = ModelHolder(settings.artifact_dir, settings.serving_version)

_stop = threading.Event()


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
    try:
        model = run_off_hub(model_holder.get)
        logger.info("model loaded", worker=name, model_version=model.version)
    except ModelError as exc:
        # The worker stays up so that readiness can say what is wrong; its tasks fail cleanly.
        logger.error("no usable model", worker=name, error=exc.message)
    concurrency = int(sender.controller.concurrency) if sender.controller else 0
    # A native thread under a non-gevent pool; a greenlet under gevent (threading is patched).
    threading.Thread(
        target=_beat, args=(name, concurrency), name="tripq-heartbeat", daemon=True
    ).start()


@worker_shutdown.connect  # type: ignore[untyped-decorator]
def _on_shutdown(sender: Any, **_: Any) -> None:
    _stop.set()
    try:
        client = _redis()
        client.zrem(fleet.WORKERS_KEY, sender.hostname)
        client.hdel(fleet.WORKERS_INFO_KEY, sender.hostname)
    except redis.RedisError as exc:
        logger.warning("could not remove heartbeat", error=str(exc))


def _redis() -> redis.Redis:
    return redis.Redis.from_url(
        settings.broker_url,
        socket_connect_timeout=settings.redis_connect_timeout_s,
        socket_timeout=settings.redis_socket_timeout_s,
    )


def _beat(name: str, concurrency: int) -> None:
    """Write this worker's heartbeat every interval, surviving Redis outages."""
    client = _redis()
    while not _stop.is_set():
        info = fleet.encode_worker_info(model_holder.loaded_version, concurrency)
        try:
            with client.pipeline(transaction=False) as pipe:
                pipe.zadd(fleet.WORKERS_KEY, {name: time.time()})
                pipe.hset(fleet.WORKERS_INFO_KEY, name, info)
                pipe.execute()
        except redis.RedisError as exc:
            logger.warning("heartbeat failed", worker=name, error=str(exc))
        _stop.wait(settings.worker_heartbeat_s)
