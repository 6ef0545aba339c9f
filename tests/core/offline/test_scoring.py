"""`tripq score`: whole files through a real Redis and a real worker, resumed, and by the CLI."""

import asyncio
import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import redis

from config import PROJECT_ROOT, Settings
from core.errors import DeadlineExceeded
from core.model.artifact import TripModel, load_model
from core.model.registry import resolve_model_dir
from core.offline.parts import MODEL_VERSIONS_KEY, PREDICTION_COLUMN, work_dir_for
from core.offline.plan import plan_scoring
from core.offline.reading import as_floats, pickup_times
from core.offline.scoring import ChunkDone, score_file
from core.trip.contract import check_columns
from tests.support import SHARED_DATA, Service, start_worker, tripq_env

MONTH = SHARED_DATA / "green_tripdata_2021-02.parquet"
TRIPQ = Path(sys.executable).with_name("tripq")
CLI_TIMEOUT_S = 120.0

# Planted bad rows: position -> (column, value, the field the reason must name).
BAD_ROWS = {
    5: ("PULocationID", None, "PULocationID is missing"),
    17: ("DOLocationID", 0, "DOLocationID is outside 1..265"),
    100: ("trip_distance", -1.5, "trip_distance is outside"),
    2500: ("trip_distance", math.nan, "trip_distance is missing"),
}


@pytest.fixture(scope="module")
def worker(redis_url: str, log_dir: Path) -> Iterator[None]:
    """One real worker process on the module's Redis (no API: scoring talks to the queue)."""
    process = start_worker(tripq_env(redis_url, log_dir), log_dir)
    try:
        yield
    finally:
        process.stop()


@pytest.fixture(scope="module")
def settings(redis_url: str) -> Settings:
    """Settings that reach the module's Redis, as the CLI's would through REDIS_URL."""
    return Settings(redis_url=redis_url, celery_broker_url=None, celery_result_backend=None)


@pytest.fixture(scope="module")
def model() -> TripModel:
    """The default model, the one the worker serves, to check every answer with."""
    return load_model(resolve_model_dir(PROJECT_ROOT / "repo" / "models", None))


def synthetic_trips(rows: int, seed: int = 7) -> pa.Table:
    """TLC-shaped trips with an id and a timestamp beside the model's three columns."""
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "trip_id": [f"t{i}" for i in range(rows)],
            "lpep_pickup_datetime": pa.array(
                np.datetime64("2021-02-01T00:00:00") + np.arange(rows) * np.timedelta64(7, "s")
            ),
            "PULocationID": rng.integers(1, 266, rows),
            "DOLocationID": rng.integers(1, 266, rows),
            "trip_distance": rng.uniform(0.0, 30.0, rows).round(2),
        }
    )


def real_trips(rows: int) -> pa.Table:
    """A sample of green 2021-02 (zone ids as text there), with an id to follow the order."""
    if not MONTH.exists():
        pytest.skip(f"the real TLC file is absent: {MONTH}")
    month = pq.read_table(MONTH)
    plausible = np.flatnonzero(month["trip_distance"].to_numpy() <= 200.0)
    picked = np.sort(np.random.default_rng(2).choice(plausible, rows, replace=False))
    sample = month.take(pa.array(picked))
    return sample.add_column(0, "trip_id", pa.array([f"t{i}" for i in range(rows)]))


def with_bad_rows(table: pa.Table) -> pa.Table:
    """Plant BAD_ROWS in `table`, each value in the column's own type."""
    for row, (name, value, _) in BAD_ROWS.items():
        values = table[name].to_pylist()
        kind = table.schema.field(name).type
        values[row] = str(value) if value is not None and pa.types.is_string(kind) else value
        table = table.set_column(table.column_names.index(name), name, pa.array(values, kind))
    return table


def write(table: pa.Table, path: Path) -> Path:
    """Write `table` as parquet or CSV, by the extension of `path`."""
    if path.suffix == ".parquet":
        pq.write_table(table, path)
    else:
        pacsv.write_csv(table, path)
    return path


def read(path: Path) -> pa.Table:
    """Read a parquet or CSV file."""
    return pq.read_table(path) if path.suffix == ".parquet" else pacsv.read_csv(path)


def assert_scored(source: Path, output: Path, model: TripModel) -> None:
    """Check OUTPUT against the input and the model, and the side file against BAD_ROWS."""
    given, scored = read(source), read(output)
    assert scored.column_names == [*given.column_names, PREDICTION_COLUMN]
    assert scored.num_rows == given.num_rows
    assert scored["trip_id"].to_pylist() == given["trip_id"].to_pylist()
    for name in given.column_names:
        # Arrays, not Arrow's equals: a planted NaN equals itself here.
        np.testing.assert_array_equal(
            scored[name].to_numpy(), given[name].to_numpy(), err_msg=f"column {name} changed"
        )
    predicted = scored[PREDICTION_COLUMN].to_pylist()
    good = [i for i in range(given.num_rows) if i not in BAD_ROWS]
    zones = [as_floats(given[n], n) for n in ("PULocationID", "DOLocationID")]
    # The files' pickup times are New York wall-clock times: seconds on that clock.
    pickup = pd.to_datetime(given["lpep_pickup_datetime"].to_pandas())
    seconds = (pickup - pd.Timestamp("1970-01-01")).dt.total_seconds().tolist()
    expected = model.predict_columns(
        [int(zones[0][i]) for i in good],
        [int(zones[1][i]) for i in good],
        [float(given["trip_distance"][i].as_py()) for i in good],
        [seconds[i] for i in good],
    )
    wrong = [
        i
        for i, want in zip(good, expected, strict=True)
        if predicted[i] is None or abs(predicted[i] - want) > 1e-9 * max(1.0, abs(want))
    ]
    assert wrong == [], f"{len(wrong)} rows differ from the model, first {wrong[:5]}"
    assert [predicted[i] for i in BAD_ROWS] == [None] * len(BAD_ROWS)
    rejected = pacsv.read_csv(output.with_name(f"{output.stem}.rejected.csv"))
    assert rejected["row"].to_pylist() == sorted(BAD_ROWS)
    for row, reason, trip_id in zip(
        rejected["row"].to_pylist(),
        rejected["reason"].to_pylist(),
        rejected["trip_id"].to_pylist(),
        strict=True,
    ):
        assert BAD_ROWS[row][2] in reason
        assert trip_id == f"t{row}"


def test_check_columns_names_the_field_of_every_problem() -> None:
    columns = [
        as_floats(pa.chunked_array([pa.array(["1", " 265 ", "abc", "3.5", "7", None])]), "PU"),
        as_floats(pa.chunked_array([pa.array([1, 2, 3, 4, 266, 5])]), "DO"),
        as_floats(pa.chunked_array([pa.array([0.0, 200.0, math.inf, 1.0, 2.0, None])]), "d"),
    ]

    valid, rejections = check_columns(columns[0], columns[1], columns[2])

    assert valid.tolist() == [True, True, False, False, False, False]
    assert rejections.rows.tolist() == [2, 3, 4, 5]
    assert rejections.reasons == [
        "PULocationID is missing or not a number; trip_distance is not finite",
        "PULocationID is not a whole number",
        "DOLocationID is outside 1..265",
        "PULocationID is missing or not a number; trip_distance is missing or not a number",
    ]


def test_pickup_times_are_read_as_new_york_time_and_bad_ones_refused_by_name() -> None:
    table = pa.table(
        {
            "tpep_pickup_datetime": [
                "2021-02-05T08:30:00",
                None,
                "2021-02-05T13:30:00Z",
                "not a time",
                "2008-12-31T23:00:00",
            ]
        }
    )

    found = pickup_times(table)

    assert found is not None
    name, seconds = found
    assert name == "tpep_pickup_datetime"
    assert seconds[0] == seconds[2] == 1_612_513_800.0  # 08:30 in New York, either way
    assert math.isnan(seconds[1])  # no time: the model answers from the three fields
    ones = np.ones(5)
    valid, rejections = check_columns(ones, ones, ones, found)
    assert valid.tolist() == [True, True, True, False, False]
    assert rejections.reasons == ["tpep_pickup_datetime is not a date and time in 2009-2100"] * 2


@pytest.mark.usefixtures("worker")
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_synthetic_file_is_scored_by_the_model_with_bad_rows_set_aside(
    tmp_path: Path, settings: Settings, model: TripModel, suffix: str
) -> None:
    source = write(with_bad_rows(synthetic_trips(3000)), tmp_path / f"trips{suffix}")
    output = tmp_path / f"scored{suffix}"

    result = asyncio.run(score_file(source, output, settings, chunk_rows=700))

    assert (result.rows, result.scored, result.rejected) == (3000, 3000 - len(BAD_ROWS), 4)
    assert (result.chunks, result.chunks_done, result.chunks_skipped) == (5, 5, 0)
    assert result.model_versions == (model.version,)
    assert_scored(source, output, model)
    assert not work_dir_for(output).exists()


@pytest.mark.realdata
@pytest.mark.usefixtures("worker")
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_sample_of_green_2021_02_is_scored_by_the_model(
    tmp_path: Path, settings: Settings, model: TripModel, suffix: str
) -> None:
    source = write(with_bad_rows(real_trips(3000)), tmp_path / f"green{suffix}")
    output = tmp_path / f"scored{suffix}"

    result = asyncio.run(score_file(source, output, settings, chunk_rows=1000))

    assert (result.scored, result.rejected) == (3000 - len(BAD_ROWS), len(BAD_ROWS))
    assert_scored(source, output, model)
    if suffix == ".parquet":
        metadata = pq.read_schema(output).metadata
        assert json.loads(metadata[MODEL_VERSIONS_KEY]) == [model.version]


@pytest.mark.usefixtures("worker")
def test_an_interrupted_run_resumes_without_sending_finished_chunks_again(
    tmp_path: Path, settings: Settings, model: TripModel
) -> None:
    source = write(with_bad_rows(synthetic_trips(5000, seed=11)), tmp_path / "trips.parquet")
    output = tmp_path / "scored.parquet"
    first: list[ChunkDone] = []

    def interrupt_after_two(chunk: ChunkDone) -> None:
        first.append(chunk)
        if len(first) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(
            score_file(
                source, output, settings, chunk_rows=1000, in_flight=2, on_chunk=interrupt_after_two
            )
        )

    kept = sorted(p.name for p in work_dir_for(output).glob("chunk-*.parquet"))
    assert kept == [f"chunk-{c.index:06d}.parquet" for c in sorted(first, key=lambda c: c.index)]
    assert not output.exists()

    second: list[ChunkDone] = []
    # No chunk size given: the rerun takes the interrupted run's.
    result = asyncio.run(score_file(source, output, settings, on_chunk=second.append))

    skipped = {c.index for c in second if c.skipped}
    sent = {c.index for c in second if not c.skipped}
    assert skipped == {c.index for c in first}
    assert sent == set(range(5)) - skipped
    assert (result.chunks_skipped, result.chunks_done) == (2, 3)
    assert_scored(source, output, model)
    assert not work_dir_for(output).exists()


@pytest.mark.usefixtures("worker")
def test_chunks_left_by_another_input_are_discarded_not_reused(
    tmp_path: Path, settings: Settings, model: TripModel
) -> None:
    output = tmp_path / "scored.parquet"
    source = tmp_path / "trips.parquet"
    write(with_bad_rows(synthetic_trips(3000, seed=1)), source)
    seen: list[ChunkDone] = []

    def interrupt_after_one(chunk: ChunkDone) -> None:
        seen.append(chunk)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(
            score_file(source, output, settings, chunk_rows=1000, on_chunk=interrupt_after_one)
        )
    assert list(work_dir_for(output).glob("chunk-*.parquet"))
    write(with_bad_rows(synthetic_trips(3000, seed=2)), source)
    plan = plan_scoring(source, output, chunk_rows=1000)
    assert not plan.done
    assert plan.notice is not None
    assert "another input" in plan.notice

    result = asyncio.run(score_file(source, output, settings, chunk_rows=1000))

    assert (result.chunks_skipped, result.chunks_done) == (0, 3)
    assert_scored(source, output, model)


@pytest.mark.usefixtures("worker")
def test_a_chunk_nobody_answers_is_sent_again_then_the_run_stops_saying_how_to_resume(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    # A worker is alive, but no worker consumes this queue: every chunk times out.
    unserved = "tasks.trip.score-unserved"
    settings = Settings(
        redis_url=redis_url, celery_broker_url=None, celery_result_backend=None, queue=unserved
    )
    source = write(synthetic_trips(1000), tmp_path / "trips.parquet")
    output = tmp_path / "scored.parquet"

    try:
        with pytest.raises(DeadlineExceeded, match="run the same command again to resume"):
            asyncio.run(score_file(source, output, settings, timeout_s=0.3, retries=1))
        sent = redis_client.llen(unserved)
    finally:
        redis_client.delete(unserved)

    assert sent == 2
    assert not output.exists()


@pytest.mark.usefixtures("worker")
def test_the_score_command_writes_the_output_and_ends_with_a_json_summary(
    tmp_path: Path, redis_url: str, log_dir: Path, model: TripModel
) -> None:
    source = write(with_bad_rows(synthetic_trips(3000, seed=5)), tmp_path / "trips.csv")
    output = tmp_path / "scored.parquet"

    done = subprocess.run(
        [str(TRIPQ), "score", str(source), "--output", str(output), "--chunk-rows", "1000"],
        env=tripq_env(redis_url, log_dir),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["output"] == str(output.resolve())
    assert (summary["rows"], summary["scored"], summary["rejected"]) == (3000, 2996, 4)
    assert summary["model_versions"] == [model.version]
    assert summary["rejected_file"] == str(tmp_path.resolve() / "scored.rejected.csv")
    scored = pq.read_table(output)
    assert scored.num_rows == 3000
    assert scored[PREDICTION_COLUMN].null_count == len(BAD_ROWS)


def test_a_file_without_a_required_column_is_refused_naming_it(
    tmp_path: Path, log_dir: Path
) -> None:
    source = write(synthetic_trips(10).drop_columns(["trip_distance"]), tmp_path / "trips.csv")
    command = Service(
        "score-missing-column",
        ["score", str(source), "--output", str(tmp_path / "scored.csv")],
        tripq_env("redis://127.0.0.1:1/0", log_dir),
        log_dir,
    )

    code = command.finish(CLI_TIMEOUT_S)

    assert code != 0
    assert "no column trip_distance" in command.log_tail()
    assert not (tmp_path / "scored.csv").exists()
