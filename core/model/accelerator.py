"""A gbm on a GPU: its feature lookups and both tree ensembles as PyTorch tensors, in float64.

    trip columns (host, float64: zone ids, miles, pickup wall-clock seconds or NaN)
      ─ one copy ─> device
      ─ clean ─> zone ids 0..265 (0: unknown), miles in [0, 100] (NaN: unusable)
      ─ lookups ─> zone and pair statistics, boroughs, holidays: indexing tables held on the device
      ─ trees ─> every tree of an ensemble walked at once, one level a step:
                   node = left if (x is NaN ? the node's missing side : x <= threshold) else right
                 a leaf points to itself, so after the deepest level every walk stands on its leaf
      ─> baseline + the sum of the leaves' values = minutes ─ one copy ─> host

The same arithmetic as core.model.features and scikit-learn's tree walk, op for op in float64, so a
trip takes the same branch at every split; only the order in which the leaves are summed differs
(~1e-13 minutes). Before a device serves, its answers on a fixed set of probe trips must equal the
CPU path's within 1e-6 minutes (`probe_columns`, TripModel.use_device).

Why a walk of our own on PyTorch rather than a library that compiles trees (docs/model.md):
hummingbird-ml 0.4.12 keeps thresholds in float32, moves splits at 0 and ignores scikit-learn's
missing-value directions (its issue #531), and its answers on 2021-02 differed by minutes; the
CUDA provider of onnxruntime has no kernel for ai.onnx.ml's TreeEnsemble, so the trees of the ONNX
export (core.model.onnx_export) would still run on the CPU.
"""

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from sklearn.ensemble import HistGradientBoostingRegressor

from core.errors import ModelError
from core.model.features import MAX_MILES, MIN_PACE_MILES, ZONES, TripFeatures, _Means
from core.model.trees import BASE_COLUMNS, PickupAwareRegressor, split_thresholds, tree_nodes
from core.trip.contract import ZONE_MIN

Floats = NDArray[np.float64]
Tensor = torch.Tensor

F64 = torch.float64
# At most this many (trip, tree) walks at once: bounds the memory of one step (~8 bytes each,
# a few tensors of it) however large the call.
_WALKS_AT_ONCE = 1 << 23
_PROBE_TRIPS = 4096
_DAY_S = 86_400.0
_EPOCH_WEEKDAY = 3.0  # as core.model.features: 1970-01-01 was a Thursday
_IDENTITY_LOSSES = ("squared_error", "absolute_error", "quantile")


@dataclass(frozen=True)
class Forest:
    """One ensemble's trees as flat node tables on a device (node ids global to the ensemble)."""

    roots: Tensor  # int64 [trees]: each tree's first node
    feature: Tensor  # int64 [nodes]: the column a split reads (0 at leaves)
    threshold: Tensor  # float64 [nodes]: go left when the value is <= this
    missing_left: Tensor  # bool [nodes]: where a NaN goes
    left: Tensor  # int64 [nodes]: a leaf's own id
    right: Tensor  # int64 [nodes]: a leaf's own id
    value: Tensor  # float64 [nodes]: a leaf's value (0 elsewhere)
    depth: int  # levels below the deepest root: steps a walk takes
    baseline: float


def pack_forest(ensemble: HistGradientBoostingRegressor, device: torch.device) -> Forest:
    """Lay out a fitted ensemble's trees as a Forest on `device`."""
    if ensemble.loss not in _IDENTITY_LOSSES:
        raise ModelError(f"the GPU path sums raw tree outputs; loss {ensemble.loss!r} maps them")
    trees = tree_nodes(ensemble)
    nodes = np.concatenate(trees)
    if nodes["is_categorical"].any():
        raise ModelError("the GPU path has no categorical splits")
    sizes = np.array([len(tree) for tree in trees])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    shift = np.repeat(starts, sizes)
    own = np.arange(len(nodes))
    leaf = nodes["is_leaf"].astype(bool)

    def put(array: NDArray[np.generic], dtype: torch.dtype) -> Tensor:
        return torch.as_tensor(np.ascontiguousarray(array), device=device).to(dtype)

    return Forest(
        roots=put(starts, torch.int64),
        feature=put(np.where(leaf, 0, nodes["feature_idx"]), torch.int64),
        threshold=put(nodes["num_threshold"], F64),
        missing_left=put(nodes["missing_go_to_left"].astype(bool), torch.bool),
        left=put(np.where(leaf, own, nodes["left"] + shift), torch.int64),
        right=put(np.where(leaf, own, nodes["right"] + shift), torch.int64),
        value=put(np.where(leaf, nodes["value"], 0.0), F64),
        depth=int(nodes["depth"].max()),
        baseline=float(np.ravel(ensemble._baseline_prediction)[0]),
    )


def walk(forest: Forest, rows: Tensor) -> Tensor:
    """Predict minutes for feature rows (float64 [n, columns]) with every tree of `forest`."""
    out = torch.empty(len(rows), dtype=F64, device=rows.device)
    step = max(1, _WALKS_AT_ONCE // len(forest.roots))
    for start in range(0, len(rows), step):
        chunk = rows[start : start + step]
        node = forest.roots.expand(len(chunk), -1)
        for _ in range(forest.depth):
            x = chunk.gather(1, forest.feature[node])
            below = x <= forest.threshold[node]
            goes_left = torch.where(x.isnan(), forest.missing_left[node], below)
            node = torch.where(goes_left, forest.left[node], forest.right[node])
        out[start : start + step] = forest.value[node].sum(dim=1) + forest.baseline
    return out


class DeviceFeatures:
    """core.model.features' serving transform, with its fitted tables on a device."""

    def __init__(self, features: TripFeatures, device: torch.device) -> None:
        def put(array: NDArray[np.generic]) -> Tensor:
            return torch.as_tensor(np.asarray(array, dtype=np.float64), device=device)

        def tables(means: _Means) -> tuple[Tensor, Tensor, Tensor, float]:
            return put(means.pu), put(means.do), put(means.pair), means.prior

        self._minutes, self._pace = tables(features.minutes_), tables(features.pace_)
        self._boroughs = put(features.borough_codes_)
        self._holidays = torch.as_tensor(features.holidays_, dtype=torch.int64, device=device)
        self._timed = bool(features.pickup_time)

    def __call__(self, pu: Tensor, do: Tensor, miles: Tensor, seconds: Tensor) -> Tensor:
        """Feature rows (13 columns, 16 when the model reads pickup times) for raw columns."""
        miles = torch.where(miles.isfinite() & (miles >= 0), miles.clamp(max=MAX_MILES), torch.nan)
        pu, do = _zone(pu), _zone(do)
        pu_min, do_min, pair_min = _lookup(self._minutes, pu, do)
        pu_pace, do_pace, pair_pace = _lookup(self._pace, pu, do)
        estimate = miles.clamp(min=MIN_PACE_MILES) * pair_pace  # NaN stays NaN, as np.maximum
        same = ((pu == do) & (pu > 0)).to(F64)
        columns = [miles, same, pu_min, do_min, pair_min, pu_pace, do_pace, pair_pace, estimate]
        columns += [pu.to(F64), do.to(F64), self._boroughs[pu], self._boroughs[do]]
        if self._timed:
            columns += self._time(seconds)
        return torch.stack(columns, dim=1)

    def _time(self, seconds: Tensor) -> list[Tensor]:
        day = torch.floor(seconds / _DAY_S)
        hour = (seconds - day * _DAY_S) / 3600
        weekday = torch.remainder(day + _EPOCH_WEEKDAY, 7)
        known = day.isfinite()
        days = torch.where(known, day, 0.0).to(torch.int64)
        holidays = self._holidays
        if not len(holidays):
            return [hour, weekday, torch.where(known, 0.0, torch.nan).to(F64)]
        found = torch.searchsorted(holidays, days).clamp(max=len(holidays) - 1)
        holiday = torch.where(known, (holidays[found] == days).to(F64), torch.nan)
        return [hour, weekday, holiday]


def _zone(numbers: Tensor) -> Tensor:
    known = (
        numbers.isfinite()
        & (numbers >= ZONE_MIN)
        & (numbers <= ZONES)
        & (torch.remainder(numbers, 1) == 0)
    )
    return torch.where(known, numbers, 0.0).to(torch.int64)


def _lookup(
    tables: tuple[Tensor, Tensor, Tensor, float], pu: Tensor, do: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    by_pu, by_do, by_pair, prior = tables
    pair = torch.where((pu == 0) | (do == 0), prior, by_pair[pu * (ZONES + 1) + do])
    return by_pu[pu], by_do[do], pair


class DeviceGbm:
    """A gbm's features and trees on one device; answers as the CPU path does."""

    def __init__(
        self, features: TripFeatures, regressor: PickupAwareRegressor, device: str
    ) -> None:
        try:
            self.device = torch.device(device)
            # `cpu` names the CPU path (core.model.trees); tensors on the CPU are another path.
            self.name = f"torch-{device}" if self.device.type == "cpu" else str(self.device)
            self._features = DeviceFeatures(features, self.device)
            ensembles = regressor.ensembles()
            self._untimed = pack_forest(ensembles["untimed"], self.device)
            self._timed = pack_forest(ensembles["timed"], self.device)
        except (RuntimeError, ValueError) as exc:  # no such device, out of its memory, ...
            raise ModelError(f"cannot put the model on {device}: {exc}") from exc

    def predict(self, pu: Floats, do: Floats, miles: Floats, seconds: Floats | None) -> Floats:
        """Predict minutes for trips given as float64 columns (`seconds`: None for no times)."""
        if seconds is None:
            seconds = np.full(len(pu), np.nan)
        try:
            with torch.inference_mode():
                host = torch.from_numpy(np.stack([pu, do, miles, seconds]).astype(np.float64))
                pu_, do_, miles_, seconds_ = host.to(self.device, non_blocking=False)
                rows = self._features(pu_, do_, miles_, seconds_)
                timed = seconds_.isfinite()
                minutes = torch.empty(len(rows), dtype=F64, device=self.device)
                minutes[timed] = walk(self._timed, rows[timed])
                minutes[~timed] = walk(self._untimed, rows[~timed][:, :BASE_COLUMNS])
                answers: Floats = minutes.cpu().numpy()
        except RuntimeError as exc:  # e.g. the device's memory, or the device itself, is gone
            raise ModelError(f"the model on {self.device} cannot answer: {exc}") from exc
        return answers


def probe_columns(features: TripFeatures, regressor: PickupAwareRegressor) -> tuple[Floats, ...]:
    """A fixed set of trips, as columns, that a device must answer as the CPU does: every zone
    id and some that are none, distances on both sides of the trees' own distance splits and some
    unusable, pickup times over the accepted years, holidays among them, and trips without one."""
    rng = np.random.default_rng(0)
    n = _PROBE_TRIPS
    zones = np.concatenate([np.arange(ZONES + 2), [-1.0, 2.5, np.nan, np.inf]])
    pu, do = rng.choice(zones, n), rng.choice(zones, n)
    splits = split_thresholds(regressor)[0]  # column 0: trip_distance
    distances = np.concatenate([splits, [0.0, MAX_MILES, 150.0, -1.0, np.nan, np.inf]])
    miles = rng.choice(distances, n) + rng.choice([-1e-3, 0.0, 1e-3], n)
    first, last = 1_230_768_000.0, 4_133_894_400.0  # 2009-01-01 .. 2100-12-31, as the API
    seconds = rng.uniform(first, last, n)
    if len(features.holidays_):
        seconds[1::5] = rng.choice(features.holidays_, len(seconds[1::5])) * _DAY_S + 3_600.0
    seconds[::4] = np.nan
    return pu, do, miles, seconds
