"""Compiled trees: built from the verified artifact, equal to scikit-learn's, or not used at all."""

from pathlib import Path

import numpy as np
import pytest

from config import get_settings
from core.errors import ModelError
from core.model.artifact import TripModel, load_model
from core.model.registry import read_card, resolve_model_dir
from core.model.shelf import ModelShelf
from core.model.tlc import PICKUP_COLUMN, read_trips, read_zones
from core.model.training import evaluate_model, train_model
from core.model.trees import (
    COMPILED,
    SKLEARN,
    CompiledEvaluator,
    TreeBuild,
    check_cache_dir,
    compile_in_child,
    library_paths,
)
from tests.core.conftest import REPO_ROOT

DEFAULT_MODELS = REPO_ROOT / "repo" / "models"


@pytest.fixture(scope="module")
def default_dir() -> Path:
    return resolve_model_dir(DEFAULT_MODELS, None)


@pytest.fixture(scope="module")
def libraries(default_dir: Path) -> dict[str, Path]:
    """The default model's libraries, built (or found) in the cache workers use."""
    settings = get_settings()
    try:
        return compile_in_child(default_dir, settings.tree_cache_dir, settings.tree_compiler)
    except ModelError as exc:
        pytest.skip(f"no working C compiler here ({exc.message}); the fallback is tested below")


def _pair(default_dir: Path, libraries: dict[str, Path]) -> tuple[TripModel, TripModel]:
    """The default model twice: on scikit-learn's evaluator, and on the compiled one."""
    reference, compiled = load_model(default_dir), load_model(default_dir)
    compiled.use_compiled(libraries)
    assert (reference.evaluator, compiled.evaluator) == (SKLEARN, COMPILED)
    return reference, compiled


@pytest.mark.realdata
@pytest.mark.parametrize(
    "month", ["green_tripdata_2021-02.parquet", "green_tripdata_2023-02.parquet"]
)
def test_compiled_trees_answer_every_real_trip_as_scikit_learn_does(
    real_data: Path, default_dir: Path, libraries: dict[str, Path], month: str
) -> None:
    reference = load_model(default_dir)
    assert reference.regressor is not None
    compiled = CompiledEvaluator(libraries)  # compiled code at every size, no hand-over
    trips = read_trips(real_data / month)
    pu, do, miles = (trips[c].tolist() for c in ("PULocationID", "DOLocationID", "trip_distance"))

    for pickup in (None, trips[PICKUP_COLUMN].tolist()):
        features = reference.feature_matrix(pu, do, miles, pickup)
        ours = compiled.predict(features)
        theirs = reference.regressor.predict(features)
        assert len(ours) == len(trips)
        assert np.max(np.abs(ours - theirs)) <= 1e-6


def test_a_large_call_is_handed_to_the_batch_evaluator(libraries: dict[str, Path]) -> None:
    class Batch:
        name = "batch"
        calls: list[int] = []  # noqa: RUF012 - one instance

        def predict(self, features: np.ndarray) -> np.ndarray:
            self.calls.append(len(features))
            return np.zeros(len(features))

    batch = Batch()
    evaluator = CompiledEvaluator(libraries, batch=batch, large_call=10)
    rows = np.zeros((11, 16))

    assert evaluator.predict(rows).tolist() == [0.0] * 11
    evaluator.predict(rows[:10])
    assert batch.calls == [11]


def test_one_trip_and_mixed_batches_agree_too(
    default_dir: Path, libraries: dict[str, Path]
) -> None:
    reference, compiled = _pair(default_dir, libraries)
    pu, do, miles = [130, 74, 1, 265], [250, 75, 1, 264], [3.0, 1.2, 0.0, 200.0]
    times: list[float | None] = [1_612_513_800.0, None, 1_612_740_000.0, None]

    for size in (1, 4):
        args = (pu[:size], do[:size], miles[:size], times[:size])
        assert compiled.predict_columns(*args) == pytest.approx(
            reference.predict_columns(*args), abs=1e-9
        )


def test_a_library_that_answers_differently_is_refused(
    default_dir: Path, libraries: dict[str, Path]
) -> None:
    model = load_model(default_dir)
    swapped = {"untimed": libraries["timed"], "timed": libraries["untimed"]}

    with pytest.raises(ModelError):
        model.use_compiled(swapped)
    assert model.evaluator == SKLEARN


def test_a_cache_others_can_write_into_is_refused(tmp_path: Path) -> None:
    cache = tmp_path / "trees"
    cache.mkdir(mode=0o777)
    cache.chmod(0o777)

    with pytest.raises(ModelError, match="not private"):
        check_cache_dir(cache)


def test_libraries_are_named_by_the_artifact_hash(default_dir: Path) -> None:
    sha = read_card(default_dir).artifact_sha256
    paths = library_paths(Path("/cache"), sha, "gcc")

    assert {p.name.split("-")[0] for p in paths.values()} == {sha}
    assert library_paths(Path("/cache"), sha, "clang") != paths


def test_a_worker_without_a_compiler_serves_on_scikit_learn_and_says_so(
    tmp_path: Path, default_dir: Path
) -> None:
    shelf = ModelShelf(DEFAULT_MODELS, None, trees=TreeBuild("/nonexistent/cc", tmp_path / "trees"))

    model = shelf.get()

    assert model.evaluator == SKLEARN
    assert shelf.evaluators == {default_dir.name: SKLEARN}
    [minutes] = model.predict_columns([130], [250], [3.0])
    assert 5.0 < minutes < 60.0


def test_a_shelf_with_a_compiler_serves_compiled_trees(
    default_dir: Path, libraries: dict[str, Path]
) -> None:
    settings = get_settings()
    shelf = ModelShelf(
        DEFAULT_MODELS, None, trees=TreeBuild(settings.tree_compiler, settings.tree_cache_dir)
    )

    assert shelf.get().evaluator == COMPILED
    assert shelf.evaluators == {default_dir.name: COMPILED}


def test_the_baseline_has_no_trees_and_says_linear() -> None:
    shelf = ModelShelf(DEFAULT_MODELS, "baseline-2021-01", trees=TreeBuild("gcc", Path("/x")))

    assert shelf.get().evaluator == "linear"


# --- Accuracy with and without the pickup time, on the real files (issue #13's targets) ---


@pytest.mark.realdata
def test_the_default_model_meets_both_targets_on_green_2021_02(
    real_data: Path, default_dir: Path
) -> None:
    result = evaluate_model(default_dir, [real_data / "green_tripdata_2021-02.parquet"])

    assert result["rmse"] <= 5.87
    assert result["pickup"] is not None
    assert result["pickup"]["rmse"] <= 5.35


@pytest.mark.realdata
def test_a_gbm_trained_on_green_2023_01_meets_both_targets_on_2023_02(
    real_data: Path, tmp_path: Path
) -> None:
    card = train_model(
        [real_data / "green_tripdata_2023-01.parquet"],
        real_data / "green_tripdata_2023-02.parquet",
        tmp_path / "gbm-2023-01",
        kind="gbm",
        zones=read_zones(REPO_ROOT / "repo" / "reference" / "taxi_zone_lookup.csv"),
    )

    assert card.metrics["rmse"] <= 4.70
    assert card.metrics["pickup_rmse"] <= 4.25


def test_the_shipped_zone_lookup_is_the_tlcs() -> None:
    zones = read_zones(get_settings().zones_file)

    assert len(zones) == 265
    assert set(zones["Borough"]) >= {"Manhattan", "Brooklyn", "Queens", "Bronx", "Staten Island"}
