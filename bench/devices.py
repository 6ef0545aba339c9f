"""The GPU path against the CPU path, side by side in one run: predictions/s by call size.

    .venv/bin/python -m bench.devices --device cuda     # a GPU machine (bench/gpu_check.sh runs it)
    .venv/bin/python -m bench.devices --device cpu      # the same harness on PyTorch's CPU device

For calls of 1, 64, 10,000 and 100,000 trips of green 2021-02 with their pickup times (100,000
repeats the month's 61,921), the median time of one whole worker call, features and trees:
- `cpu path`: what a worker without a GPU runs (compiled trees, scikit-learn's walk above 2,000
  trips), on one OpenMP thread, as each of a worker's inference threads;
- `device path`: the features and trees as tensors on --device (core.model.accelerator), every
  size sent there (ACCELERATOR_MIN_BATCH=1), answers copied back to the host.
The two alternate size by size, and each size's device answers are checked against the CPU path's
(the largest difference is recorded). Trips come from ../shared/data/nyc-tlc; where it is absent
(a GPU machine with the repository alone), from random zone pairs, distances and pickup times, and
the results file says so.
"""

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from bench.evaluators import MONTH, median_ms
from config import get_settings
from core.model.artifact import load_model
from core.model.registry import resolve_model_dir
from core.model.tlc import PICKUP_COLUMN, read_trips
from core.model.trees import compile_in_child
from core.trip.contract import TRIP_COLUMNS

SIZES = (1, 64, 10_000, 100_000)
RESULTS = Path(__file__).parent / "results"


def describe(device: str) -> dict[str, Any]:
    """Name the machine the figures come from."""
    gpu = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None
    return {
        "device": device,
        "gpu": gpu,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }


def some_trips(count: int) -> tuple[str, tuple[list[Any], ...]]:
    """`count` trips as columns, and where they come from: the month, repeated, or random."""
    if MONTH.is_file():
        trips = read_trips(MONTH).sample(frac=1.0, random_state=0).reset_index(drop=True)
        repeat = -(-count // len(trips))
        columns = [trips[c].tolist() * repeat for c in (*TRIP_COLUMNS, PICKUP_COLUMN)]
        return MONTH.name, tuple(column[:count] for column in columns)
    rng = np.random.default_rng(0)
    pu, do = rng.integers(1, 266, count), rng.integers(1, 266, count)
    miles = rng.gamma(2.0, 1.5, count)
    seconds = rng.uniform(1_609_459_200, 1_672_531_200, count)  # 2021-2022
    return "random", (pu.tolist(), do.tolist(), miles.tolist(), seconds.tolist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="a PyTorch device: cuda, cuda:1, cpu")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="trips per call")
    parser.add_argument("--budget-s", type=float, default=1.0, help="time per measurement")
    parser.add_argument("--output", type=Path, help="default: bench/results/devices-DEVICE.json")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    output = args.output or RESULTS / f"devices-{args.device.split(':')[0]}.json"

    settings = get_settings()
    model_dir = resolve_model_dir(settings.artifact_dir, None)
    cpu, device = load_model(model_dir), load_model(model_dir)
    cpu.use_compiled(compile_in_child(model_dir, settings.tree_cache_dir, settings.tree_compiler))
    device.use_device(args.device, min_trips=1)
    source, (pu, do, miles, seconds) = some_trips(max(sizes))

    results: dict[str, Any] = {
        "model": cpu.version,
        "trips": source,
        "machine": describe(args.device),
        "rows": [],
    }
    print(f"{'trips':>8} {'cpu path/s':>12} {'device/s':>12} {'device/cpu':>10} {'max diff':>9}")
    with threadpool_limits(1):
        for size in sizes:
            call = (pu[:size], do[:size], miles[:size], seconds[:size])
            got, expected = device.predict_columns(*call), cpu.predict_columns(*call)
            cpu_ms = median_ms(lambda: cpu.predict_columns(*call), args.budget_s)  # noqa: B023
            device_ms = median_ms(lambda: device.predict_columns(*call), args.budget_s)  # noqa: B023
            row = {
                "trips": size,
                "cpu_path_ms": cpu_ms,
                "device_path_ms": device_ms,
                "cpu_path_per_s": round(size / cpu_ms * 1000),
                "device_path_per_s": round(size / device_ms * 1000),
                "device_over_cpu": round(cpu_ms / device_ms, 2),
                "max_difference_min": float(np.max(np.abs(np.subtract(got, expected)))),
            }
            results["rows"].append(row)
            print(
                f"{size:>8,} {row['cpu_path_per_s']:>12,} {row['device_path_per_s']:>12,} "
                f"{row['device_over_cpu']:>10} {row['max_difference_min']:>9.1e}",
                flush=True,
            )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"written: {output}")


if __name__ == "__main__":
    main()
