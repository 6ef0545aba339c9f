"""The recipes: each model kind's pipeline shape, and the baseline compiled to a few weights.

gbm        TripFeatures (core.model.features) -> PickupAwareRegressor (core.model.trees)
baseline   DictVectorizer ({"PU_DO": "43_151", "trip_distance": 1.01}) -> LinearRegression
           (served by LinearScorer: the same arithmetic without the vectorizer)
"""

import platform
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.feature_extraction import DictVectorizer
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import Pipeline

from core.errors import ModelError
from core.model.features import TripFeatures
from core.model.registry import MODEL_KINDS
from core.model.trees import PickupAwareRegressor

_LIBRARIES = ("scikit-learn", "skops", "numpy", "pandas")

Features = dict[str, str | float]

# The recipes (core.model.registry.MODEL_KINDS), each a fixed pipeline shape.
PIPELINE_STEPS: dict[str, tuple[type, ...]] = {
    "gbm": (TripFeatures, PickupAwareRegressor),
    "baseline": (DictVectorizer, LinearRegression),
}
# The evaluator of a baseline: its compiled linear scorer (LinearScorer).
LINEAR = "linear"
if tuple(PIPELINE_STEPS) != MODEL_KINDS:
    raise RuntimeError("core.model.registry.MODEL_KINDS must name every recipe of PIPELINE_STEPS")


def trip_features(pu: int | str, do: int | str, distance: float) -> Features:
    """Return the model's input for one trip; training and serving both call this."""
    # TLC files hold zone ids as int or str depending on the year; f-strings agree on both.
    return {"PU_DO": f"{pu}_{do}", "trip_distance": float(distance)}


class LinearScorer:
    """The baseline pipeline, compiled: one weight per zone pair, one for distance, an intercept.

    DictVectorizer one-hot encodes `PU_DO` and passes `trip_distance` through, so the linear model
    reads exactly two features of a trip and its prediction is
    `intercept + weight[PU_DO] + weight_distance * trip_distance` (a pair it never saw weighs 0).
    Computing that directly gives the pipeline's answers (to rounding) at a few hundred
    nanoseconds a trip instead of DictVectorizer's tens of microseconds.
    """

    def __init__(self, vectorizer: DictVectorizer, regression: LinearRegression) -> None:
        coef = np.asarray(regression.coef_, dtype=np.float64).ravel()
        prefix = f"PU_DO{vectorizer.separator}"
        self.pair_weights: dict[str, float] = {
            name[len(prefix) :]: float(coef[index])
            for name, index in vectorizer.vocabulary_.items()
            if name.startswith(prefix)
        }
        index = vectorizer.vocabulary_.get("trip_distance")
        self.distance_weight = 0.0 if index is None else float(coef[index])
        self.intercept = float(np.asarray(regression.intercept_).ravel()[0])

    def predict(
        self, pu: Sequence[int | str], do: Sequence[int | str], distance: Sequence[float]
    ) -> list[float]:
        """Predict minutes for trips given as columns."""
        weights, slope, intercept = self.pair_weights, self.distance_weight, self.intercept
        return [
            intercept + weights.get(f"{p}_{d}", 0.0) + slope * x
            for p, d, x in zip(pu, do, distance, strict=True)
        ]


def library_versions() -> dict[str, str]:
    """Return the versions of python and the libraries an artifact depends on."""
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = package_version(name)
        except PackageNotFoundError:
            versions[name] = "absent"
    return versions


_GBM_COMMON: dict[str, Any] = {
    "min_samples_leaf": 50,
    "l2_regularization": 1.0,
    "max_features": 0.8,
    "early_stopping": False,
    "random_state": 0,
}


def build_pipeline(kind: str, boroughs: tuple[int, ...] = ()) -> Pipeline:
    """Return an unfitted pipeline of the given kind (`boroughs`: see core.model.features)."""
    if kind == "baseline":
        # The MLOps Zoomcamp baseline, unchanged, so its validation RMSE (7.7587) stays comparable.
        return Pipeline([("vectorizer", DictVectorizer()), ("regressor", LinearRegression())])
    if kind == "gbm":
        # Shapes chosen by cross-validation within the training months (2021-01 and 2023-01),
        # never on a validation month: bench/model_experiments.py, README "The model".
        untimed = HistGradientBoostingRegressor(
            learning_rate=0.05, max_iter=300, max_leaf_nodes=63, **_GBM_COMMON
        )
        timed = HistGradientBoostingRegressor(
            learning_rate=0.1, max_iter=150, max_leaf_nodes=127, **_GBM_COMMON
        )
        features = TripFeatures(boroughs=boroughs, pickup_time=True)
        regressor = PickupAwareRegressor(untimed=untimed, timed=timed)
        return Pipeline([("features", features), ("regressor", regressor)])
    raise ModelError(f"unknown model kind {kind!r}; known kinds: {', '.join(PIPELINE_STEPS)}")
