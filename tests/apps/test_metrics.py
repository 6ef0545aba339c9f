"""Observability over real processes: /metrics of the API (summed over its gunicorn processes),
a worker's metrics port, and the request id that follows a request into both processes' logs."""

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from config import PROJECT_ROOT
from core.model.device import resolve_device
from core.model.registry import read_current
from tests.support import (
    Service,
    free_port,
    start_api_processes,
    start_worker,
    tripq_env,
    wait_until,
)

TRIP = {"request_id": "m1", "PULocationID": 130, "DOLocationID": 250, "trip_distance": 3.0}
IDLE_JOBS = "metrics.idle.jobs"  # the API's job queue: no worker reads it
ANSWERED = 12
DEFAULT_VERSION = read_current(PROJECT_ROOT / "repo" / "models")

Page = dict[tuple[str, frozenset[tuple[str, str]]], float]  # (sample name, labels) -> value


class Platform:
    """One worker with a metrics port, and the API with two processes."""

    def __init__(self, base: str, worker_metrics: str, log_dir: Path) -> None:
        self.base = base
        self.worker_metrics = worker_metrics
        self.log_dir = log_dir


@pytest.fixture(scope="module")
def platform(redis_url: str, log_dir: Path) -> Iterator[Platform]:
    metrics_port = free_port()
    worker = start_worker(tripq_env(redis_url, log_dir, worker_metrics_port=metrics_port), log_dir)
    api: Service | None = None
    try:
        api, base = start_api_processes(
            tripq_env(redis_url, log_dir, job_queue=IDLE_JOBS), log_dir, 2
        )
        yield Platform(base, f"http://127.0.0.1:{metrics_port}/metrics", log_dir)
    finally:
        if api is not None:
            api.stop()
        worker.stop()


def samples(url: str) -> Page:
    """Read a Prometheus text page."""
    text = httpx.get(url, timeout=5).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(page: Page, name: str, **labels: str) -> float:
    return page.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def traffic(platform: Platform) -> Page:
    """Send answered, invalid and async requests, each on its own connection (so both API
    processes take some); return the API's metrics afterwards."""
    for i in range(ANSWERED):
        reply = httpx.post(f"{platform.base}/v1/trip/predict", json={**TRIP, "request_id": f"m{i}"})
        assert reply.status_code == 200, reply.text
    bad = httpx.post(f"{platform.base}/v1/trip/predict", json={**TRIP, "PULocationID": 0})
    assert bad.status_code == 400
    job = httpx.post(f"{platform.base}/v1/trip/jobs", json=TRIP)
    assert job.status_code == 202
    url = f"{platform.base}/metrics"
    wait_until(
        lambda: value(samples(url), "tripq_queue_oldest_age_seconds", queue=IDLE_JOBS) >= 1.0,
        15,
        "the queued job's age to show",
    )
    return samples(url)


def test_requests_are_counted_once_across_the_api_processes(traffic: Page) -> None:
    predict = "/v1/trip/predict"

    assert value(traffic, "tripq_requests_total", endpoint=predict, code="200") == ANSWERED
    assert value(traffic, "tripq_requests_total", endpoint=predict, code="400") == 1
    assert value(traffic, "tripq_rejected_total", reason="invalid") == 1
    assert value(traffic, "tripq_request_duration_seconds_count", endpoint=predict) == ANSWERED + 1
    assert value(traffic, "tripq_expired_total") == value(traffic, "tripq_failed_total") == 0


def test_each_tasks_round_trip_is_split_into_queue_inference_and_delivery(traffic: Page) -> None:
    # One request at a time: one task each.
    for phase in ("queue", "inference", "delivery"):
        assert value(traffic, "tripq_request_phase_seconds_count", phase=phase) == ANSWERED
        assert value(traffic, "tripq_request_phase_seconds_sum", phase=phase) > 0
    assert value(traffic, "tripq_batch_size_count") >= 1
    assert value(traffic, "tripq_batch_size_sum") == ANSWERED


def test_queues_workers_and_model_versions_are_shown(traffic: Page) -> None:
    assert value(traffic, "tripq_queue_depth", queue=IDLE_JOBS) == 1
    assert value(traffic, "tripq_queue_depth", queue="tasks.trip") == 0
    assert value(traffic, "tripq_queue_oldest_age_seconds", queue="tasks.trip") == 0
    assert value(traffic, "tripq_workers_alive") == 1
    assert value(traffic, "tripq_model_info", version=DEFAULT_VERSION, role="current") == 1


def test_a_worker_serves_its_own_metrics(platform: Platform, traffic: Page) -> None:
    page = samples(platform.worker_metrics)

    task = "tasks.trip.tasks.predict_batch"
    assert value(page, "tripq_worker_tasks_total", task=task, outcome="success") >= 1
    assert value(page, "tripq_worker_batch_size_sum") >= ANSWERED
    device = resolve_device("auto") or "cpu"  # INFERENCE_DEVICE=auto: a GPU where there is one
    info = {"version": DEFAULT_VERSION, "evaluator": "compiled", "device": device}
    assert value(page, "tripq_worker_model_info", **info) == 1
    assert not any(name.startswith("tripq_requests") for name, _ in page)


@pytest.mark.parametrize("sent", [None, "bad id with spaces", "x" * 129])
def test_a_request_without_a_usable_id_gets_a_new_one(platform: Platform, sent: str | None) -> None:
    headers = {} if sent is None else {"X-Request-ID": sent}
    reply = httpx.get(f"{platform.base}/health", headers=headers)

    assert re.fullmatch(r"[0-9a-f]{32}", reply.headers["x-request-id"])


def test_the_request_id_comes_back_and_is_in_the_logs_of_the_api_and_the_worker(
    platform: Platform,
) -> None:
    request_id = "trace-4f1d-7"
    reply = httpx.post(
        f"{platform.base}/v1/trip/predict", json=TRIP, headers={"X-Request-ID": request_id}
    )
    failed = httpx.post(
        f"{platform.base}/v1/trip/predict",
        json={**TRIP, "trip_distance": -1},
        headers={"X-Request-ID": "trace-bad-1"},
    )

    assert reply.headers["x-request-id"] == request_id
    assert failed.headers["x-request-id"] == "trace-bad-1"

    def logged(folder: str) -> bool:
        # Under one name in both processes' lines: trace_id (a list in the worker's batch line).
        return any(
            "'trace_id'" in line and request_id in line
            for p in (platform.log_dir / folder).glob("*.log")
            for line in p.read_text().splitlines()
        )

    wait_until(lambda: logged("apps/api"), 10, "the API to log the request id as trace_id")
    wait_until(lambda: logged("tasks/trip"), 10, "the worker to log the request id as trace_id")
