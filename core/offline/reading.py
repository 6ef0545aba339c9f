"""An input file's trips: read, their columns as numbers, every row checked against the contract.

INPUT (.parquet or .csv)  ─ read_trips ─> an arrow table with PULocationID, DOLocationID,
                                          trip_distance (and any other columns, kept as they are)
  ─ as_floats ─> each trip column as float64, NaN where null or text that is no number
  ─ pickup_times ─> a pickup time column, if any, as New York wall-clock seconds
  ─ core.trip.contract.check_columns ─> the valid rows, and why each other row is not
"""

from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from core.errors import InvalidTrip
from core.trip.contract import FIRST_YEAR, LAST_YEAR, TRIP_COLUMNS, Floats
from core.trip.pickup import NEW_YORK, new_york_time

# The model's inputs (core.trip.contract): the CLI need not import sklearn.
REQUIRED_COLUMNS = TRIP_COLUMNS
# Read when present: the pickup time sharpens a gbm's answer (core.trip.pickup).
PICKUP_TIME_COLUMNS = ("lpep_pickup_datetime", "tpep_pickup_datetime", "pickup_datetime")
SUFFIXES = (".parquet", ".csv")

_EPOCH = pd.Timestamp("1970-01-01")  # the origin of wall-clock seconds (core.trip.pickup)
# A number as text (TLC CSV months hold zone ids as text); anything else counts as missing.
_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"


def read_trips(path: Path) -> pa.Table:
    """Read a TLC trip file (.parquet or .csv); InvalidTrip if it cannot be scored."""
    suffix = check_suffix(path, "input")
    try:
        table = pq.read_table(path) if suffix == ".parquet" else _read_csv(path)
    except FileNotFoundError:
        raise InvalidTrip(f"{path} does not exist") from None
    except (OSError, pa.ArrowException) as exc:
        raise InvalidTrip(f"cannot read {path}: {exc}") from exc
    missing = [name for name in REQUIRED_COLUMNS if name not in table.column_names]
    if missing:
        raise InvalidTrip(
            f"{path} has no column {', '.join(missing)} "
            f"(scoring needs {', '.join(REQUIRED_COLUMNS)})"
        )
    return table


def _read_csv(path: Path) -> pa.Table:
    try:
        return pacsv.read_csv(path)
    except pa.ArrowInvalid:
        # A required column inferred as numbers from the first block may hold text further down;
        # read those as text, so such rows are rejected one by one rather than the whole file.
        options = pacsv.ConvertOptions(column_types=dict.fromkeys(REQUIRED_COLUMNS, pa.string()))
        return pacsv.read_csv(path, convert_options=options)


def check_suffix(path: Path, role: str) -> str:
    """Return the suffix of a file scoring reads or writes; InvalidTrip for any other kind."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise InvalidTrip(
            f"{role} {path}: unknown file type {suffix or '(none)'!r}; use .parquet or .csv"
        )
    return suffix


def as_floats(column: pa.ChunkedArray, name: str) -> Floats:
    """Return a column as float64, NaN where it is null or text that is not a number."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        column = column.cast(kind.value_type)
        kind = kind.value_type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        text = pc.utf8_trim_whitespace(column)
        column = pc.if_else(pc.match_substring_regex(text, _NUMBER), text, None)
    elif pa.types.is_null(kind):
        return np.full(len(column), np.nan)
    elif not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)):
        raise InvalidTrip(f"column {name} holds {kind}, not numbers")
    # Unsafe: an integer beyond float64's exact range is out of any valid range anyway.
    floats = pc.cast(column, pa.float64(), safe=False).fill_null(np.nan)
    return np.asarray(floats.to_numpy(), dtype=np.float64)


def pickup_times(table: pa.Table) -> tuple[str, Floats] | None:
    """Return the file's pickup time column: its name, and its values as New York wall-clock
    seconds (NaN where null; inf where not a time, or outside 2009-2100). None: no such column."""
    name = next((n for n in PICKUP_TIME_COLUMNS if n in table.column_names), None)
    if name is None:
        return None
    column = table[name].to_pandas()
    present = column.notna().to_numpy()
    if not pd.api.types.is_datetime64_any_dtype(column):
        try:
            column = pd.to_datetime(column, errors="coerce", format="ISO8601")
        except ValueError:  # offsets that differ from row to row: one at a time
            column = pd.Series([_new_york_wall_clock(value) for value in column], dtype="M8[us]")
    if getattr(column.dt, "tz", None) is not None:  # an offset: New York's wall clock
        column = column.dt.tz_convert(NEW_YORK).dt.tz_localize(None)
    seconds = (column - _EPOCH).dt.total_seconds().to_numpy(dtype=np.float64)
    years = column.dt.year.to_numpy(dtype=np.float64, na_value=np.nan)
    usable = (years >= FIRST_YEAR) & (years <= LAST_YEAR)
    out: Floats = np.where(present & ~usable, np.inf, np.where(present, seconds, np.nan))
    return name, out


def _new_york_wall_clock(value: object) -> datetime | None:
    """Read one ISO 8601 text as New York wall-clock time; None if it is no time."""
    try:
        return new_york_time(datetime.fromisoformat(str(value)))
    except ValueError:
        return None
