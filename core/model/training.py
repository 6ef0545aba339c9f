"""Trip files in, model directories out: train, evaluate, report.

    green_tripdata_2021-01.parquet
        ─ read_trips (core.model.tlc) ─> PULocationID, DOLocationID, trip_distance,
                                         pickup_wall_clock_s, duration (minutes)
        ─ model_input ─> gbm: the columns as they are (its pipeline cleans them itself)
                         baseline: {"PU_DO": "43_151", "trip_distance": 1.01}
        ─ fit, evaluate ─ save_model ─> models/<version>/{model.skops, card.json, report/}

The pipeline is the one place a trip becomes model input, for training and serving alike.
"""

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypedDict

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from core.errors import ModelError
from core.model.artifact import PICKUP_FEATURE, TripModel, load_model, save_model
from core.model.features import zone_boroughs
from core.model.recipes import Features, build_pipeline, trip_features
from core.model.registry import CARD_FILE, DEFAULT_KIND, DataFile, ModelCard, check_version_name
from core.model.report import write_report

# Re-exported: the CLI and the tests found the reading and fetching of TLC files here.
from core.model.tlc import (
    PICKUP_COLUMN,
    DataError,
    load_trips,
    read_trips,
)
from core.trip.contract import TRIP_COLUMNS

Progress = Callable[[str], None]


class Scores(TypedDict):
    """How close predictions came to the actual durations, in minutes (r2 unitless)."""

    rmse: float
    mae: float
    r2: float


class FileEvaluation(TypedDict):
    """Metrics of a model on one file."""

    name: str
    rows: int
    rmse: float
    mae: float
    r2: float


class Evaluation(TypedDict):
    """Metrics of a model on all the files given, and on each."""

    model: str
    rows: int
    rmse: float
    mae: float
    r2: float
    files: list[FileEvaluation]
    pickup: "Evaluation | None"  # the same with the files' pickup times, for a model reading them


def _ignore(_: str) -> None:
    """Report nothing."""


# --- Reading -------------------------------------------------------------------------------------


def model_input(kind: str, trips: pd.DataFrame) -> list[Features] | NDArray[np.object_]:
    """Return what the pipeline of `kind` reads: feature dicts (baseline) or the raw columns,
    pickup times last."""
    if kind == "baseline":
        return features_of(trips)
    columns: NDArray[np.object_] = trips[[*TRIP_COLUMNS, PICKUP_COLUMN]].to_numpy(dtype=object)
    return columns


def features_of(trips: pd.DataFrame) -> list[Features]:
    """Return the model input of every trip in a frame made by `read_trips`."""
    columns = (trips[name] for name in TRIP_COLUMNS)
    return [trip_features(pu, do, miles) for pu, do, miles in zip(*columns, strict=True)]


# --- Metrics -------------------------------------------------------------------------------------


def regression_metrics(actual: NDArray[np.float64], predicted: NDArray[np.float64]) -> Scores:
    """Return rmse, mae and r2 of predictions, finite even for one row or constant targets."""
    errors = predicted - actual
    ss_res = float(np.sum(errors**2))
    ss_tot = float(np.sum((actual - actual.mean()) ** 2))
    # Like scikit-learn's force_finite: a constant target scores 1.0 if matched exactly, else 0.0.
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float(ss_res == 0)
    return Scores(rmse=math.sqrt(ss_res / len(actual)), mae=float(np.mean(np.abs(errors))), r2=r2)


# --- Training and evaluation ---------------------------------------------------------------------


def _read_all(paths: Sequence[Path], report: Progress) -> tuple[pd.DataFrame, list[DataFile]]:
    """Read several trip files into one frame, with a record of each."""
    frames, records = [], []
    for path in paths:
        report(f"reading {path.name}")
        trips, record = load_trips(path)
        frames.append(trips)
        records.append(record)
    return pd.concat(frames, ignore_index=True), records


def train_model(
    train_files: Sequence[Path],
    valid_file: Path,
    output_dir: Path,
    *,
    kind: str = DEFAULT_KIND,
    zones: pd.DataFrame | None = None,
    version: str | None = None,
    progress: Progress | None = None,
    overwrite: bool = False,
) -> ModelCard:
    """Train a model on `train_files`, validate it on `valid_file`, and write it to `output_dir`.

    `zones` (read_zones) gives the gbm its boroughs and the report its per-borough errors.
    Training is deterministic: the same files give the same model (every random step is seeded).
    """
    report = progress or _ignore
    if not train_files:
        raise DataError("no training files given")
    version = check_version_name(version or output_dir.resolve().name)
    # A version names one model forever: workers and replies quote it, so never reuse it silently.
    if (output_dir / CARD_FILE).exists() and not overwrite:
        raise ModelError(f"{output_dir} already holds model {version!r}; choose another output")
    pipeline = build_pipeline(kind, zone_boroughs(zones) if zones is not None else ())
    train, train_records = _read_all(train_files, report)
    valid, valid_records = _read_all([valid_file], report)

    report(f"fitting {kind} on {len(train):,} trips")
    pipeline.fit(model_input(kind, train), train["duration"].to_numpy())

    report(f"evaluating on {len(valid):,} trips")
    # The card's rmse, mae and r2 are of the three fields, comparable across every model; a
    # model that reads pickup times adds its scores with them (pickup_rmse, ...).
    untimed = valid.assign(**{PICKUP_COLUMN: np.nan})
    predicted = np.asarray(pipeline.predict(model_input(kind, untimed)), dtype=np.float64)
    scores = regression_metrics(valid["duration"].to_numpy(), predicted)
    fit = regression_metrics(
        train["duration"].to_numpy(), pipeline.predict(model_input(kind, train))
    )
    metrics = {"rmse": scores["rmse"], "mae": scores["mae"], "r2": scores["r2"]}
    metrics["train_rmse"] = fit["rmse"]
    if kind == "gbm":
        timed = pipeline.predict(model_input(kind, valid))
        with_time = regression_metrics(valid["duration"].to_numpy(), timed)
        metrics.update(
            pickup_rmse=with_time["rmse"], pickup_mae=with_time["mae"], pickup_r2=with_time["r2"]
        )

    report(f"writing {output_dir}")
    card = save_model(
        pipeline,
        output_dir,
        kind=kind,
        version=version,
        train_files=train_records,
        valid_files=valid_records,
        metrics=metrics,
    )
    report("drawing the report")
    write_report(output_dir / "report", card, valid, predicted, zones)
    return card


def evaluate_model(
    model_dir: Path, files: Sequence[Path], *, progress: Progress | None = None
) -> Evaluation:
    """Return the model's rmse, mae and r2 on `files`, overall and per file, with row counts."""
    report = progress or _ignore
    if not files:
        raise DataError("no files to evaluate on")
    report(f"loading model {model_dir.name}")
    model = load_model(model_dir)
    reads_pickup = PICKUP_FEATURE in model.card.features
    frames = []
    for path in files:
        report(f"evaluating on {path.name}")
        frames.append((path.name, read_trips(path)))
    result = _scores(model, frames, with_pickup=False)
    if reads_pickup:
        result["pickup"] = _scores(model, frames, with_pickup=True)
    return result


def _scores(
    model: TripModel, frames: list[tuple[str, pd.DataFrame]], *, with_pickup: bool
) -> Evaluation:
    """Score `model` on each frame and on all of them, with or without the pickup times."""
    actual, predicted, per_file = [], [], []
    for name, trips in frames:
        truth = trips["duration"].to_numpy()
        pu, do, miles = (trips[c].tolist() for c in TRIP_COLUMNS)
        times = trips[PICKUP_COLUMN].tolist() if with_pickup else None
        guess = np.asarray(model.predict_columns(pu, do, miles, times), dtype=np.float64)
        per_file.append(
            FileEvaluation(name=name, rows=len(trips), **regression_metrics(truth, guess))
        )
        actual.append(truth)
        predicted.append(guess)
    overall = regression_metrics(np.concatenate(actual), np.concatenate(predicted))
    return Evaluation(
        model=model.version,
        rows=sum(f["rows"] for f in per_file),
        rmse=overall["rmse"],
        mae=overall["mae"],
        r2=overall["r2"],
        files=per_file,
        pickup=None,
    )


# --- Fetching ------------------------------------------------------------------------------------
