"""A scoring run's plan: the input read and checked, cut into chunks, and what an earlier run left.

Nothing is written while planning: `tripq score` can show the plan, and a run that cannot start
(no Redis, no worker) leaves an earlier run's work folder as it was.
"""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from core.errors import InvalidTrip
from core.offline.parts import (
    MANIFEST,
    fingerprint,
    finished_parts,
    read_manifest,
    rejected_file_for,
    same_input,
    work_dir_for,
)
from core.offline.reading import REQUIRED_COLUMNS, as_floats, check_suffix, pickup_times, read_trips
from core.trip.contract import Floats, Ints, Mask, Rejections, check_columns

# Measured with bench/score.py: chunks much smaller pay the per-task price more often, much
# larger ones leave the client and the worker waiting on each other at the start and the end.
DEFAULT_CHUNK_ROWS = 50_000


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


def plan_scoring(
    input_path: Path, output: Path, *, chunk_rows: int | None = None, restart: bool = False
) -> ScoringPlan:
    """Read and check the input, and find what an earlier run on the same output finished.

    `chunk_rows` None: the earlier run's chunk size, else DEFAULT_CHUNK_ROWS. `restart`: ignore
    what an earlier run finished. Nothing is written here.
    """
    started = time.perf_counter()
    input_path, output = input_path.expanduser().resolve(), output.expanduser().resolve()
    check_suffix(output, "output")
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
    valid, rejections = check_columns(pu, do, miles, times)
    pickup, dropoff = (np.where(valid, c, 0).astype(np.int64) for c in columns[:2])
    distance = np.where(valid, columns[2], 0.0)
    stamp = fingerprint(input_path, table.num_rows)
    earlier = read_manifest(work_dir_for(output))
    same_input_ = earlier is not None and same_input(earlier, stamp)
    if chunk_rows is None:
        # A rerun without --chunk-rows resumes with the cut of the run it continues.
        adopt = earlier.get("chunk_rows") if earlier is not None and same_input_ else None
        chunk_rows = adopt if isinstance(adopt, int) and adopt > 0 else DEFAULT_CHUNK_ROWS
    stamp["chunk_rows"] = chunk_rows
    done: frozenset[int] = frozenset()
    notice = None
    if earlier is not None:
        work_dir = work_dir_for(output)
        if restart:
            notice = f"--restart: the chunks an earlier run left in {work_dir} are discarded"
        elif not earlier:
            notice = f"{work_dir} holds no readable {MANIFEST}: its chunks are discarded"
        elif not same_input_:
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
            done = finished_parts(work_dir, table.num_rows, chunk_rows)
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
