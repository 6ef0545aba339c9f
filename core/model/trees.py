"""The gbm's boosted trees: two ensembles, and the evaluators that walk them.

    features (core.model.features, 16 columns: 13 of zones and distance, 3 of pickup time or NaN)
      ─ rows with a pickup time ──> `timed` ensemble, all 16 columns
      ─ rows without one ─────────> `untimed` ensemble, the first 13 columns
      ─> minutes

Two ensembles rather than one that learns to ignore missing times: trained on its own, the
three-field ensemble answers a trip without a time exactly as well as a model that never heard
of times, and the timed one spends all of its trees on trips that have one (README "The model").

An evaluator runs both ensembles. scikit-learn's own walks its trees one Python call each
(~1-2 ms a call, however few the trips). The compiled one runs C that tl2cgen generates from
the trees, built by gcc into a shared library: about 30x faster for one trip, 1.3-3x for tens to
hundreds; from about 2,000 trips on scikit-learn's walk is as fast, and large calls go to it.
Nothing native is trusted that was not derived from a verified artifact: the library is built in a
child process (`python -m core.model.trees`) that loads the artifact itself, with its hash checked
(core.model.artifact.load_model), and it is cached under the artifact's sha256 in a folder only this
user can write. Before a library serves, it must give the scikit-learn evaluator's answers to 1e-6
on a fixed set of probe rows; a library that cannot be built, loaded or trusted leaves the model on
scikit-learn's evaluator, and the worker says so (`evaluator` in /ready, `tripq workers`, metrics).
"""

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.ensemble import HistGradientBoostingRegressor

from core.errors import ModelError
from core.model.features import COLUMNS, TIME_COLUMNS
from core.model.registry import read_card

Floats = NDArray[np.float64]

SKLEARN = "scikit-learn"
COMPILED = "compiled"  # tl2cgen's C, built with the configured compiler

BASE_COLUMNS = len(COLUMNS)
TIMED_COLUMNS = len(COLUMNS) + len(TIME_COLUMNS)
ENSEMBLES = ("untimed", "timed")
MAX_DIFFERENCE = 1e-6  # minutes: a compiled library must answer the probe rows within this

# Above this many trips a call is evaluated by scikit-learn's walk (see CompiledEvaluator).
LARGE_CALL = 2_000
_COMPILE_TIMEOUT_S = 600.0
_PROBE_ROWS = 512


class PickupAwareRegressor(RegressorMixin, BaseEstimator):  # type: ignore[misc]
    """Two boosted ensembles: one for trips with a pickup time, one for trips without."""

    def __init__(
        self,
        untimed: HistGradientBoostingRegressor | None = None,
        timed: HistGradientBoostingRegressor | None = None,
    ) -> None:
        self.untimed = untimed
        self.timed = timed

    def fit(self, features: Floats, minutes: NDArray[np.float64]) -> "PickupAwareRegressor":
        """Fit the untimed ensemble on every trip, the timed one on trips with a pickup time."""
        features = np.asarray(features, dtype=np.float64)
        target = np.asarray(minutes, dtype=np.float64)
        timed = has_time(features)
        self.untimed_ = clone(self.untimed).fit(features[:, :BASE_COLUMNS], target)
        self.timed_ = clone(self.timed).fit(features[timed], target[timed])
        self.n_features_in_ = TIMED_COLUMNS
        return self

    def predict(self, features: Floats) -> Floats:
        """Predict minutes, each row by the ensemble its pickup time calls for."""
        return route(
            np.asarray(features, dtype=np.float64), self.untimed_.predict, self.timed_.predict
        )

    def ensembles(self) -> dict[str, HistGradientBoostingRegressor]:
        """The fitted ensembles by name (ENSEMBLES)."""
        return {"untimed": self.untimed_, "timed": self.timed_}


def has_time(features: Floats) -> NDArray[np.bool_]:
    """Tell which rows of a feature matrix carry a pickup time."""
    return np.isfinite(features[:, TIMED_COLUMNS - 1])


def route(
    features: Floats,
    untimed: Callable[[Floats], Floats],
    timed: Callable[[Floats], Floats],
) -> Floats:
    """Predict each row with `timed` (all columns) or `untimed` (base columns), by its time."""
    with_time = has_time(features)
    if with_time.all():
        return np.asarray(timed(features), dtype=np.float64).ravel()
    if not with_time.any():
        return np.asarray(untimed(features[:, :BASE_COLUMNS]), dtype=np.float64).ravel()
    out = np.empty(len(features))
    out[with_time] = np.asarray(timed(features[with_time])).ravel()
    out[~with_time] = np.asarray(untimed(features[~with_time, :BASE_COLUMNS])).ravel()
    return out


class Evaluator(Protocol):
    """Predict minutes from a feature matrix."""

    name: str

    def predict(self, features: Floats) -> Floats: ...


class SklearnEvaluator:
    """scikit-learn's own tree walk: always available, ~5 ms a call."""

    name = SKLEARN

    def __init__(self, regressor: PickupAwareRegressor) -> None:
        self._regressor = regressor

    def predict(self, features: Floats) -> Floats:
        """Predict minutes with scikit-learn."""
        return self._regressor.predict(features)


class CompiledEvaluator:
    """The ensembles as native code: one tl2cgen library each, loaded once per thread.

    A tl2cgen predictor serves one call at a time, so each inference thread gets its own
    (they share the loaded library); one native thread each, like scikit-learn under tripq.

    Calls of more than `large_call` trips go to scikit-learn's walk instead (`batch`): its
    per-call cost is what the compiled code saves, and from a few thousand trips on its per-trip
    walk is as fast or faster (bench/results/evaluators.json).
    """

    name = COMPILED

    def __init__(
        self,
        libraries: dict[str, Path],
        batch: Evaluator | None = None,
        large_call: int = LARGE_CALL,
    ) -> None:
        try:
            import tl2cgen
        except ImportError as exc:
            raise ModelError(f"cannot run compiled trees: {exc}") from exc
        self._tl2cgen = tl2cgen
        self._libraries = libraries
        self._batch, self._large_call = batch, large_call
        self._local = threading.local()
        # Load now: a library that cannot load fails here, not mid-request.
        try:
            self._predictors()
        except (tl2cgen.exception.TL2cgenError, OSError) as exc:
            raise ModelError(f"cannot load the compiled trees: {exc}") from exc

    def _predictors(self) -> dict[str, Any]:
        predictors: dict[str, Any] | None = getattr(self._local, "predictors", None)
        if predictors is None:
            predictors = {
                name: self._tl2cgen.Predictor(str(path), nthread=1)
                for name, path in self._libraries.items()
            }
            self._local.predictors = predictors
        return predictors

    def predict(self, features: Floats) -> Floats:
        """Predict minutes with the compiled libraries (large calls: with `batch`)."""
        if self._batch is not None and len(features) > self._large_call:
            return self._batch.predict(features)
        predictors = self._predictors()
        return route(
            features,
            lambda rows: self._run(predictors["untimed"], rows),
            lambda rows: self._run(predictors["timed"], rows),
        )

    def _run(self, predictor: Any, rows: Floats) -> Floats:
        try:
            matrix = self._tl2cgen.DMatrix(np.ascontiguousarray(rows, dtype=np.float64))
            predicted: Floats = predictor.predict(matrix).ravel()
        except self._tl2cgen.exception.TL2cgenError as exc:  # e.g. a library of other trees
            raise ModelError(f"the compiled trees cannot answer: {exc}") from exc
        return predicted


# --- Building and caching the libraries ----------------------------------------------------------


@dataclass(frozen=True)
class TreeBuild:
    """How a process builds compiled trees: with which compiler, cached where."""

    compiler: str  # gcc or clang; empty: never compile
    cache_dir: Path


def build_tag(compiler: str) -> str:
    """Name what a library depends on besides the artifact: the code generator and compiler."""
    versions = []
    for name in ("treelite", "tl2cgen"):
        try:
            versions.append(f"{name}={package_version(name)}")
        except PackageNotFoundError:
            versions.append(f"{name}=absent")
    parts = [*versions, f"cc={compiler}", sys.platform, os.uname().machine]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


def library_paths(cache_dir: Path, artifact_sha256: str, compiler: str) -> dict[str, Path]:
    """Where the libraries of an artifact live in the cache."""
    stem = f"{artifact_sha256}-{build_tag(compiler)}"
    return {name: cache_dir / f"{stem}.{name}.so" for name in ENSEMBLES}


def check_cache_dir(cache_dir: Path) -> None:
    """Make the cache folder if absent; refuse one that another user could write into."""
    try:
        cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        status = cache_dir.stat()
    except OSError as exc:
        raise ModelError(f"cannot use the tree cache {cache_dir}: {exc.strerror or exc}") from exc
    if status.st_uid != os.getuid() or status.st_mode & 0o022:
        raise ModelError(
            f"the tree cache {cache_dir} is not private to this user (owner uid "
            f"{status.st_uid}, mode {oct(status.st_mode & 0o777)}): refusing its libraries"
        )


def build_libraries(
    regressor: PickupAwareRegressor, cache_dir: Path, artifact_sha256: str, compiler: str
) -> dict[str, Path]:
    """Generate and compile the ensembles' C into the cache, unless already there."""
    import tl2cgen
    import treelite

    check_cache_dir(cache_dir)
    paths = library_paths(cache_dir, artifact_sha256, compiler)
    # One build per artifact at a time: other processes wait here, then find the result.
    with (cache_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name, ensemble in regressor.ensembles().items():
            if paths[name].is_file():
                continue
            build_dir = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".build-"))
            try:
                built = build_dir / f"{name}.so"
                tl2cgen.export_lib(
                    treelite.sklearn.import_model(ensemble),
                    toolchain=compiler,
                    libpath=str(built),
                    params={"parallel_comp": os.cpu_count() or 1},
                    nthread=os.cpu_count() or 1,
                )
                os.replace(built, paths[name])
            finally:
                shutil.rmtree(build_dir, ignore_errors=True)
    return paths


def cached_libraries(cache_dir: Path, artifact_sha256: str, compiler: str) -> dict[str, Path]:
    """Return the libraries of an artifact already built into a private cache, or {}."""
    try:
        check_cache_dir(cache_dir)
    except ModelError:
        return {}
    paths = library_paths(cache_dir, artifact_sha256, compiler)
    return paths if all(path.is_file() for path in paths.values()) else {}


def compile_in_child(model_dir: Path, cache_dir: Path, compiler: str) -> dict[str, Path]:
    """Build the libraries of the model in `model_dir` in a child process; return their paths.

    A child, because a compiler crash or a hang must not take a worker with it, and because
    under gevent only the hub may start processes (and then waits for them cooperatively).
    Libraries already in the cache are taken as they are: the cache is private to this user,
    and every library must still give scikit-learn's answers before it serves (`verify`).
    """
    sha256 = read_card(model_dir).artifact_sha256
    found = cached_libraries(cache_dir, sha256, compiler)
    if found:
        return found
    command = [sys.executable, "-m", "core.model.trees", str(model_dir), str(cache_dir), compiler]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=_COMPILE_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ModelError(f"cannot compile the trees: {exc}") from exc
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise ModelError(f"cannot compile the trees: {last}")
    paths = [Path(line) for line in done.stdout.split()]
    if len(paths) != len(ENSEMBLES):
        raise ModelError(f"the tree compiler said {done.stdout!r}, not {len(ENSEMBLES)} paths")
    return dict(zip(ENSEMBLES, paths, strict=True))


def probe_rows(regressor: PickupAwareRegressor) -> Floats:
    """A fixed set of feature rows that lands on both sides of the trees' own split thresholds,
    in both ensembles, some without a pickup time and some with a missing distance."""
    rng = np.random.default_rng(0)
    rows = np.empty((_PROBE_ROWS, TIMED_COLUMNS))
    for column, found in enumerate(split_thresholds(regressor)):
        values = found if len(found) else np.zeros(1)
        picked = rng.choice(values, _PROBE_ROWS)
        nudge = rng.choice([-1e-3, 1e-3], _PROBE_ROWS) * np.maximum(1.0, np.abs(picked))
        rows[:, column] = picked + nudge
    rows[::4, BASE_COLUMNS:] = np.nan
    rows[1::7, 0] = np.nan
    return rows


def tree_nodes(ensemble: HistGradientBoostingRegressor) -> list[NDArray[Any]]:
    """Each tree's nodes, in order: scikit-learn keeps them as a structured array (treelite and
    core.model.accelerator read it too)."""
    return [tree.nodes for iteration in ensemble._predictors for tree in iteration]


def split_thresholds(regressor: PickupAwareRegressor) -> list[Floats]:
    """Every split threshold of both ensembles, by the column it splits (TIMED_COLUMNS lists)."""
    found: list[list[Floats]] = [[] for _ in range(TIMED_COLUMNS)]
    for ensemble in regressor.ensembles().values():
        for nodes in tree_nodes(ensemble):
            splits = nodes[nodes["is_leaf"] == 0]
            for column in np.unique(splits["feature_idx"]):
                chosen = splits["feature_idx"] == column
                found[int(column)].append(splits["num_threshold"][chosen])
    return [np.concatenate(arrays) if arrays else np.zeros(0) for arrays in found]


def verify(evaluator: Evaluator, reference: Evaluator, rows: Floats) -> None:
    """Refuse an evaluator whose answers on `rows` differ from the reference's by > 1e-6."""
    check_same(evaluator.predict(rows), reference.predict(rows), "the compiled trees")


def check_same(ours: Floats, reference: Floats, what: str) -> None:
    """Refuse answers (`what` gave them) that differ from the reference answers by > 1e-6."""
    difference = float(np.max(np.abs(ours - reference))) if len(reference) else 0.0
    if not difference <= MAX_DIFFERENCE:  # NaN too
        raise ModelError(f"{what} differ from scikit-learn's by {difference:.3g} minutes")


def _main(argv: list[str]) -> int:
    """`python -m core.model.trees MODEL_DIR CACHE_DIR COMPILER`: build, print the libraries."""
    from core.model.artifact import load_model

    model_dir, cache_dir, compiler = Path(argv[0]), Path(argv[1]), argv[2]
    try:
        model = load_model(model_dir)
        regressor = model.regressor
        if regressor is None:
            raise ModelError(f"model {model.version} has no trees to compile")
        paths = build_libraries(regressor, cache_dir, model.card.artifact_sha256, compiler)
    except Exception as exc:  # the child's whole job: whatever stopped it is its message
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print("\n".join(str(paths[name]) for name in ENSEMBLES))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
