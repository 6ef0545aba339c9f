"""Offline scoring: a whole trip file through the queue, in chunks, resumable.

    INPUT (.parquet or .csv) ── read, normalise, validate every row
      │ chunks of `chunk_rows` rows; a chunk's valid rows go as one batch task, several in flight
      v
    JobClient.predict_columns ──> tasks.trip ──> worker (the online model path, unchanged)
      │ each finished chunk's predictions: <OUTPUT>.parts/chunk-000007.parquet (tmp + rename)
      v
    OUTPUT: every input row, in order, its columns + `predicted_duration` (null when rejected)
    <OUTPUT stem>.rejected.csv: row (0-based position in the input), reason, the row's values

Rows are validated here, with the contract of `TripRequest`, because the worker validates a
whole chunk at once: one bad row sent would fail every row beside it. A rerun with the same input
(size and sha256) and chunk size finds the parts already written and sends only the missing
chunks; the work folder goes once OUTPUT is written.
"""

import asyncio
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from loguru import logger

from config import Settings
from core.errors import BackendUnavailable, DeadlineExceeded, InvalidTrip, TripqError
from core.online.client import JobClient
from core.trip.pickup import FIRST_YEAR, LAST_YEAR, NEW_YORK, new_york_time
from core.trip.schemas import MAX_TRIP_MILES, ZONE_MAX, ZONE_MIN

# The model's inputs (core.model.artifact.FEATURES), named here: the CLI need not import sklearn.
ZONE_COLUMNS = ("PULocationID", "DOLocationID")
DISTANCE_COLUMN = "trip_distance"
REQUIRED_COLUMNS = (*ZONE_COLUMNS, DISTANCE_COLUMN)
# Read when present: the pickup time sharpens a gbm's answer (core.trip.pickup).
PICKUP_TIME_COLUMNS = ("lpep_pickup_datetime", "tpep_pickup_datetime", "pickup_datetime")
PREDICTION_COLUMN = "predicted_duration"
MODEL_VERSIONS_KEY = b"tripq.model_versions"  # OUTPUT's parquet schema metadata: a JSON list

# Measured with bench/score.py: chunks much smaller pay the per-task price more often, much
# larger ones leave the client and the worker waiting on each other at the start and the end.
DEFAULT_CHUNK_ROWS = 50_000
DEFAULT_IN_FLIGHT = 4
DEFAULT_RETRIES = 2
SUFFIXES = (".parquet", ".csv")

_MANIFEST = "manifest.json"
_MANIFEST_FORMAT = 1
_PART_VERSION_KEY = b"tripq.model_version"
_RETRY_BACKOFF_S = (0.5, 1.0, 2.0, 4.0)
_HASH_BLOCK = 1 << 20
_EPOCH = pd.Timestamp("1970-01-01")  # the origin of wall-clock seconds (core.trip.pickup)
# A number as text (TLC CSV months hold zone ids as text); anything else counts as missing.
_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class ChunkDone:
    """One chunk finished: what the progress callback receives."""

    index: int  # from 0
    rows: int  # rows of the chunk, rejected ones included
    rejected: int
    skipped: bool  # finished by an earlier run: read back, not sent
    model_version: str | None  # None when every row of the chunk was rejected
    total_rows: int
    total_chunks: int


ChunkCallback = Callable[[ChunkDone], None]


@dataclass(frozen=True, slots=True)
class Rejections:
    """The rows that break the contract: their positions and, for each, why."""

    rows: Ints
    reasons: list[str]


@dataclass(frozen=True, slots=True)
class ScoringPlan:
    """What a run will do: the input read and checked, and what an earlier run left."""

    input: Path
    output: Path
    table: pa.Table
    pickup: Ints
    dropoff: Ints
    distance: Floats
    pickup_time_s: Floats | None  # New York wall-clock seconds, NaN where absent; None: no column
    valid: Mask
    rejections: Rejections
    chunk_rows: int
    fingerprint: dict[str, Any]
    done: frozenset[int]  # chunks whose parts an earlier run wrote
    notice: str | None  # why an earlier run's parts are not used, if any are not
    started: float  # time.perf_counter() when planning began: a run's seconds count from it

    @property
    def rows(self) -> int:
        """Rows in the input."""
        return int(self.table.num_rows)

    @property
    def chunks(self) -> int:
        """Chunks the input is cut into."""
        return -(-self.rows // self.chunk_rows)

    @property
    def work_dir(self) -> Path:
        """Where finished chunks wait until OUTPUT is written."""
        return work_dir_for(self.output)

    @property
    def rejected_file(self) -> Path:
        """The side file that lists the rejected rows."""
        return rejected_file_for(self.output)

    def bounds(self, index: int) -> tuple[int, int]:
        """Return the first row of chunk `index` and the row after its last."""
        start = index * self.chunk_rows
        return start, min(self.rows, start + self.chunk_rows)


@dataclass(frozen=True, slots=True)
class ScoringResult:
    """What a finished run did."""

    input: Path
    output: Path
    rejected_file: Path | None  # None when no row was rejected
    rows: int
    scored: int
    rejected: int
    chunks: int
    chunks_done: int  # sent to the workers by this run
    chunks_skipped: int  # finished by an earlier run
    retries: int  # chunks sent again after a timeout or a Redis blip
    seconds: float
    model_versions: tuple[str, ...]

    def summary(self) -> dict[str, Any]:
        """Return the result as JSON-ready values."""
        return {
            "input": str(self.input),
            "output": str(self.output),
            "rejected_file": None if self.rejected_file is None else str(self.rejected_file),
            "rows": self.rows,
            "scored": self.scored,
            "rejected": self.rejected,
            "chunks": self.chunks,
            "chunks_done": self.chunks_done,
            "chunks_skipped": self.chunks_skipped,
            "retries": self.retries,
            "seconds": round(self.seconds, 3),
            "rows_per_s": round(self.rows / self.seconds) if self.seconds > 0 else None,
            "model_versions": list(self.model_versions),
        }


def work_dir_for(output: Path) -> Path:
    """Name the folder beside `output` that holds the finished chunks of an unfinished run."""
    return output.with_name(f"{output.name}.parts")


def rejected_file_for(output: Path) -> Path:
    """Name the side file beside `output` that lists the rejected rows."""
    return output.with_name(f"{output.stem}.rejected.csv")


def read_trips(path: Path) -> pa.Table:
    """Read a TLC trip file (.parquet or .csv); InvalidTrip if it cannot be scored."""
    suffix = _suffix(path, "input")
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


def _suffix(path: Path, role: str) -> str:
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


def check_rows(
    pickup: Floats,
    dropoff: Floats,
    distance: Floats,
    pickup_time: tuple[str, Floats] | None = None,
) -> tuple[Mask, Rejections]:
    """Check every row against the contract of `TripRequest`; the valid rows and the others."""
    problems: list[tuple[Mask, str]] = []
    with np.errstate(invalid="ignore"):
        for name, zones in zip(ZONE_COLUMNS, (pickup, dropoff), strict=True):
            missing = np.isnan(zones)
            fractional = ~missing & np.isfinite(zones) & (zones != np.floor(zones))
            outside = ~missing & ~fractional & ((zones < ZONE_MIN) | (zones > ZONE_MAX))
            problems += [
                (missing, f"{name} is missing or not a number"),
                (fractional, f"{name} is not a whole number"),
                (outside, f"{name} is outside {ZONE_MIN}..{ZONE_MAX}"),
            ]
        missing = np.isnan(distance)
        infinite = np.isinf(distance)
        outside = np.isfinite(distance) & ((distance < 0.0) | (distance > MAX_TRIP_MILES))
        problems += [
            (missing, f"{DISTANCE_COLUMN} is missing or not a number"),
            (infinite, f"{DISTANCE_COLUMN} is not finite"),
            (outside, f"{DISTANCE_COLUMN} is outside 0..{MAX_TRIP_MILES:g} miles"),
        ]
        if pickup_time is not None:
            name, seconds = pickup_time
            problems.append(
                (np.isinf(seconds), f"{name} is not a date and time in {FIRST_YEAR}-{LAST_YEAR}")
            )
    # One bit per problem: the reasons are joined once per combination, not once per row.
    codes = np.zeros(len(distance), dtype=np.int64)
    for bit, (mask, _) in enumerate(problems):
        codes |= mask.astype(np.int64) << bit
    valid = codes == 0
    rows = np.flatnonzero(~valid)
    combos, which = np.unique(codes[rows], return_inverse=True)
    texts = [
        "; ".join(text for bit, (_, text) in enumerate(problems) if int(combo) >> bit & 1)
        for combo in combos
    ]
    reasons = [texts[i] for i in which.tolist()]
    return valid, Rejections(rows=rows.astype(np.int64), reasons=reasons)


def fingerprint(path: Path, rows: int) -> dict[str, Any]:
    """Describe the input, so a rerun knows whether an earlier run's parts still apply."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(_HASH_BLOCK):
            digest.update(block)
    return {
        "format": _MANIFEST_FORMAT,
        "input": str(path),
        "size": path.stat().st_size,
        "sha256": digest.hexdigest(),
        "rows": rows,
    }


def plan_scoring(
    input_path: Path, output: Path, *, chunk_rows: int | None = None, restart: bool = False
) -> ScoringPlan:
    """Read and check the input, and find what an earlier run on the same output finished.

    `chunk_rows` None: the earlier run's chunk size, else DEFAULT_CHUNK_ROWS. `restart`: ignore
    what an earlier run finished. Nothing is written here.
    """
    started = time.perf_counter()
    input_path, output = input_path.expanduser().resolve(), output.expanduser().resolve()
    _suffix(output, "output")
    if output == input_path:
        raise InvalidTrip(f"the output {output} is the input; name another file")
    if not output.parent.is_dir():
        raise InvalidTrip(f"the output's folder {output.parent} does not exist")
    if chunk_rows is not None and chunk_rows < 1:
        raise InvalidTrip(f"chunk_rows must be at least 1, not {chunk_rows}")
    table = read_trips(input_path)
    columns = [as_floats(table[name], name) for name in REQUIRED_COLUMNS]
    pu, do, miles = columns
    times = pickup_times(table)
    valid, rejections = check_rows(pu, do, miles, times)
    pickup, dropoff = (np.where(valid, c, 0).astype(np.int64) for c in columns[:2])
    distance = np.where(valid, columns[2], 0.0)
    stamp = fingerprint(input_path, table.num_rows)
    earlier = _read_manifest(work_dir_for(output))
    same_input = earlier is not None and _same_input(earlier, stamp)
    if chunk_rows is None:
        # A rerun without --chunk-rows resumes with the cut of the run it continues.
        adopt = earlier.get("chunk_rows") if earlier is not None and same_input else None
        chunk_rows = adopt if isinstance(adopt, int) and adopt > 0 else DEFAULT_CHUNK_ROWS
    stamp["chunk_rows"] = chunk_rows
    done: frozenset[int] = frozenset()
    notice = None
    if earlier is not None:
        work_dir = work_dir_for(output)
        if restart:
            notice = f"--restart: the chunks an earlier run left in {work_dir} are discarded"
        elif not earlier:
            notice = f"{work_dir} holds no readable {_MANIFEST}: its chunks are discarded"
        elif not same_input:
            notice = (
                f"an earlier run left chunks of another input in {work_dir} "
                f"({earlier.get('input')}, or that file changed since): they are discarded"
            )
        elif earlier.get("chunk_rows") != chunk_rows:
            notice = (
                f"an earlier run cut this input into chunks of {earlier.get('chunk_rows')} "
                f"rows, not {chunk_rows}: its chunks in {work_dir} are discarded"
            )
        else:
            done = _finished_parts(work_dir, table.num_rows, chunk_rows)
    return ScoringPlan(
        input=input_path,
        output=output,
        table=table,
        pickup=pickup,
        dropoff=dropoff,
        distance=distance,
        pickup_time_s=None if times is None else times[1],
        valid=valid,
        rejections=rejections,
        chunk_rows=chunk_rows,
        fingerprint=stamp,
        done=done,
        notice=notice,
        started=started,
    )


def _same_input(earlier: dict[str, Any], stamp: dict[str, Any]) -> bool:
    keys = ("format", "size", "sha256", "rows")
    return all(earlier.get(key) == stamp[key] for key in keys)


def _read_manifest(work_dir: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((work_dir / _MANIFEST).read_text())
    except FileNotFoundError:
        return None if not work_dir.exists() else {}
    except (OSError, ValueError):
        return {}  # unreadable: it matches nothing, so the folder is started afresh
    return manifest if isinstance(manifest, dict) else {}


def _part_path(work_dir: Path, index: int) -> Path:
    return work_dir / f"chunk-{index:06d}.parquet"


def _finished_parts(work_dir: Path, rows: int, chunk_rows: int) -> frozenset[int]:
    """Find the chunks whose part is in `work_dir`, whole: readable and of the right length."""
    done = set()
    chunks = -(-rows // chunk_rows)
    for index in range(chunks):
        path = _part_path(work_dir, index)
        try:
            length = pq.read_metadata(path).num_rows
        except (OSError, pa.ArrowException):
            continue  # absent, or damaged: computed again
        if length == min(rows, (index + 1) * chunk_rows) - index * chunk_rows:
            done.add(index)
    return frozenset(done)


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Write `path` through a sibling temporary file and a rename: readers see all or nothing."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _prepare_work_dir(plan: ScoringPlan) -> None:
    """Empty the work folder unless its parts are used, and record the input's fingerprint."""
    work_dir = plan.work_dir
    if work_dir.exists() and not plan.done:
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    for stale in work_dir.glob(".*.tmp-*"):
        stale.unlink(missing_ok=True)
    manifest = (json.dumps(plan.fingerprint, indent=2) + "\n").encode()
    _write_atomically(work_dir / _MANIFEST, lambda tmp: tmp.write_bytes(manifest))


def _write_part(plan: ScoringPlan, index: int, predicted: Floats, version: str | None) -> None:
    metadata = {} if version is None else {_PART_VERSION_KEY: version.encode()}
    table = pa.table({PREDICTION_COLUMN: predicted}).replace_schema_metadata(metadata)
    _write_atomically(_part_path(plan.work_dir, index), lambda tmp: pq.write_table(table, tmp))


def _read_part(plan: ScoringPlan, index: int) -> tuple[Floats, str | None]:
    table = pq.read_table(_part_path(plan.work_dir, index))
    predicted = np.asarray(table[PREDICTION_COLUMN].to_numpy(), dtype=np.float64)
    return predicted, _version_of(table.schema)


def _part_version(plan: ScoringPlan, index: int) -> str | None:
    return _version_of(pq.read_schema(_part_path(plan.work_dir, index)))


def _version_of(schema: pa.Schema) -> str | None:
    version = (schema.metadata or {}).get(_PART_VERSION_KEY)
    return None if version is None else version.decode()


def _chunk_columns(plan: ScoringPlan, index: int) -> dict[str, Any]:
    """The valid rows of chunk `index`, as the columns a batch task carries (numpy arrays)."""
    start, end = plan.bounds(index)
    keep = plan.valid[start:end]
    # Fancy indexing copies: every array is C-contiguous, as orjson's numpy support requires.
    columns = {
        "PULocationID": plan.pickup[start:end][keep],
        "DOLocationID": plan.dropoff[start:end][keep],
        DISTANCE_COLUMN: plan.distance[start:end][keep],
    }
    if plan.pickup_time_s is not None:  # NaN travels as null: no time for that trip
        columns["pickup_wall_clock_s"] = plan.pickup_time_s[start:end][keep]
    return columns


@dataclass(slots=True)
class _Sender:
    """Send chunks through the job client, each again after a timeout or a Redis blip."""

    client: JobClient
    timeout_s: float
    retries: int
    sent_again: int = 0

    async def predict(self, plan: ScoringPlan, index: int) -> tuple[Floats, str | None]:
        start, end = plan.bounds(index)
        predicted = np.full(end - start, np.nan)
        columns = _chunk_columns(plan, index)
        if not len(columns[DISTANCE_COLUMN]):
            return predicted, None
        for attempt in range(self.retries + 1):
            try:
                answer = await self.client.predict_columns(columns, self.timeout_s)
                break
            except (DeadlineExceeded, BackendUnavailable) as exc:
                if attempt == self.retries:
                    raise
                self.sent_again += 1
                logger.warning(
                    "scoring chunk again", chunk=index, attempt=attempt + 2, error=exc.message
                )
                await asyncio.sleep(_RETRY_BACKOFF_S[min(attempt, len(_RETRY_BACKOFF_S) - 1)])
        predicted[plan.valid[start:end]] = answer.durations
        return predicted, answer.model_version


async def run_scoring(
    plan: ScoringPlan,
    settings: Settings,
    *,
    in_flight: int = DEFAULT_IN_FLIGHT,
    timeout_s: float | None = None,
    retries: int = DEFAULT_RETRIES,
    on_chunk: ChunkCallback | None = None,
) -> ScoringResult:
    """Score the chunks `plan` still needs through the workers, then write OUTPUT.

    `timeout_s`: a chunk's deadline, at most REQUEST_TIMEOUT_MAX_S (the default): a task held
    longer than that by a live worker would be taken for abandoned and run twice. A chunk that
    times out is sent again up to `retries` times. `on_chunk` is called in the event loop after
    each chunk's part is written (first for the chunks an earlier run finished); an exception
    it raises, KeyboardInterrupt included, stops the run with the finished parts kept.
    """
    if in_flight < 1:
        raise InvalidTrip(f"in_flight must be at least 1, not {in_flight}")
    limit_s = settings.request_timeout_max_s
    timeout_s = limit_s if timeout_s is None else min(timeout_s, limit_s)
    report = on_chunk or (lambda _: None)
    for index in sorted(plan.done):
        report(_chunk_done(plan, index, skipped=True, version=_part_version(plan, index)))
    todo = [index for index in range(plan.chunks) if index not in plan.done]
    sent_again = 0
    if todo:
        sender = _Sender(JobClient.from_settings(settings), timeout_s, retries)
        await _send_chunks(plan, sender, todo, in_flight, settings.worker_ttl_s, report)
        sent_again = sender.sent_again
    return _finish(plan, chunks_done=len(todo), retries=sent_again)


async def _send_chunks(
    plan: ScoringPlan,
    sender: _Sender,
    todo: list[int],
    in_flight: int,
    worker_ttl_s: float,
    report: ChunkCallback,
) -> None:
    """Keep `in_flight` chunks out; write each answered chunk's part and report it."""
    client = sender.client
    await client.start(wait_s=2.0)
    running: dict[asyncio.Task[tuple[Floats, str | None]], int] = {}
    try:
        if not client.available:
            raise BackendUnavailable("Redis does not answer at REDIS_URL")
        if not await client.workers(worker_ttl_s):
            raise BackendUnavailable("no live worker: start one with `tripq worker`")
        # Only now: a run that cannot start leaves an earlier run's work folder as it was.
        _prepare_work_dir(plan)
        waiting = iter(todo)
        finished = len(plan.done)
        while True:
            while len(running) < in_flight and (index := next(waiting, None)) is not None:
                running[asyncio.create_task(sender.predict(plan, index))] = index
            if not running:
                return
            ready, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            failed: tuple[int, TripqError] | None = None
            for task in sorted(ready, key=running.__getitem__):
                index = running.pop(task)
                try:
                    predicted, version = task.result()
                except TripqError as exc:
                    failed = failed or (index, exc)
                    continue
                _write_part(plan, index, predicted, version)
                finished += 1
                report(_chunk_done(plan, index, skipped=False, version=version))
            if failed is not None:
                raise _stopped(plan, failed[0], finished, failed[1]) from failed[1]
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await client.close()


def _stopped(plan: ScoringPlan, index: int, finished: int, exc: TripqError) -> TripqError:
    """Say which chunk failed, and that the run resumes from the chunks kept."""
    start, end = plan.bounds(index)
    return type(exc)(
        f"chunk {index + 1} of {plan.chunks} (rows {start}..{end - 1}): {exc.message}; "
        f"{finished} finished chunks are kept in {plan.work_dir}: "
        "run the same command again to resume"
    )


def _chunk_done(plan: ScoringPlan, index: int, *, skipped: bool, version: str | None) -> ChunkDone:
    start, end = plan.bounds(index)
    return ChunkDone(
        index=index,
        rows=end - start,
        rejected=int(end - start - np.count_nonzero(plan.valid[start:end])),
        skipped=skipped,
        model_version=version,
        total_rows=plan.rows,
        total_chunks=plan.chunks,
    )


def _finish(plan: ScoringPlan, *, chunks_done: int, retries: int) -> ScoringResult:
    """Join the parts into OUTPUT, write the side file, and remove the work folder."""
    parts = [_read_part(plan, index) for index in range(plan.chunks)]
    versions = tuple(sorted({v for _, v in parts if v is not None}))
    predicted = np.concatenate([p for p, _ in parts]) if parts else np.empty(0)
    column = pa.array(predicted, type=pa.float64(), mask=~plan.valid)
    table = plan.table
    if PREDICTION_COLUMN in table.column_names:
        table = table.drop_columns([PREDICTION_COLUMN])
    table = table.append_column(PREDICTION_COLUMN, column)
    try:
        _write_table(table, plan.output, versions)
        rejected_file = _write_rejections(plan)
    except OSError as exc:
        raise TripqError(f"cannot write {exc.filename or plan.output}: {exc.strerror}") from exc
    shutil.rmtree(plan.work_dir, ignore_errors=True)
    rejected = len(plan.rejections.rows)
    return ScoringResult(
        input=plan.input,
        output=plan.output,
        rejected_file=rejected_file,
        rows=plan.rows,
        scored=plan.rows - rejected,
        rejected=rejected,
        chunks=plan.chunks,
        chunks_done=chunks_done,
        chunks_skipped=len(plan.done),
        retries=retries,
        seconds=time.perf_counter() - plan.started,
        model_versions=versions,
    )


def _write_table(table: pa.Table, path: Path, versions: tuple[str, ...]) -> None:
    if path.suffix.lower() == ".parquet":
        metadata = dict(table.schema.metadata or {})
        metadata[MODEL_VERSIONS_KEY] = json.dumps(list(versions)).encode()
        table = table.replace_schema_metadata(metadata)
        _write_atomically(path, lambda tmp: pq.write_table(table, tmp))
    else:
        _write_atomically(path, lambda tmp: pacsv.write_csv(table, tmp))


def _write_rejections(plan: ScoringPlan) -> Path | None:
    """Write the rejected rows beside OUTPUT; remove an earlier run's list when there are none."""
    path = plan.rejected_file
    rows = plan.rejections.rows
    if not len(rows):
        path.unlink(missing_ok=True)
        return None
    values = plan.table.take(pa.array(rows))
    table = pa.Table.from_arrays(
        [pa.array(rows), pa.array(plan.rejections.reasons, type=pa.string()), *values.columns],
        names=["row", "reason", *values.column_names],
    )
    _write_atomically(path, lambda tmp: pacsv.write_csv(table, tmp))
    return path


async def score_file(
    input_path: Path,
    output: Path,
    settings: Settings,
    *,
    chunk_rows: int | None = None,
    restart: bool = False,
    in_flight: int = DEFAULT_IN_FLIGHT,
    timeout_s: float | None = None,
    retries: int = DEFAULT_RETRIES,
    on_chunk: ChunkCallback | None = None,
) -> ScoringResult:
    """Score a trip file through the workers into `output`: `plan_scoring`, then `run_scoring`."""
    plan = plan_scoring(input_path, output, chunk_rows=chunk_rows, restart=restart)
    return await run_scoring(
        plan, settings, in_flight=in_flight, timeout_s=timeout_s, retries=retries, on_chunk=on_chunk
    )
