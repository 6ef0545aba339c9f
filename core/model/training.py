"""Trip data in, model directories out: read TLC files, train, evaluate, report, fetch months.

    green_tripdata_2021-01.parquet
        ─ read_trips ─> PULocationID, DOLocationID, trip_distance, duration (minutes)
        ─ model_input ─> gbm: the three columns as they are (its pipeline cleans them itself)
                         baseline: {"PU_DO": "43_151", "trip_distance": 1.01}
        ─ fit, evaluate ─ save_model ─> models/<version>/{model.skops, card.json, report/}

The pipeline is the one place a trip becomes model input, for training and serving alike.
"""

import math
import os
import re
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypedDict

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from core.errors import ModelError, TripqError
from core.model.artifact import (
    PICKUP_FEATURE,
    Features,
    TripModel,
    build_pipeline,
    load_model,
    save_model,
    trip_features,
)
from core.model.features import zone_boroughs
from core.model.registry import (
    CARD_FILE,
    DEFAULT_KIND,
    DataFile,
    ModelCard,
    check_version_name,
    sha256_file,
)
from core.model.report import write_report

MIN_MINUTES, MAX_MINUTES = 1.0, 60.0  # the course's duration window, kept for comparable RMSE
PICKUP_COLUMN = (
    "pickup_wall_clock_s"  # New York wall-clock seconds, as core.trip.pickup counts them
)
_EPOCH = pd.Timestamp("1970-01-01")

# Pickup and drop-off columns by taxi type: green (LPEP) and yellow (TPEP) records.
_TIMESTAMPS = {
    "lpep_pickup_datetime": "lpep_dropoff_datetime",
    "tpep_pickup_datetime": "tpep_dropoff_datetime",
}
_TRIP_COLUMNS = ("PULocationID", "DOLocationID", "trip_distance")

_MONTH_SPEC = re.compile(r"^(?P<color>green|yellow):(?P<month>\d{4}-(?:0[1-9]|1[0-2]))$")
_PARQUET_MAGIC = b"PAR1"

Progress = Callable[[str], None]


class DataError(TripqError):
    """A trip file that cannot be fetched, read or used."""


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


def _pick_columns(path: Path, names: Sequence[str]) -> tuple[str, str]:
    """Return the file's pickup and drop-off column names, or refuse a non-TLC schema."""
    present = set(names)
    pickup = next((p for p in _TIMESTAMPS if p in present and _TIMESTAMPS[p] in present), None)
    missing = [c for c in _TRIP_COLUMNS if c not in present]
    if pickup is None:
        missing.append("lpep_/tpep_ pickup and dropoff datetimes")
    if missing or pickup is None:
        raise DataError(f"{path.name} is not a TLC trip file: missing {', '.join(missing)}")
    return pickup, _TIMESTAMPS[pickup]


def _read_raw(path: Path) -> pd.DataFrame:
    """Read the trip columns of a parquet or CSV file, naming the timestamps pickup and dropoff."""
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            pickup, dropoff = _pick_columns(path, pq.read_schema(path).names)
            frame = pd.read_parquet(path, columns=[*_TRIP_COLUMNS, pickup, dropoff])
        elif name.endswith((".csv", ".csv.gz")):
            pickup, dropoff = _pick_columns(path, list(pd.read_csv(path, nrows=0).columns))
            frame = pd.read_csv(path, usecols=[*_TRIP_COLUMNS, pickup, dropoff])
        else:
            raise DataError(f"{path.name}: expected a .parquet or .csv file")
    except FileNotFoundError as exc:
        raise DataError(f"{path} does not exist") from exc
    except (OSError, pa.ArrowException, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path.name}: {exc}") from exc
    return frame.rename(columns={pickup: "pickup", dropoff: "dropoff"})


def _zone_ids(ids: pd.Series) -> pd.Series:
    """Return zone ids as strings, whether the file stored int, float or str."""
    # 2021 course files hold "43"; raw TLC files hold 43; CSVs with gaps hold 43.0.
    if pd.api.types.is_float_dtype(ids):
        ids = ids.astype("int64")
    return ids.astype(str)


def _clean(path: Path, raw: pd.DataFrame) -> pd.DataFrame:
    """Compute durations in minutes and keep the course's trips (1 <= duration <= 60)."""
    # Rows missing a model input cannot be used; the course files have none, so RMSE is unchanged.
    frame = raw.dropna(subset=[*_TRIP_COLUMNS, "pickup", "dropoff"])
    try:
        pickup = pd.to_datetime(frame["pickup"])
        dropoff = pd.to_datetime(frame["dropoff"])
        distance = pd.to_numeric(frame["trip_distance"]).astype("float64")
        pu, do = _zone_ids(frame["PULocationID"]), _zone_ids(frame["DOLocationID"])
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path.name} has malformed trip columns: {exc}") from exc
    duration = (dropoff - pickup).dt.total_seconds() / 60
    # TLC timestamps are New York wall-clock times without a zone: seconds on that clock.
    wall_clock_s = (pickup - _EPOCH).dt.total_seconds()
    trips = pd.DataFrame(
        {
            "PULocationID": pu,
            "DOLocationID": do,
            "trip_distance": distance,
            PICKUP_COLUMN: wall_clock_s,
            "duration": duration,
        }
    )
    trips = trips[(trips["duration"] >= MIN_MINUTES) & (trips["duration"] <= MAX_MINUTES)]
    if trips.empty:
        raise DataError(
            f"{path.name} has no usable trips: none of its {len(raw):,} rows lasts "
            f"{MIN_MINUTES:g} to {MAX_MINUTES:g} minutes"
        )
    return trips.reset_index(drop=True)


def _load_trips(path: Path) -> tuple[pd.DataFrame, DataFile]:
    """Read and clean one file; describe it as a card records it."""
    raw = _read_raw(path)
    trips = _clean(path, raw)
    record = DataFile(name=path.name, sha256=sha256_file(path), rows_read=len(raw), rows=len(trips))
    return trips, record


def read_trips(path: Path) -> pd.DataFrame:
    """Read a TLC green or yellow trip file into the model's inputs and its duration in minutes."""
    return _clean(path, _read_raw(path))


def read_zones(path: Path) -> pd.DataFrame:
    """Read the TLC taxi zone lookup (LocationID, Borough, Zone), or say why it cannot be used."""
    try:
        zones = pd.read_csv(path, keep_default_na=False)
    except FileNotFoundError as exc:
        raise DataError(f"no zone lookup: {path} does not exist") from exc
    except (OSError, pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"cannot read the zone lookup {path.name}: {exc}") from exc
    missing = [c for c in ("LocationID", "Borough", "Zone") if c not in zones.columns]
    if missing or zones.empty:
        raise DataError(f"{path.name} is not the TLC zone lookup: missing {', '.join(missing)}")
    return zones


def model_input(kind: str, trips: pd.DataFrame) -> list[Features] | NDArray[np.object_]:
    """Return what the pipeline of `kind` reads: feature dicts (baseline) or the raw columns,
    pickup times last."""
    if kind == "baseline":
        return features_of(trips)
    columns: NDArray[np.object_] = trips[[*_TRIP_COLUMNS, PICKUP_COLUMN]].to_numpy(dtype=object)
    return columns


def features_of(trips: pd.DataFrame) -> list[Features]:
    """Return the model input of every trip in a frame made by `read_trips`."""
    columns = (trips["PULocationID"], trips["DOLocationID"], trips["trip_distance"])
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
        trips, record = _load_trips(path)
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
        pu, do, miles = (trips[c].tolist() for c in _TRIP_COLUMNS)
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


def month_file_name(spec: str) -> str:
    """Return the TLC file name of a spec like `green:2021-01`."""
    match = _MONTH_SPEC.match(spec)
    if match is None:
        raise DataError(f"{spec!r} is not a month spec like green:2021-01 or yellow:2023-02")
    return f"{match['color']}_tripdata_{match['month']}.parquet"


def _download(url: str, dest: Path, timeout_s: float) -> None:
    """Copy `url` into `dest` through a temporary sibling, so `dest` is whole or absent."""
    if not url.startswith(("http://", "https://")):
        raise DataError(f"refusing to download {url}: only http(s) URLs are fetched")
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        # The scheme was checked above, so urlopen cannot be pointed at file:// (S310).
        reply = urllib.request.urlopen(url, timeout=timeout_s)  # noqa: S310
        with os.fdopen(fd, "wb") as out, reply:
            while chunk := reply.read(1 << 20):
                out.write(chunk)
        _check_parquet(tmp, url)
        os.chmod(tmp, 0o644)  # mkstemp's owner-only mode would hide the data from other users
        os.replace(tmp, dest)
    except urllib.error.HTTPError as exc:
        raise DataError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise DataError(f"cannot reach {url}: {exc.reason} (offline?)") from exc
    except TimeoutError as exc:
        raise DataError(f"timed out after {timeout_s:g}s downloading {url}") from exc
    except OSError as exc:
        raise DataError(f"cannot download {url} to {dest}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def _check_parquet(path: Path, url: str) -> None:
    """Refuse a download that is not a parquet file, e.g. an HTML error page."""
    size = path.stat().st_size
    with path.open("rb") as stream:
        head = stream.read(4)
        stream.seek(max(size - 4, 0))
        tail = stream.read(4)
    if size < 12 or head != _PARQUET_MAGIC or tail != _PARQUET_MAGIC:
        raise DataError(f"{url} did not return a parquet file ({size:,} bytes)")


def fetch_month(spec: str, dest_dir: Path, base_url: str, *, timeout_s: float = 60.0) -> Path:
    """Download a TLC month like `green:2021-01` into `dest_dir`, unless it is already there."""
    name = month_file_name(spec)
    dest = dest_dir / name
    if dest.is_file():
        return dest
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {dest_dir}: {exc.strerror}") from exc
    _download(f"{base_url.rstrip('/')}/{name}", dest, timeout_s)
    return dest


def is_month_spec(source: str) -> bool:
    """Tell whether `source` is a month spec like `green:2021-01` rather than a path."""
    return _MONTH_SPEC.match(source) is not None


def resolve_data_file(source: str, *, data_dir: Path, base_url: str) -> Path:
    """Return the path of a trip file given as a path or as a month spec (fetched if needed)."""
    path = Path(source).expanduser()
    if is_month_spec(source) and not path.exists():
        return fetch_month(source, data_dir, base_url)
    return path.resolve()
