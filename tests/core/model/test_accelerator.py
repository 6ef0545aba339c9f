"""The GPU path: the gbm's features and trees as PyTorch tensors give the CPU path's answers.

Everything here runs on PyTorch's CPU device, so the path is tested without a GPU; on a machine
with one, `TRIPQ_TEST_DEVICE=cuda` runs the same tests there (bench/gpu_check.sh does).
"""

import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from core.errors import ModelError
from core.model.artifact import TripModel, load_model
from core.model.device import DevicePlan, resolve_device
from core.model.registry import read_current
from core.model.shelf import ModelShelf
from core.model.tlc import read_trips
from core.model.trees import check_same
from core.trip.contract import DISTANCE, DROPOFF_ZONE, PICKUP_TIME, PICKUP_ZONE
from tests.core.conftest import REPO_ROOT
from tests.support import SHARED_DATA

MODELS = REPO_ROOT / "repo" / "models"
DEVICE = os.environ.get("TRIPQ_TEST_DEVICE", "cpu")
VALIDATION = SHARED_DATA / "green_tripdata_2021-02.parquet"
TOLERANCE = 1e-4  # minutes (issue #18)
GPU = torch.cuda.is_available()
# How a model names its device: `cpu` is the CPU path, tensors on the CPU are `torch-cpu`.
NAME = f"torch-{DEVICE}" if DEVICE == "cpu" else str(torch.device(DEVICE))


@pytest.fixture(scope="module")
def cpu_model() -> TripModel:
    return load_model(MODELS / read_current(MODELS))


@pytest.fixture(scope="module")
def device_model() -> TripModel:
    """The default gbm with every call of one trip or more on DEVICE."""
    model = load_model(MODELS / read_current(MODELS))
    model.use_device(DEVICE, min_trips=1)
    return model


@pytest.fixture(scope="module")
def validation() -> pd.DataFrame:
    if not VALIDATION.is_file():
        pytest.skip(f"the validation month is absent: {VALIDATION} (see SOURCE.md there)")
    return read_trips(VALIDATION)


def test_the_device_gives_the_cpu_paths_answers_on_the_validation_month(
    cpu_model: TripModel, device_model: TripModel, validation: pd.DataFrame
) -> None:
    pu, do = list(validation[PICKUP_ZONE]), list(validation[DROPOFF_ZONE])
    miles = list(validation[DISTANCE])
    seconds = validation[PICKUP_TIME].to_numpy(np.float64)

    # With their pickup times (the timed trees), without (the untimed ones), and both in a call.
    mixed = seconds.copy()
    mixed[::3] = np.nan
    for times in (list(seconds), None, list(mixed)):
        expected = cpu_model.predict_columns(pu, do, miles, times)
        got = device_model.predict_columns(pu, do, miles, times)

        np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)
    assert device_model.device == NAME


def test_the_device_answers_odd_trips_as_the_cpu_does(
    cpu_model: TripModel, device_model: TripModel
) -> None:
    # Unknown and malformed zones, unusable and capped distances, a holiday, times and none.
    pu: list[Any] = [130, 0, 266, -4, "74", "abc", 2.5, 130, 7, 264, 130, 130]
    do: list[Any] = [250, 250, 130, 74, "42", 1, 41, 130, 7, 265, 250, 250]
    miles = [3.0, 1.0, 2.0, float("nan"), -1.0, 150.0, 0.0, 0.2, 1e9, float("inf"), 3.0, 3.0]
    new_year = 1_609_459_200.0 + 9 * 3600  # 2021-01-01 09:00, a federal holiday
    seconds: list[float | None] = [None, new_year, 1_612_530_000.0, None] * 3
    seconds[10] = 4_133_894_000.0  # late in 2100

    expected = cpu_model.predict_columns(pu, do, miles, seconds)
    got = device_model.predict_columns(pu, do, miles, seconds)

    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert device_model.predict_columns([], [], [], None) == []


def test_calls_below_the_threshold_stay_on_the_cpu(cpu_model: TripModel) -> None:
    model = load_model(MODELS / read_current(MODELS))
    model.use_device(DEVICE, min_trips=64)

    assert model.device_of(63) == "cpu"
    assert model.device_of(64) == model.device_of(10_000) == NAME
    trips = ([130] * 63, [250] * 63, [3.0] * 63, None)
    assert model.predict_columns(*trips) == cpu_model.predict_columns(*trips)  # the same path


def test_a_baseline_stays_on_the_cpu() -> None:
    baseline = load_model(MODELS / "baseline-2021-01")

    with pytest.raises(ModelError, match="no gbm"):
        baseline.use_device(DEVICE, min_trips=1)
    assert baseline.device == baseline.device_of(10**6) == "cpu"


def test_answers_that_differ_are_refused() -> None:
    reference = np.array([10.0, 20.0, 30.0])

    check_same(reference + 1e-7, reference, "the answers on cuda:0")
    with pytest.raises(ModelError, match=r"the answers on cuda:0 differ .* by 0\.01 minutes"):
        check_same(reference + np.array([0, 0.01, 0]), reference, "the answers on cuda:0")
    with pytest.raises(ModelError, match="by nan minutes"):
        check_same(np.array([10.0, np.nan, 30.0]), reference, "the answers on cuda:0")


def test_an_unknown_device_is_refused_before_it_serves() -> None:
    model = load_model(MODELS / read_current(MODELS))

    with pytest.raises(ModelError, match="cannot put the model on"):
        model.use_device("no-such-device", min_trips=1)
    assert model.device == "cpu"


# --- INFERENCE_DEVICE ----------------------------------------------------------------------------


def test_cpu_and_auto_without_a_driver_resolve_to_the_cpu_quietly(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        assert resolve_device("cpu") is None
        assert resolve_device("auto", driver=tmp_path / "nvidiactl") is None
    assert warned == []


def test_auto_on_a_machine_without_a_driver_does_not_import_pytorch(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from core.model.device import resolve_device; "
        f"print(resolve_device('auto', driver=Path({str(tmp_path / 'none')!r})), "
        "'torch' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    assert done.stdout.split() == ["None", "False"]
    assert done.stderr == ""


@pytest.mark.skipif(GPU, reason="this machine has a GPU")
def test_auto_with_a_driver_but_no_gpu_is_the_cpu_and_cuda_is_refused(tmp_path: Path) -> None:
    driver = tmp_path / "nvidiactl"
    driver.touch()

    assert resolve_device("auto", driver=driver) is None
    with pytest.raises(ModelError, match=r"INFERENCE_DEVICE=cuda, but PyTorch sees 0 GPU\(s\)"):
        resolve_device("cuda", driver=driver)
    with pytest.raises(ModelError, match="INFERENCE_DEVICE=cuda:1"):
        resolve_device("cuda:1", driver=driver)


@pytest.mark.skipif(not GPU, reason="no GPU here: run with a GPU (bench/gpu_check.sh)")
def test_cuda_resolves_to_a_gpu_pytorch_sees() -> None:
    assert resolve_device("cuda") == "cuda:0"
    assert resolve_device("auto") == "cuda:0"
    with pytest.raises(ModelError, match="PyTorch sees"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_a_shelf_places_each_gbm_as_the_machine_allows() -> None:
    shelf = ModelShelf(MODELS, None, devices=DevicePlan("auto", min_trips=1000))
    version = shelf.get().version
    shelf.get("baseline-2021-01")

    assert shelf.devices == {version: "cuda:0" if GPU else "cpu", "baseline-2021-01": "cpu"}


@pytest.mark.skipif(GPU, reason="this machine has a GPU")
def test_a_shelf_asked_for_a_gpu_it_lacks_loads_no_gbm_and_says_why() -> None:
    shelf = ModelShelf(MODELS, None, devices=DevicePlan("cuda", min_trips=1000))

    with pytest.raises(ModelError, match="INFERENCE_DEVICE=cuda"):
        shelf.get()
    assert shelf.get("baseline-2021-01").device == "cpu"  # a baseline needs no GPU
