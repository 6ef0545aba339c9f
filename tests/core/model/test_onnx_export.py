"""The ONNX export: the file, served by onnxruntime, gives tripq's own answers."""

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from core.model.artifact import TripModel, load_model
from core.model.onnx_export import OnnxCard, card_path, export_onnx
from core.model.registry import read_current
from core.model.tlc import read_trips
from core.model.training import train_model
from core.trip.contract import DISTANCE, DROPOFF_ZONE, PICKUP_TIME, PICKUP_ZONE
from tests.core.conftest import synthetic_trips, write_zones
from tests.support import SHARED_DATA

MODELS = Path(__file__).resolve().parents[3] / "repo" / "models"
BASELINE = "baseline-2021-01"
VALIDATION = SHARED_DATA / "green_tripdata_2021-02.parquet"
TOLERANCE = 1e-4  # minutes (issue #18)

Exported = tuple[TripModel, ort.InferenceSession, OnnxCard, Path]


def _export(version: str, out: Path, models: Path = MODELS) -> Exported:
    model = load_model(models / version)
    path, card = export_onnx(model, out)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return model, session, card, path


@pytest.fixture(scope="module")
def gbm(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    return _export(read_current(MODELS), tmp_path_factory.mktemp("gbm"))


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    return _export(BASELINE, tmp_path_factory.mktemp("baseline"))


@pytest.fixture(scope="module")
def validation() -> pd.DataFrame:
    if not VALIDATION.is_file():
        pytest.skip(f"the validation month is absent: {VALIDATION} (see SOURCE.md there)")
    return read_trips(VALIDATION)


def _served(session: ort.InferenceSession, **columns: object) -> np.ndarray:
    feeds = {name: np.asarray(values, dtype=np.float64) for name, values in columns.items()}
    [minutes] = session.run(None, feeds)
    served: np.ndarray = np.asarray(minutes, dtype=np.float64)
    return served


def _numbers(column: pd.Series) -> np.ndarray:
    numbers: np.ndarray = pd.to_numeric(column).to_numpy(np.float64)
    return numbers


def test_default_model_file_gives_tripqs_answers_on_the_validation_month(
    gbm: Exported, validation: pd.DataFrame
) -> None:
    model, session, _, _ = gbm
    pu, do, miles = validation[PICKUP_ZONE], validation[DROPOFF_ZONE], validation[DISTANCE]
    seconds = validation[PICKUP_TIME].to_numpy(np.float64)
    served = dict(PULocationID=_numbers(pu), DOLocationID=_numbers(do), trip_distance=miles)

    for times in (seconds, np.full(len(seconds), np.nan)):
        expected = model.predict_columns(list(pu), list(do), list(miles), list(times))
        got = _served(session, **served, pickup_wall_clock_s=times)

        np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)


def test_baseline_file_gives_tripqs_answers_on_the_validation_month(
    baseline: Exported, validation: pd.DataFrame
) -> None:
    model, session, _, _ = baseline
    pu, do, miles = validation[PICKUP_ZONE], validation[DROPOFF_ZONE], validation[DISTANCE]

    expected = model.predict_columns(list(pu), list(do), list(miles))
    got = _served(
        session, PULocationID=_numbers(pu), DOLocationID=_numbers(do), trip_distance=miles
    )

    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)


# Unknown zones (0, past 265, fractional, negative, missing), distances from missing and negative
# to far past the 100-mile cap, and pickup times on holidays, either side of midnight, or absent.
# Floats among the ids, as files hold them: tripq's cleaning reads any number (as Any: its
# signature names the API's int and the files' str).
ZONES: list[Any] = [130, 0, 266, 12.5, -1, np.nan, 1e9, 265, 1, 43]
DROPOFFS = [250, 130, 130, 130, 130, 130, 7, 265, 0, 43]
MILES = [3.0, 0.0, 1e6, 150.0, np.nan, -2.0, np.inf, 0.3, 100.0, 12.0]
NEW_YEAR = 1_609_459_200.0  # 2021-01-01 00:00, a holiday
TIMES = [
    1_612_530_000.0,
    NEW_YEAR,
    NEW_YEAR - 1,
    np.nan,
    1_625_443_200.0 + 3600 * 7.5,  # 2021-07-05 07:30, the observed Independence Day
    1_613_347_199.5,  # 2021-02-14 23:59:59.5
    1_230_768_000.0,  # 2009-01-01
    4_133_894_399.0,  # 2100-12-31 23:59:59
    -86_400.0 * 3.5,
    np.nan,
]


def test_default_model_file_agrees_on_unknown_zones_odd_distances_and_missing_times(
    gbm: Exported,
) -> None:
    model, session, _, _ = gbm
    served = dict(PULocationID=ZONES, DOLocationID=DROPOFFS, trip_distance=MILES)

    for times in (TIMES, [np.nan] * len(TIMES)):
        expected = model.predict_columns(ZONES, DROPOFFS, MILES, times)
        got = _served(session, **served, pickup_wall_clock_s=times)

        np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)


def test_a_model_trained_on_unknown_zones_exports_their_statistics_as_tripq_reads_them(
    tmp_path: Path,
) -> None:
    # TLC files hold zone ids past 265; training keeps those trips, and the features read every
    # pair with an unknown zone at the overall mean, whatever those trips said.
    trips = synthetic_trips(400, seed=3)
    trips.loc[::7, "PULocationID"] = 300
    trips.loc[::5, "DOLocationID"] = 0
    train, valid = tmp_path / "green_tripdata_2023-01.parquet", tmp_path / "valid.parquet"
    trips.to_parquet(train, index=False)
    synthetic_trips(100, seed=4).to_parquet(valid, index=False)
    zones = pd.read_csv(write_zones(tmp_path / "zones.csv"))
    train_model([train], valid, tmp_path / "models" / "unknown-zones", zones=zones)
    model, session, _, _ = _export("unknown-zones", tmp_path / "onnx", tmp_path / "models")
    pu, do = [300, 43, 0, 7], [130, 0, 0, 250]
    miles, times = [2.0, 3.0, 4.0, 5.0], [np.nan, 1_672_600_000.0, np.nan, 1_672_700_000.0]

    expected = model.predict_columns(pu, do, miles, times)
    got = _served(
        session, PULocationID=pu, DOLocationID=do, trip_distance=miles, pickup_wall_clock_s=times
    )

    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)


def test_baseline_file_agrees_on_unknown_zones_and_odd_distances(baseline: Exported) -> None:
    model, session, _, _ = baseline
    # The baseline's weights are keyed by zone ids as tripq formats whole numbers (core.model.
    # recipes): the request contract's ints, so the synthetic ids go to tripq as ints.
    zones = [int(z) if float(z).is_integer() else z for z in np.nan_to_num(ZONES, nan=0.5)]
    miles = [m for m in MILES if np.isfinite(m)] + [1.0, 2.0]

    expected = model.predict_columns(zones, DROPOFFS, miles)
    got = _served(session, PULocationID=zones, DOLocationID=DROPOFFS, trip_distance=miles)

    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)


def test_card_describes_the_file_as_onnxruntime_serves_it(gbm: Exported) -> None:
    model, session, card, path = gbm
    written = OnnxCard.model_validate_json(card_path(path).read_text())

    assert written == card
    assert card.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert card.model_version == model.version
    assert card.model_artifact_sha256 == model.card.artifact_sha256
    assert card.file == path.name
    ran = [(t.name, t.type, t.shape) for t in session.get_inputs()]
    assert ran == [(t.name, f"tensor({t.type})", t.shape) for t in card.inputs]
    assert [t.name for t in card.inputs] == [PICKUP_ZONE, DROPOFF_ZONE, DISTANCE, PICKUP_TIME]
    outputs = [(t.name, t.type, t.shape) for t in session.get_outputs()]
    assert outputs == [(t.name, f"tensor({t.type})", t.shape) for t in card.outputs]
    assert any(PICKUP_TIME in step for step in card.not_expressible)
    assert json.loads(card_path(path).read_text())["opset"] == {"": 18, "ai.onnx.ml": 3}


def test_baseline_file_reads_no_pickup_time(baseline: Exported) -> None:
    _, session, card, _ = baseline

    assert [i.name for i in session.get_inputs()] == [PICKUP_ZONE, DROPOFF_ZONE, DISTANCE]
    assert [t.name for t in card.inputs] == [PICKUP_ZONE, DROPOFF_ZONE, DISTANCE]
