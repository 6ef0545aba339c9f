"""How fast each tree evaluator runs the default gbm, one thread, on real trips.

    .venv/bin/python -m bench.evaluators        # writes bench/results/evaluators.json

For 1, 64 and 10,000 trips of green 2021-02 (with and without their pickup times), the median
time of one call of: scikit-learn's own predict, treelite's GTIL interpreter, and the tl2cgen
library tripq's workers run (core.model.trees), each on the same feature matrix; and the whole
model call a worker makes (features + compiled trees). Needs ../shared/data/nyc-tlc.
"""

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import treelite
from threadpoolctl import threadpool_limits

from config import PROJECT_ROOT, get_settings
from core.model.artifact import TripModel, load_model
from core.model.registry import resolve_model_dir
from core.model.tlc import PICKUP_COLUMN, read_trips
from core.model.trees import (
    CompiledEvaluator,
    Floats,
    PickupAwareRegressor,
    compile_in_child,
    route,
)

MONTH = PROJECT_ROOT.parent / "shared" / "data" / "nyc-tlc" / "green_tripdata_2021-02.parquet"
OUTPUT = Path(__file__).parent / "results" / "evaluators.json"
SIZES = (1, 64, 256, 1_000, 2_500, 10_000)


def median_ms(call: Callable[[], object], budget_s: float = 1.0) -> float:
    """Median time of `call` over repeats that fill about `budget_s` (at least 5)."""
    call()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - started < budget_s:
        begin = time.perf_counter()
        call()
        times.append(time.perf_counter() - begin)
        if len(times) >= 2000:
            break
    return round(statistics.median(times) * 1000, 4)


def measure(
    models: tuple[TripModel, TripModel],
    native: CompiledEvaluator,
    call: tuple[list[int], list[int], list[float], list[float] | None],
) -> dict[str, float]:
    """Time each evaluator on one call's trips: the trees alone, then the whole worker call."""
    reference, compiled = models
    regressor = reference.regressor
    assert isinstance(regressor, PickupAwareRegressor)
    gtil = {name: treelite.sklearn.import_model(e) for name, e in regressor.ensembles().items()}

    def interpret(name: str) -> Callable[[Floats], Floats]:
        return lambda rows: np.asarray(treelite.gtil.predict(gtil[name], rows, nthread=1))

    matrix = reference.feature_matrix(*call)
    return {
        "scikit-learn trees": median_ms(lambda: regressor.predict(matrix)),
        "treelite GTIL trees": median_ms(
            lambda: route(matrix, interpret("untimed"), interpret("timed"))
        ),
        "tl2cgen trees (compiled)": median_ms(lambda: native.predict(matrix)),
        "worker call, compiled": median_ms(lambda: compiled.predict_columns(*call)),
        "worker call, scikit-learn": median_ms(lambda: reference.predict_columns(*call)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    settings = get_settings()
    model_dir = resolve_model_dir(settings.artifact_dir, None)
    libraries = compile_in_child(model_dir, settings.tree_cache_dir, settings.tree_compiler)
    reference, compiled = load_model(model_dir), load_model(model_dir)
    compiled.use_compiled(libraries)
    native = CompiledEvaluator(libraries)  # compiled code at every size, no hand-over
    trips = read_trips(MONTH).sample(frac=1.0, random_state=0).reset_index(drop=True)
    pu, do = (trips[c].astype(int).tolist() for c in ("PULocationID", "DOLocationID"))
    distance, times = trips["trip_distance"].tolist(), trips[PICKUP_COLUMN].tolist()
    results: dict[str, Any] = {"model": reference.version, "rows": {}}
    with threadpool_limits(1):  # one OpenMP thread, as in a worker
        for size in SIZES:
            for label, pickup in (("without", None), ("with", times[:size])):
                call = (pu[:size], do[:size], distance[:size], pickup)
                row = measure((reference, compiled), native, call)
                results["rows"][f"{size} trips, {label} pickup time"] = row
                print(f"{size:>6} trips, {label} pickup time: {row}", flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
