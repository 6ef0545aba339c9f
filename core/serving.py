"""The models a worker process serves: loaded once each, shared by its greenlets, swapped live.

A worker holds its *current* model, which answers tasks that name no version, and any other
version the routing (core.rollout) names, which answer the tasks that name them. Following a
new routing loads what it names first, and only then makes its current version current: a
request is never left without a model, and tasks already running finish on the model they began
with (they hold it), so a promotion or a rollback drops nothing.
"""

import threading
import time
from collections.abc import Sequence
from pathlib import Path

from loguru import logger

from core.errors import TripqError
from core.model import TripModel, load_model
from core.registry import resolve_model_dir
from core.rollout import Routing
from core.schemas import TripColumns, TripRequest

_RETRY_LOAD_S = 30.0  # a version that failed to load is tried again after this long


class ModelShelf:
    """Hold one process's models by version; load each at most once."""

    def __init__(self, artifact_dir: Path, default_version: str | None) -> None:
        self._artifact_dir = artifact_dir
        self._default_version = default_version  # None: the version named in CURRENT
        self._models: dict[str, TripModel] = {}
        self._current: str | None = None
        self._failed: dict[str, float] = {}  # version -> when it last failed to load
        self._lock = threading.Lock()

    @property
    def loaded_version(self) -> str | None:
        """Name the current version, or None before the first load."""
        return self._current

    @property
    def versions(self) -> list[str]:
        """Name every version held."""
        return sorted(self._models)

    def get(self, version: str | None = None) -> TripModel:
        """Return the model of `version` (None: the current one), loading it on first use."""
        name = version or self._current
        model = self._models.get(name) if name else None
        if model is not None:
            return model
        with self._lock:
            if name is None:
                name = (
                    self._current
                    or resolve_model_dir(self._artifact_dir, self._default_version).name
                )
            model = self._models.get(name)
            if model is None:
                model = load_model(resolve_model_dir(self._artifact_dir, name))
                self._models = {**self._models, name: model}
            if self._current is None and version is None:
                self._current = name
        return model

    def follow(self, routing: Routing) -> None:
        """Load the versions `routing` names, make its current version current, drop the rest.

        A version that cannot be loaded (absent here, or refused) is logged and skipped, and the
        current version stays what it was.
        """
        for version in routing.versions:
            failed_at = self._failed.get(version)
            if version in self._models or (
                failed_at is not None and time.monotonic() - failed_at < _RETRY_LOAD_S
            ):
                continue
            try:
                self.get(version)
                logger.info("model loaded", model_version=version)
            except TripqError as exc:
                self._failed[version] = time.monotonic()
                logger.error("cannot load model", model_version=version, error=exc.message)
        with self._lock:
            if routing.current in self._models and routing.current != self._current:
                logger.info("serving model", model_version=routing.current, was=self._current)
                self._current = routing.current
            keep = {*routing.versions, self._current}
            self._models = {v: m for v, m in self._models.items() if v in keep}

    def predict(self, trips: Sequence[TripRequest]) -> tuple[list[float], str]:
        """Predict durations for `trips` with the current model; name its version."""
        model = self.get()
        return model.predict_trips(trips), model.version

    def predict_columns(
        self, trips: TripColumns, version: str | None = None
    ) -> tuple[list[float], str]:
        """Predict durations for trips given as columns with model `version` (None: current)."""
        model = self.get(version)
        durations = model.predict_columns(
            trips.PULocationID, trips.DOLocationID, trips.trip_distance
        )
        return durations, model.version
