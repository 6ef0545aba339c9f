"""Offline scoring: a whole trip file through the queue, in chunks, resumable.

    INPUT (.parquet or .csv) ── read, normalise, validate every row
      │ chunks of `chunk_rows` rows; a chunk's valid rows go as one batch task, several in flight
      v
    PredictionClient.predict_columns ──> tasks.trip ──> worker (the online model path, unchanged)
      │ each finished chunk's predictions: <OUTPUT>.parts/chunk-000007.parquet (tmp + rename)
      v
    OUTPUT: every input row, in order, its columns + `predicted_duration` (null when rejected)
    <OUTPUT stem>.rejected.csv: row (0-based position in the input), reason, the row's values

Rows are checked here, with the trip contract (core.trip.contract, which TripRequest's limits
come from too), because the worker validates a whole chunk at once: one bad row sent would fail
every row beside it. A rerun with the same input
(size and sha256) and chunk size finds the parts already written and sends only the missing
chunks; the work folder goes once OUTPUT is written.

    core.offline.reading   read the input, its columns as numbers, the pickup times
    core.offline.plan      check every row, cut the chunks, find what an earlier run finished
    core.offline.parts     the work folder (manifest, parts), OUTPUT and its side file
    core.offline.scoring   send the chunks with retries, join the parts (here)
"""

import asyncio
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from loguru import logger

from config import Settings
from core.errors import BackendUnavailable, DeadlineExceeded, InvalidTrip, TripqError
from core.offline.parts import (
    PREDICTION_COLUMN,
    part_version,
    prepare_work_dir,
    read_part,
    write_output,
    write_part,
    write_rejections,
)
from core.offline.plan import ScoringPlan, plan_scoring
from core.online.client import PredictionClient
from core.online.deadline import Deadline
from core.trip.contract import (
    DISTANCE,
    DROPOFF_ZONE,
    PICKUP_TIME,
    PICKUP_ZONE,
    Floats,
)

DEFAULT_IN_FLIGHT = 4
DEFAULT_RETRIES = 2

_RETRY_BACKOFF_S = (0.5, 1.0, 2.0, 4.0)


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


def _chunk_columns(plan: ScoringPlan, index: int) -> dict[str, Any]:
    """The valid rows of chunk `index`, as the columns a batch task carries (numpy arrays)."""
    start, end = plan.bounds(index)
    keep = plan.valid[start:end]
    # Fancy indexing copies: every array is C-contiguous, as orjson's numpy support requires.
    columns = {
        PICKUP_ZONE: plan.pickup[start:end][keep],
        DROPOFF_ZONE: plan.dropoff[start:end][keep],
        DISTANCE: plan.distance[start:end][keep],
    }
    if plan.pickup_time_s is not None:  # NaN travels as null: no time for that trip
        columns[PICKUP_TIME] = plan.pickup_time_s[start:end][keep]
    return columns


@dataclass(slots=True)
class _Sender:
    """Send chunks through the prediction client, each again after a timeout or a Redis blip."""

    client: PredictionClient
    timeout_s: float
    retries: int
    sent_again: int = 0

    async def predict(self, plan: ScoringPlan, index: int) -> tuple[Floats, str | None]:
        start, end = plan.bounds(index)
        predicted = np.full(end - start, np.nan)
        columns = _chunk_columns(plan, index)
        if not len(columns[DISTANCE]):
            return predicted, None
        for attempt in range(self.retries + 1):
            try:
                answer = await self.client.predict_columns(columns, Deadline.after(self.timeout_s))
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
        report(_chunk_done(plan, index, skipped=True, version=part_version(plan.work_dir, index)))
    todo = [index for index in range(plan.chunks) if index not in plan.done]
    sent_again = 0
    if todo:
        sender = _Sender(PredictionClient.from_settings(settings), timeout_s, retries)
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
        prepare_work_dir(plan.work_dir, keep=bool(plan.done), stamp=plan.fingerprint)
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
                write_part(plan.work_dir, index, predicted, version)
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
    parts = [read_part(plan.work_dir, index) for index in range(plan.chunks)]
    versions = tuple(sorted({v for _, v in parts if v is not None}))
    predicted = np.concatenate([p for p, _ in parts]) if parts else np.empty(0)
    column = pa.array(predicted, type=pa.float64(), mask=~plan.valid)
    table = plan.table
    if PREDICTION_COLUMN in table.column_names:
        table = table.drop_columns([PREDICTION_COLUMN])
    table = table.append_column(PREDICTION_COLUMN, column)
    try:
        write_output(table, plan.output, versions)
        rejected_file = write_rejections(plan.rejected_file, plan.table, plan.rejections)
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
