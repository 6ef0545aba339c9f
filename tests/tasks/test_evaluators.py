"""Each worker names what computes its answers, and where: /ready, `tripq workers`, metrics.

Two real workers share one Redis: one builds (or finds) the compiled trees, the other is given a
compiler that does not exist and a cache of its own, so it must serve on scikit-learn's trees.
The first places its gbm as INFERENCE_DEVICE=auto does (a GPU where there is one), the second is
told `cpu`.
"""

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from config import PROJECT_ROOT
from core.model.device import resolve_device
from core.model.registry import read_current
from tests.support import free_port, start_api, start_workers, tripq_env

DEFAULT_VERSION = read_current(PROJECT_ROOT / "repo" / "models")
TRIP = {"request_id": "e1", "PULocationID": 130, "DOLocationID": 250, "trip_distance": 3.0}


@pytest.fixture(scope="module")
def fleet(
    redis_url: str, log_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A compiling worker (trip1), a worker without a compiler (trip2), and the API."""
    env = tripq_env(redis_url, log_dir)
    metrics_port = free_port()
    without = tripq_env(
        redis_url,
        log_dir,
        tree_compiler="/nonexistent/cc",
        tree_cache_dir=tmp_path_factory.mktemp("trees"),
        inference_device="cpu",
        worker_metrics_port=metrics_port - 1,  # worker index 2 serves on port + 1
    )
    workers = start_workers(env, log_dir, [1]) + start_workers(without, log_dir, [2])
    api, base = start_api(env, log_dir)
    try:
        yield {"base": base, "env": env, "metrics": f"http://127.0.0.1:{metrics_port}/metrics"}
    finally:
        api.stop()
        for worker in workers:
            worker.stop()


def test_ready_names_each_workers_evaluator(fleet: dict[str, Any]) -> None:
    ready = httpx.get(f"{fleet['base']}/ready", timeout=5).json()

    evaluators = {w["name"].split("@")[0]: w["evaluators"] for w in ready["workers"]}
    assert evaluators == {
        "trip1": {DEFAULT_VERSION: "compiled"},
        "trip2": {DEFAULT_VERSION: "scikit-learn"},
    }


def test_ready_names_each_workers_device(fleet: dict[str, Any]) -> None:
    ready = httpx.get(f"{fleet['base']}/ready", timeout=5).json()

    devices = {w["name"].split("@")[0]: w["devices"] for w in ready["workers"]}
    auto = resolve_device("auto") or "cpu"  # this machine: a GPU if it has one
    assert devices == {"trip1": {DEFAULT_VERSION: auto}, "trip2": {DEFAULT_VERSION: "cpu"}}


def test_both_workers_answer_alike(fleet: dict[str, Any]) -> None:
    answers = {
        httpx.post(f"{fleet['base']}/v1/trip/predict", json=TRIP, timeout=10).json()["duration"]
        for _ in range(40)
    }

    # Both evaluators give the same minutes to rounding; a reply never says which one ran.
    assert max(answers) - min(answers) <= 1e-6


def test_tripq_workers_shows_the_evaluator_and_device_columns(fleet: dict[str, Any]) -> None:
    listed = subprocess.run(
        [str(Path(sys.executable).parent / "tripq"), "workers"],
        env={**fleet["env"], "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout

    assert "evaluator" in listed
    assert "device" in listed
    [first] = [line for line in listed.splitlines() if "trip1@" in line]
    [second] = [line for line in listed.splitlines() if "trip2@" in line]
    assert "compiled" in first
    assert "scikit-learn" in second
    assert "cpu" in second


def test_the_worker_without_a_compiler_says_so_in_its_metrics(fleet: dict[str, Any]) -> None:
    page = httpx.get(fleet["metrics"], timeout=5).text

    expected = (
        "tripq_worker_model_info"
        f'{{device="cpu",evaluator="scikit-learn",version="{DEFAULT_VERSION}"}} 1.0'
    )
    assert expected in page
