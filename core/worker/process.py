"""What one worker process holds, each made once, on first use: never at import.

A module that opens a connection when it loads opens it in every process that imports it (the
celery CLI, a test collecting its modules), before settings are final; here each resource is
made by the first caller in the process and shared by all its threads and greenlets after.
"""

import functools
import threading

import redis
from loguru import logger
from prometheus_client import start_http_server

from config import get_settings
from core.infra.redis_clients import sync_client
from core.jobs.delivery import Lookup, WebhookDelivery, system_lookup
from core.jobs.execution import JobExecution
from core.jobs.store import JobRunner
from core.model.device import DevicePlan
from core.model.shelf import ModelShelf, Offload
from core.model.trees import TreeBuild

# Set when the worker shuts down: its background threads end.
stopping = threading.Event()


@functools.cache
def broker_client() -> redis.Redis:
    """A blocking client of the broker's Redis, shared by this process's threads."""
    settings = get_settings()
    return sync_client(settings, settings.broker_url)


def build_shelf(offload: Offload) -> ModelShelf:
    """Make the process's model shelf (it loads nothing until asked), computing via `offload`."""
    settings = get_settings()
    return ModelShelf(
        settings.artifact_dir,
        settings.serving_version,
        offload=offload,
        trees=TreeBuild(settings.tree_compiler, settings.tree_cache_dir),
        devices=DevicePlan(settings.inference_device, settings.accelerator_min_batch),
    )


@functools.cache
def job_runner() -> JobRunner:
    """The process's side of the jobs in Redis: claim, finish, settle and abandon them."""
    settings = get_settings()
    return JobRunner(
        broker_client(),
        result_ttl_s=settings.job_result_ttl_s,
        run_timeout_s=settings.job_run_timeout_s,
    )


@functools.cache
def job_execution(shelf: ModelShelf) -> JobExecution:
    """The process's job runner, predicting with `shelf`."""
    return JobExecution(job_runner(), shelf.predict_columns)


@functools.cache
def webhook_delivery(lookup: Lookup = system_lookup) -> WebhookDelivery:
    """The process's webhook deliverer, resolving names with `lookup`."""
    return WebhookDelivery(broker_client(), get_settings(), lookup=lookup)


def serve_metrics(hostname: str) -> None:
    """Serve this process's Prometheus metrics on WORKER_METRICS_HOST, at port
    WORKER_METRICS_PORT + its index - 1."""
    settings = get_settings()
    if not settings.worker_metrics_port:
        return
    index = hostname.split("@", 1)[0].removeprefix("trip")
    port = settings.worker_metrics_port + (int(index) - 1 if index.isdigit() else 0)
    # Only where configured (loopback by default): the page names model versions and load, and
    # its server is not one to expose to every network the host is on.
    host = settings.worker_metrics_host
    try:
        start_http_server(port, addr=host)
    except OSError as exc:  # the worker serves on without metrics rather than not at all
        logger.error("metrics port unavailable", host=host, port=port, error=str(exc))
        return
    logger.info("metrics served", host=host, port=port)
