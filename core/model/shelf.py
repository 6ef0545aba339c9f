"""The models a worker process serves: loaded once each, shared by its greenlets, swapped live.

A worker holds its *current* model, which answers tasks that name no version, and any other
version the routing (core.online.routing) names, which answer the tasks that name them. Following a
new routing loads what it names first, and only then makes its current version current: a
request is never left without a model, and tasks already running finish on the model they began
with (they hold it), so a promotion or a rollback drops nothing.
"""

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

from loguru import logger

from core.errors import ModelError, TripqError
from core.model.artifact import TripModel, load_model
from core.model.device import DevicePlan, resolve_device
from core.model.registry import resolve_model_dir
from core.model.trees import TreeBuild, compile_in_child
from core.online.routing import Routing
from core.trip.schemas import TripColumns, TripRequest

_RETRY_LOAD_S = 30.0  # a version that failed to load is tried again after this long

T = TypeVar("T")


class Offload(Protocol):
    """Run `fn(*args)` somewhere, wait for it, and return what it returned."""

    def __call__(self, fn: Callable[..., T], /, *args: object) -> T: ...


def run_here(fn: Callable[..., T], /, *args: object) -> T:
    """Offload nowhere: call `fn(*args)` on the caller's thread."""
    return fn(*args)


class ModelShelf:
    """Hold one process's models by version; load each at most once.

    Only the heavy calls, loading a model and predicting, go through `offload` (a worker passes
    one that runs them on a native thread, off the gevent hub). Everything else, the bookkeeping
    and the logging, stays on the caller's thread: a lock or a log sink that a greenlet and a
    native thread both take can leave the greenlet waiting for good once the thread releases it
    (gevent issue #2013). That is how a worker once predicted a batch and then never stored its
    result nor acknowledged it, its greenlet stuck in a log line.
    """

    def __init__(
        self,
        artifact_dir: Path,
        default_version: str | None,
        offload: Offload = run_here,
        trees: TreeBuild | None = None,
        devices: DevicePlan | None = None,
    ) -> None:
        self._artifact_dir = artifact_dir
        self._default_version = default_version  # None: the version named in CURRENT
        self._offload = offload
        self._trees = trees  # None: gbm trees run on scikit-learn's evaluator
        self._devices = devices  # None: every call on the CPU
        self._device: str | None = None  # the plan's device, once resolved (None: the CPU)
        self._device_resolved = False
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
                path = resolve_model_dir(self._artifact_dir, name)
                model = self._offload(load_model, path)
                self._compile(model, path)
                self._place(model)
                self._models = {**self._models, name: model}
            if self._current is None and version is None:
                self._current = name
        return model

    @property
    def evaluators(self) -> dict[str, str]:
        """Name, per version held, what computes its answers (`TripModel.evaluator`)."""
        return {version: model.evaluator for version, model in sorted(self._models.items())}

    @property
    def devices(self) -> dict[str, str]:
        """Name, per version held, the device of its large calls (`TripModel.device`)."""
        return {version: model.device for version, model in sorted(self._models.items())}

    def _place(self, model: TripModel) -> None:
        """Send a gbm's large calls to the planned GPU. One that cannot go there stays on the
        CPU, unless the plan requires the GPU (INFERENCE_DEVICE=cuda): then it does not load."""
        plan = self._devices
        if model.regressor is None or plan is None:
            return
        try:
            if not self._device_resolved:  # importing PyTorch takes seconds: off the hub
                self._device = self._offload(resolve_device, plan.setting)
                self._device_resolved = True
            if self._device is None:
                return
            self._offload(model.use_device, self._device, plan.min_trips)
        except ModelError as exc:
            if plan.required:
                raise
            logger.warning("serving on the CPU", model_version=model.version, reason=exc.message)
            return
        logger.info(
            "large calls on the GPU",
            model_version=model.version,
            device=self._device,
            min_trips=plan.min_trips,
        )

    def _compile(self, model: TripModel, path: Path) -> None:
        """Move a gbm onto compiled trees; one that cannot be compiled stays on scikit-learn's.

        The build runs as a child process started from this thread (under gevent: the hub, the
        only thread that may start one); loading and checking the library go through `offload`.
        """
        if model.regressor is None or self._trees is None or not self._trees.compiler:
            return
        try:
            libraries = compile_in_child(path, self._trees.cache_dir, self._trees.compiler)
            self._offload(model.use_compiled, libraries)
        except ModelError as exc:
            logger.warning(
                "serving with scikit-learn's tree evaluator",
                model_version=model.version,
                reason=exc.message,
            )
            return
        logger.info("serving compiled trees", model_version=model.version)

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
        return self._offload(model.predict_trips, trips), model.version

    def predict_columns(
        self, trips: TripColumns, version: str | None = None
    ) -> tuple[list[float], str]:
        """Predict durations for trips given as columns with model `version` (None: current)."""
        model = self.get(version)
        durations = self._offload(model.predict, trips)
        return durations, model.version
