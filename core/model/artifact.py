"""The trip-duration model: its safe loading and saving, its predictions.

An artifact is trusted only after three checks, in this order: its bytes hash to the sha256 its
card records (before anything is deserialized), skops finds only allow-listed types in it, and what
loads is exactly the pipeline we train. A smoke prediction then proves it answers.

A model reads trips as columns, the shape a worker receives them in (core.trip.schemas.TripColumns):
zone ids and distances go straight to the features (core.model.features.TripFeatures.
transform_columns) or to the baseline's weights (core.model.recipes.LinearScorer).
"""

import hashlib
import io
import math
import zipfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pandas as pd
import skops.io as sio
from numpy.typing import NDArray
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.pipeline import Pipeline

from core.errors import InvalidArtifact, ModelError
from core.infra.files import write_atomically
from core.model.features import TripFeatures
from core.model.recipes import (
    LINEAR,
    PIPELINE_STEPS,
    LinearScorer,
    library_versions,
)
from core.model.registry import (
    ARTIFACT_FILE,
    CARD_FILE,
    DataFile,
    ModelCard,
    check_version_name,
    read_card,
    read_model_file,
)
from core.model.trees import (
    COMPILED,
    CompiledEvaluator,
    Evaluator,
    PickupAwareRegressor,
    SklearnEvaluator,
    check_same,
    probe_rows,
    verify,
)
from core.trip.contract import TRIP_COLUMNS
from core.trip.pickup import wall_clock_seconds
from core.trip.schemas import TripColumns

if TYPE_CHECKING:  # PyTorch is imported only by a worker that puts a model on a GPU
    from core.model.accelerator import DeviceGbm

# The fields of a trip the model reads; a card lists them so callers know the model's input.
# A model that reads the pickup time answers trips without one too (core.model.trees).
FEATURES = TRIP_COLUMNS
PICKUP_FEATURE = "pickup_datetime"
FEATURE_SETS = (FEATURES, (*FEATURES, PICKUP_FEATURE))

# The only types a model artifact may hold beyond skops' own defaults: the recipes' pipelines and
# what they are made of (names, since several are private to scikit-learn).
TRUSTED_TYPES: tuple[type, ...] = (
    Pipeline,
    HistGradientBoostingRegressor,
    np.float64,
    np.ndarray,
    *(step for steps in PIPELINE_STEPS.values() for step in steps),
)
TRUSTED_TYPE_NAMES = (
    "core.model.features._Means",
    "numpy.int64",
    "sklearn._loss.link.IdentityLink",
    "sklearn._loss.link.Interval",
    "sklearn._loss.loss.HalfSquaredError",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
)


class TripLike(Protocol):
    """Anything with a trip's three model inputs, e.g. `core.trip.schemas.TripRequest`."""

    # Named as in the TLC files and the request contract, hence not snake_case.
    @property
    def PULocationID(self) -> int: ...

    @property
    def DOLocationID(self) -> int: ...

    @property
    def trip_distance(self) -> float: ...

    @property
    def pickup_datetime(self) -> datetime | None: ...


# The example trip of the API's docs, as columns, without and with a pickup time; every loaded
# model must answer both with a finite number.
_SMOKE_TRIPS = (([130], [250], [3.0], None), ([130], [250], [3.0], [1_612_530_000.0]))


class TripModel:
    """A fitted pipeline, the card that describes it, and the evaluator that runs it."""

    def __init__(self, pipeline: Pipeline, card: ModelCard) -> None:
        self._pipeline = pipeline
        self._card = card
        self._scorer: LinearScorer | None = None
        self._features: TripFeatures | None = None
        self._regressor: PickupAwareRegressor | None = None
        self._evaluator: Evaluator | None = None
        self._device: DeviceGbm | None = None  # large calls' path, when on a GPU (use_device)
        self._device_min_trips = 0
        first, last = (step for _, step in pipeline.steps)
        if card.kind == "baseline":
            self._scorer = LinearScorer(first, last)
        else:
            self._features, self._regressor = first, last
            self._evaluator = SklearnEvaluator(last)

    @property
    def version(self) -> str:
        """The model's version, as its card names it."""
        return self._card.version

    @property
    def pipeline(self) -> Pipeline:
        """The fitted scikit-learn pipeline."""
        return self._pipeline

    @property
    def card(self) -> ModelCard:
        """The model's card."""
        return self._card

    @property
    def regressor(self) -> PickupAwareRegressor | None:
        """The boosted trees of a gbm; None for a baseline."""
        return self._regressor

    @property
    def evaluator(self) -> str:
        """Name what computes the answers: `compiled` or `scikit-learn` trees, or `linear`."""
        return LINEAR if self._evaluator is None else self._evaluator.name

    def use_compiled(self, libraries: dict[str, Path]) -> None:
        """Serve from compiled libraries of this model's trees, once they give its answers."""
        if self._regressor is None or self._evaluator is None:
            raise ModelError(f"model {self.version} has no trees to compile")
        if self._evaluator.name == COMPILED:
            return
        compiled = CompiledEvaluator(libraries, batch=self._evaluator)
        verify(compiled, self._evaluator, probe_rows(self._regressor))
        self._evaluator = compiled

    @property
    def device(self) -> str:
        """Name the device that answers this model's large calls: `cpu`, or e.g. `cuda:0`."""
        return "cpu" if self._device is None else self._device.name

    def device_of(self, trips: int) -> str:
        """Name the device that answers a call of `trips` trips."""
        return self.device if self._on_device(trips) else "cpu"

    def _on_device(self, trips: int) -> bool:
        return self._device is not None and trips >= self._device_min_trips

    def use_device(self, device: str, min_trips: int) -> None:
        """Answer calls of `min_trips` trips or more on a PyTorch device (core.model.accelerator),
        once it gives the CPU path's answers to 1e-6 on the probe trips."""
        if self._features is None or self._regressor is None or self._evaluator is None:
            raise ModelError(f"model {self.version} is no gbm: it stays on the CPU")
        from core.model.accelerator import DeviceGbm, probe_columns

        on_device = DeviceGbm(self._features, self._regressor, device)
        probe = probe_columns(self._features, self._regressor)
        reference = self._evaluator.predict(self._features.transform_columns(*probe))
        check_same(on_device.predict(*probe), reference, f"the answers on {device}")
        self._device, self._device_min_trips = on_device, min_trips

    def predict(self, trips: TripColumns) -> list[float]:
        """Predict the duration in minutes of trips given as columns, as a worker receives them."""
        return self.predict_columns(
            trips.PULocationID, trips.DOLocationID, trips.trip_distance, trips.pickup_wall_clock_s
        )

    def predict_trips(self, trips: Sequence[TripLike]) -> list[float]:
        """Predict the duration in minutes of each trip, vectorized over the whole batch."""
        times = [t.pickup_datetime for t in trips]
        return self.predict_columns(
            [t.PULocationID for t in trips],
            [t.DOLocationID for t in trips],
            [t.trip_distance for t in trips],
            None
            if all(time is None for time in times)
            else [None if time is None else wall_clock_seconds(time) for time in times],
        )

    def predict_columns(
        self,
        pu: Sequence[int | str],
        do: Sequence[int | str],
        distance: Sequence[float],
        pickup: Sequence[float | None] | None = None,
    ) -> list[float]:
        """Predict minutes for trips given as columns (zone ids as int or str), in one call.

        `pickup`: each trip's pickup time as New York wall-clock seconds since 1970 (None where
        a trip has none; core.trip.pickup), or None for no times at all.
        """
        if not len(pu):
            return []
        # The models only read their fitted state, so concurrent calls from several inference
        # threads are safe without a lock.
        if self._scorer is not None:
            return self._scorer.predict(pu, do, distance)
        assert self._evaluator is not None
        if self._device is not None and self._on_device(len(pu)):
            seconds = None if pickup is None else _floats(pickup)
            answers: list[float] = self._device.predict(
                _floats(pu), _floats(do), _floats(distance), seconds
            ).tolist()
            return answers
        features = self.feature_matrix(pu, do, distance, pickup)
        predicted: list[float] = self._evaluator.predict(features).tolist()
        return predicted

    def feature_matrix(
        self,
        pu: Sequence[int | str],
        do: Sequence[int | str],
        distance: Sequence[float],
        pickup: Sequence[float | None] | None = None,
    ) -> NDArray[np.float64]:
        """Return what a gbm's trees read for these trips (see predict_columns)."""
        if self._features is None:
            raise ModelError(f"model {self.version} is no gbm: it has no feature matrix")
        seconds = None if pickup is None else _floats(pickup)
        return self._features.transform_columns(
            _floats(pu), _floats(do), _floats(distance), seconds
        )


def _floats(values: Sequence[object]) -> NDArray[np.float64]:
    """Return a column as float64: NaN for None, and for text that is no number."""
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):  # text that is no number: the features' cleaning decides
        floats: NDArray[np.float64] = pd.to_numeric(
            pd.Series(values, dtype=object), errors="coerce"
        ).to_numpy(np.float64)
        return floats


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_model(
    pipeline: Pipeline,
    model_dir: Path,
    *,
    kind: str,
    train_files: list[DataFile],
    valid_files: list[DataFile],
    metrics: dict[str, float],
    version: str | None = None,
) -> ModelCard:
    """Write model.skops, then card.json with the artifact's sha256; return the card."""
    # Deflate shrinks the baseline's 13 MB of JSON (one node per PU_DO pair) to about 0.4 MB.
    data = sio.dumps(pipeline, compression=zipfile.ZIP_DEFLATED, compresslevel=9)
    card = ModelCard(
        version=check_version_name(version or model_dir.resolve().name),
        kind=kind,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        train_files=train_files,
        valid_files=valid_files,
        train_rows=sum(f.rows for f in train_files),
        valid_rows=sum(f.rows for f in valid_files),
        metrics=metrics,
        features=list(FEATURE_SETS[1] if kind == "gbm" else FEATURES),
        libraries=library_versions(),
        artifact=ARTIFACT_FILE,
        artifact_sha256=_sha256(data),
    )
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        # Artifact first, card last: a reader never finds a card without its artifact, and one
        # that reads mid-overwrite finds a hash mismatch and refuses rather than a wrong model.
        write_atomically(model_dir / ARTIFACT_FILE, data)
        write_atomically(model_dir / CARD_FILE, card.model_dump_json(indent=2) + "\n")
    except OSError as exc:
        raise ModelError(f"cannot write model to {model_dir}: {exc.strerror or exc}") from exc
    return card


def _read_artifact(model_dir: Path, card: ModelCard) -> bytes:
    """Return the artifact's bytes once they match the card's sha256."""
    if Path(card.artifact).name != card.artifact:
        raise InvalidArtifact(
            f"{CARD_FILE} in {model_dir} names a path, not a file: {card.artifact}"
        )
    path = model_dir / card.artifact
    # Hash and load the same bytes, so the file cannot change between check and use.
    data = read_model_file(path, "model artifact")
    actual = _sha256(data)
    if actual != card.artifact_sha256:
        raise InvalidArtifact(
            f"{card.artifact} sha256 {actual[:12]}… does not match {CARD_FILE}'s "
            f"{card.artifact_sha256[:12]}… in {model_dir}"
        )
    return data


# Where tripq's own types lived before core/ had rooms: artifacts written then name these modules.
_MOVED_MODULES = {"core.features": "core.model.features", "core.trees": "core.model.trees"}


def _with_current_modules(data: bytes) -> bytes:
    """Return skops bytes whose schema names tripq's types by their current modules.

    The sha256 was checked on the bytes as written; this only renames modules in the schema
    (skops imports each type by its module's name), so the allow-list below still decides.
    """
    with zipfile.ZipFile(io.BytesIO(data)) as source:
        schema = source.read("schema.json").decode()
        renamed = schema
        for old, new in _MOVED_MODULES.items():
            renamed = renamed.replace(f'"__module__": "{old}"', f'"__module__": "{new}"')
        if renamed == schema:
            return data
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as target:
            for item in source.infolist():
                body = renamed.encode() if item.filename == "schema.json" else source.read(item)
                target.writestr(item, body)
    return out.getvalue()


def _deserialize(data: bytes, name: str) -> object:
    """Load an artifact's bytes with skops, allowing only the trusted types."""
    # skops raises whatever its zip, JSON and object decoders raise on a malformed file; all of
    # them mean the same thing here, and the original stays attached as the cause.
    try:
        data = _with_current_modules(data)
        untrusted = set(sio.get_untrusted_types(data=data))
    except Exception as exc:
        raise InvalidArtifact(f"{name} is not a readable skops file: {exc}") from exc
    allowed = {f"{t.__module__}.{t.__qualname__}" for t in TRUSTED_TYPES}
    allowed.update(TRUSTED_TYPE_NAMES)
    refused = sorted(untrusted - allowed)
    if refused:
        raise InvalidArtifact(f"{name} holds types outside the allow-list: {', '.join(refused)}")
    try:
        loaded = sio.loads(data, trusted=sorted(allowed))
    except Exception as exc:
        raise InvalidArtifact(f"{name} is not a readable skops file: {exc}") from exc
    return loaded


def _check_pipeline(loaded: object, kind: str, name: str) -> Pipeline:
    """Return `loaded` if it is the fitted pipeline shape of `kind`, else raise InvalidArtifact."""
    if not isinstance(loaded, Pipeline):
        raise InvalidArtifact(f"{name} holds a {type(loaded).__name__}, not a Pipeline")
    expected = PIPELINE_STEPS.get(kind)
    if expected is None:
        raise InvalidArtifact(f"{name} is of unknown kind {kind!r}")
    steps = tuple(type(step) for _, step in loaded.steps)
    if steps != expected:
        shape, want = (" -> ".join(t.__name__ for t in types) for types in (steps, expected))
        raise InvalidArtifact(f"{name} holds a {shape} pipeline, not {want} ({kind})")
    return loaded


def _smoke_test(model: TripModel, name: str) -> None:
    """Predict the example trip and refuse a model whose answer is not a finite number."""
    for trip in _SMOKE_TRIPS:
        try:
            [minutes] = model.predict_columns(*trip)
        except (AttributeError, ValueError, TypeError, IndexError) as exc:
            raise InvalidArtifact(f"{name} failed its smoke prediction: {exc}") from exc
        if not math.isfinite(minutes):
            raise InvalidArtifact(f"{name} predicts {minutes} minutes for the example trip")


def load_model(model_dir: Path) -> TripModel:
    """Load and verify the model in `model_dir`; refuse anything its card does not vouch for."""
    card = read_card(model_dir)
    if tuple(card.features) not in FEATURE_SETS:
        raise InvalidArtifact(
            f"{CARD_FILE} in {model_dir} lists features {card.features}, expected "
            + " or ".join(str(list(f)) for f in FEATURE_SETS)
        )
    data = _read_artifact(model_dir, card)
    where = f"{card.artifact} in {model_dir}"
    model = TripModel(_check_pipeline(_deserialize(data, where), card.kind, where), card)
    _smoke_test(model, where)
    return model
