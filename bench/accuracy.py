"""The model experiments the README quotes: shapes chosen by cross-validation, then validated.

    .venv/bin/python -m bench.accuracy            # writes bench/results/accuracy.json

1. Cross-validation within each training month (green 2021-01, 2023-01; 3 folds, no month after
   it is read): the ensemble shapes and the time features the gbm recipe uses (core.model.artifact).
2. Train on month M, validate on M+1, as `tripq train` / `tripq evaluate` do: the baseline, and
   the gbm without and with the pickup time. These are the README's accuracy table.

Needs the TLC files in ../shared/data/nyc-tlc; about five minutes on two cores.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.model_selection import KFold

from config import PROJECT_ROOT, get_settings
from core.model.features import COLUMNS, TripFeatures, zone_boroughs
from core.model.recipes import build_pipeline
from core.model.tlc import read_trips, read_zones
from core.model.training import evaluate_model, model_input, train_model

DATA = PROJECT_ROOT.parent / "shared" / "data" / "nyc-tlc"
OUTPUT = Path(__file__).parent / "results" / "accuracy.json"
PAIRS = (("2021-01", "2021-02"), ("2023-01", "2023-02"))
SHAPES: dict[str, dict[str, Any]] = {
    "600 trees x 31 leaves, lr 0.05": {
        "max_iter": 600,
        "max_leaf_nodes": 31,
        "learning_rate": 0.05,
    },
    "300 trees x 63 leaves, lr 0.05": {
        "max_iter": 300,
        "max_leaf_nodes": 63,
        "learning_rate": 0.05,
    },
    "150 trees x 127 leaves, lr 0.1": {
        "max_iter": 150,
        "max_leaf_nodes": 127,
        "learning_rate": 0.1,
    },
}
TIME_SETS = {"hour, weekday": 2, "hour, weekday, holiday": 3}


def _month(name: str) -> Path:
    return DATA / f"green_tripdata_{name}.parquet"


def _rmse(actual: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(predicted) - actual) ** 2)))


def cross_validate(month: str, boroughs: tuple[int, ...], folds: int = 3) -> dict[str, Any]:
    """RMSE of each ensemble shape and time-feature set, by k-fold within one month."""
    trips = read_trips(_month(month))
    rows, minutes = model_input("gbm", trips), trips["duration"].to_numpy()
    recipe = build_pipeline("gbm", boroughs)
    untimed_base = recipe.named_steps["regressor"].untimed
    scores: dict[str, dict[str, list[float]]] = {"untimed": {}, "timed": {}}
    for train, test in KFold(folds, shuffle=True, random_state=0).split(rows):
        features = TripFeatures(boroughs=boroughs, pickup_time=True)
        fitted = features.fit_transform(rows[train], minutes[train])
        held = features.transform(rows[test])
        for name, shape in SHAPES.items():
            model: HistGradientBoostingRegressor = clone(untimed_base).set_params(**shape)
            model.fit(fitted[:, : len(COLUMNS)], minutes[train])
            predicted = model.predict(held[:, : len(COLUMNS)])
            scores["untimed"].setdefault(name, []).append(_rmse(minutes[test], predicted))
            for label, count in TIME_SETS.items():
                columns = len(COLUMNS) + count
                model = clone(untimed_base).set_params(**shape)
                model.fit(fitted[:, :columns], minutes[train])
                predicted = model.predict(held[:, :columns])
                key = f"{name}; {label}"
                scores["timed"].setdefault(key, []).append(_rmse(minutes[test], predicted))
    return {
        part: {key: round(float(np.mean(values)), 4) for key, values in found.items()}
        for part, found in scores.items()
    }


def validate(train: str, valid: str, zones_file: Path, work: Path) -> dict[str, Any]:
    """Train the baseline and the gbm on `train`, validate both on `valid`."""
    zones = read_zones(zones_file)
    result: dict[str, Any] = {}
    for kind in ("baseline", "gbm"):
        started = time.perf_counter()
        out = work / f"{kind}-{train}"
        train_model([_month(train)], _month(valid), out, kind=kind, zones=zones)
        fit_s = time.perf_counter() - started
        scores = evaluate_model(out, [_month(valid)])
        row = {"three_fields_rmse": round(scores["rmse"], 4), "train_s": round(fit_s, 1)}
        if scores["pickup"] is not None:
            row["with_pickup_rmse"] = round(scores["pickup"]["rmse"], 4)
        result[kind] = row
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--skip-cv", action="store_true", help="Only train and validate.")
    args = parser.parse_args()
    zones_file = get_settings().zones_file
    boroughs = zone_boroughs(read_zones(zones_file))
    report: dict[str, Any] = {"validation": {}, "cross_validation": {}}
    with tempfile.TemporaryDirectory(prefix="tripq-accuracy-") as tmp:
        for train, valid in PAIRS:
            print(f"train {train} -> validate {valid}", flush=True)
            report["validation"][f"{train} -> {valid}"] = validate(
                train, valid, zones_file, Path(tmp)
            )
            if not args.skip_cv:
                print(f"cross-validating within {train}", flush=True)
                report["cross_validation"][train] = cross_validate(train, boroughs)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
