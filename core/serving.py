"""The model a worker process serves: loaded once, on first use, and shared by its greenlets."""

import threading
from collections.abc import Sequence
from pathlib import Path

from core.model import TripModel, load_model
from core.registry import resolve_model_dir
from core.schemas import TripColumns, TripRequest


class ModelHolder:
    """Hold one process's model, loading it lazily and exactly once."""

    def __init__(self, artifact_dir: Path, version: str | None) -> None:
        self._artifact_dir = artifact_dir
        self._version = version
        self._model: TripModel | None = None
        self._lock = threading.Lock()

    @property
    def loaded_version(self) -> str | None:
        """Name the version in memory, or None before the first load."""
        return None if self._model is None else self._model.version

    def get(self) -> TripModel:
        """Return the model, loading it on the first call (thread-safe)."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = load_model(resolve_model_dir(self._artifact_dir, self._version))
        return self._model

    def predict(self, trips: Sequence[TripRequest]) -> tuple[list[float], str]:
        """Predict durations for `trips` and name the model version that did it."""
        model = self.get()
        return model.predict_trips(trips), model.version

    def predict_columns(self, trips: TripColumns) -> tuple[list[float], str]:
        """Predict durations for trips given as columns and name the model version."""
        model = self.get()
        durations = model.predict_columns(
            trips.PULocationID, trips.DOLocationID, trips.trip_distance
        )
        return durations, model.version
