"""TLC trip files: read one into the model's inputs and durations, or fetch a month of them.

green_tripdata_2021-01.parquet (or yellow_, or .csv)
    ─ read_trips ─> PULocationID, DOLocationID (text), trip_distance, pickup_wall_clock_s,
                    duration (minutes), the trips lasting MIN_MINUTES..MAX_MINUTES
green:2021-01  ─ fetch_month ─> <data_dir>/green_tripdata_2021-01.parquet (whole or absent)
"""

import re
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from core.errors import TripqError
from core.infra.files import sha256_file, write_atomically
from core.model.registry import DataFile
from core.trip.contract import DISTANCE, DROPOFF_ZONE, PICKUP_TIME, PICKUP_ZONE, TRIP_COLUMNS

MIN_MINUTES, MAX_MINUTES = 1.0, 60.0  # the course's duration window, kept for comparable RMSE
PICKUP_COLUMN = PICKUP_TIME  # New York wall-clock seconds, as core.trip.pickup counts them
_EPOCH = pd.Timestamp("1970-01-01")

# Pickup and drop-off columns by taxi type: green (LPEP) and yellow (TPEP) records.
_TIMESTAMPS = {
    "lpep_pickup_datetime": "lpep_dropoff_datetime",
    "tpep_pickup_datetime": "tpep_dropoff_datetime",
}
_TRIP_COLUMNS = TRIP_COLUMNS

_MONTH_SPEC = re.compile(r"^(?P<color>green|yellow):(?P<month>\d{4}-(?:0[1-9]|1[0-2]))$")
_PARQUET_MAGIC = b"PAR1"


class DataError(TripqError):
    """A trip file that cannot be fetched, read or used."""


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
        distance = pd.to_numeric(frame[DISTANCE]).astype("float64")
        pu, do = _zone_ids(frame[PICKUP_ZONE]), _zone_ids(frame[DROPOFF_ZONE])
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path.name} has malformed trip columns: {exc}") from exc
    duration = (dropoff - pickup).dt.total_seconds() / 60
    # TLC timestamps are New York wall-clock times without a zone: seconds on that clock.
    wall_clock_s = (pickup - _EPOCH).dt.total_seconds()
    trips = pd.DataFrame(
        {
            PICKUP_ZONE: pu,
            DROPOFF_ZONE: do,
            DISTANCE: distance,
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


def load_trips(path: Path) -> tuple[pd.DataFrame, DataFile]:
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

    def copy(tmp: Path) -> None:
        # The scheme was checked above, so urlopen cannot be pointed at file:// (S310).
        reply = urllib.request.urlopen(url, timeout=timeout_s)  # noqa: S310
        with tmp.open("wb") as out, reply:
            while chunk := reply.read(1 << 20):
                out.write(chunk)
        _check_parquet(tmp, url)

    try:
        write_atomically(dest, copy)
    except urllib.error.HTTPError as exc:
        raise DataError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise DataError(f"cannot reach {url}: {exc.reason} (offline?)") from exc
    except TimeoutError as exc:
        raise DataError(f"timed out after {timeout_s:g}s downloading {url}") from exc
    except OSError as exc:
        raise DataError(f"cannot download {url} to {dest}: {exc}") from exc


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
