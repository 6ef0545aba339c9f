"""Measure `tripq score` (core.offline.scoring) against one real worker process.

    .venv/bin/python -m bench.score
    .venv/bin/python -m bench.score --chunk-rows 10000,25000,50000,100000 --repeat 3

Starts an embedded Redis on a free port and `tripq worker --processes 1`, scores green 2021-02
(61,921 rows, from ../shared/data/nyc-tlc) and a million synthetic rows (zones and distances
sampled from that month, written to a temporary parquet file), prints rows, seconds and rows/s
per run, and stops everything. The time is the library call's: reading, checking, sending,
waiting, writing OUTPUT; not the worker's start.
"""

import argparse
import asyncio
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import redis

from bench.runner import free_port
from config import PROJECT_ROOT, Settings, child_environment
from core.infra.embedded_redis import EmbeddedRedis
from core.infra.launch import Child, tripq_argv
from core.offline.plan import DEFAULT_CHUNK_ROWS
from core.offline.scoring import DEFAULT_IN_FLIGHT, score_file

MONTH = PROJECT_ROOT.parent / "shared" / "data" / "nyc-tlc" / "green_tripdata_2021-02.parquet"
SYNTHETIC_ROWS = 1_000_000
TARGETS_S = {"green 2021-02": 5.0, "synthetic": 30.0}
_START_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 20.0


def write_synthetic(path: Path, rows: int, source: Path) -> None:
    """Write `rows` trips whose zones and distances are drawn from the trips of `source`."""
    month = pq.read_table(source, columns=["PULocationID", "DOLocationID", "trip_distance"])
    pickup = month["PULocationID"].cast(pa.int64()).to_numpy()
    dropoff = month["DOLocationID"].cast(pa.int64()).to_numpy()
    distance = month["trip_distance"].to_numpy()
    keep = (distance >= 0.0) & (distance <= 200.0)
    rng = np.random.default_rng(2021)
    drawn = rng.choice(np.flatnonzero(keep), rows)
    table = pa.table(
        {
            "PULocationID": pickup[drawn],
            "DOLocationID": dropoff[drawn],
            "trip_distance": distance[drawn],
        }
    )
    pq.write_table(table, path)


def start_worker(stack: ExitStack, work: Path) -> str:
    """Start Redis and one worker process; return the Redis URL once the worker holds a model."""
    server = EmbeddedRedis(free_port(), work / "redis", appendonly=False).start()
    stack.callback(server.stop)
    env = child_environment(
        REDIS_URL=server.url, LOG_DIR=str(work / "logs"), LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1"
    )
    argv = tripq_argv("worker", "--processes", "1")
    worker = Child("tripq-worker", argv, env, work, _STOP_TIMEOUT_S)
    stack.callback(worker.stop)
    client = redis.Redis.from_url(server.url)
    stack.callback(client.close)
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not any(b'"model_version": "' in v for v in client.hvals("tripq:workers:info")):
        if not worker.alive():
            raise SystemExit(f"the worker exited at start:\n{worker.log_tail()}")
        if time.monotonic() > deadline:
            raise SystemExit(f"no worker held a model within {_START_TIMEOUT_S:g} s")
        time.sleep(0.1)
    return server.url


def measure(
    name: str, source: Path, work: Path, settings: Settings, chunk_rows: int, in_flight: int
) -> tuple[float, tuple[str, ...]]:
    """Score `source` once into a fresh output; the seconds the library call took, and the
    model versions that answered."""
    output = work / f"{name.replace(' ', '-')}-{chunk_rows}.parquet"
    started = time.perf_counter()
    result = asyncio.run(
        score_file(source, output, settings, chunk_rows=chunk_rows, in_flight=in_flight)
    )
    seconds = time.perf_counter() - started
    if result.chunks_skipped or result.rows != result.scored + result.rejected:
        raise SystemExit(f"unexpected result: {result.summary()}")
    output.unlink()
    if result.rejected_file is not None:
        result.rejected_file.unlink()
    return seconds, result.model_versions


def main() -> None:
    """Run the measurements and print them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk-rows", default=str(DEFAULT_CHUNK_ROWS), help="comma-separated")
    parser.add_argument("--in-flight", type=int, default=DEFAULT_IN_FLIGHT)
    parser.add_argument("--repeat", type=int, default=3, help="runs per point; the median counts")
    parser.add_argument("--synthetic-rows", type=int, default=SYNTHETIC_ROWS)
    args = parser.parse_args()
    if not MONTH.exists():
        raise SystemExit(f"{MONTH} is absent: the measurement needs green 2021-02")
    sizes = [int(size) for size in args.chunk_rows.split(",")]
    with tempfile.TemporaryDirectory(prefix="tripq-bench-score-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        synthetic = work / "synthetic.parquet"
        write_synthetic(synthetic, args.synthetic_rows, MONTH)
        settings = Settings(
            redis_url=start_worker(stack, work), celery_broker_url=None, celery_result_backend=None
        )
        sources = {"green 2021-02": MONTH, "synthetic": synthetic}
        print(f"one worker process; in flight {args.in_flight}; median of {args.repeat} runs")
        print(f"{'input':<14} {'rows':>10} {'chunk rows':>10} {'seconds':>8} {'rows/s':>10}  runs")
        for name, source in sources.items():
            rows = pq.read_metadata(source).num_rows
            for size in sizes:
                measured = [
                    measure(name, source, work, settings, size, args.in_flight)
                    for _ in range(args.repeat)
                ]
                runs = [seconds for seconds, _ in measured]
                models = ",".join(sorted({v for _, versions in measured for v in versions}))
                median = statistics.median(runs)
                verdict = "ok" if median < TARGETS_S[name] else f"over {TARGETS_S[name]:g} s"
                print(
                    f"{name:<14} {rows:>10,} {size:>10,} {median:>8.2f} {rows / median:>10,.0f}  "
                    f"{' '.join(f'{s:.2f}' for s in runs)}  {verdict}  ({models})",
                    flush=True,
                )


if __name__ == "__main__":
    main()
