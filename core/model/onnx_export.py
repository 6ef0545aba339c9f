"""A model version as one ONNX graph with its card, for runtimes other than tripq's own.

    PULocationID, DOLocationID, trip_distance     double [N] (NaN: missing)
    pickup_wall_clock_s (gbm only)                double [N]: New York wall-clock seconds, NaN: none
      ─ clean ─> Where/Floor/Min: zone ids 1..265 (0: unknown), miles in [0, 100] (NaN: unusable)
      ─ lookups ─> Gather over constant tables: zone and pair statistics, boroughs, holidays
      ─ pickup time ─> Floor/Mod: hour, weekday, holiday (NaN without a time)
      ─ trees ─> two ai.onnx.ml TreeEnsembleRegressor (double thresholds), routed per row by Where
      ─> duration                                   double [N], minutes

    baseline: zone pair ─ Gather over a 266 x 266 weight table ─> intercept + weight + slope * miles

Every step is the same arithmetic as core.model.features and core.model.trees, in float64, so the
file answers as tripq does. Two things stay with the caller, and the card says so: turning a
date-time (with its offset) into New York wall-clock seconds needs the time-zone database
(core.trip.pickup), and zone ids arrive as numbers, not as the text some TLC files hold.
"""

import hashlib
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper
from pydantic import BaseModel, ConfigDict, Field
from sklearn.ensemble import HistGradientBoostingRegressor

from core.errors import ModelError
from core.infra.files import write_atomically
from core.model.artifact import TripModel
from core.model.features import MAX_MILES, MIN_PACE_MILES, ZONES, TripFeatures, _Means
from core.model.recipes import LinearScorer
from core.model.trees import BASE_COLUMNS, TIMED_COLUMNS
from core.trip.contract import DISTANCE, DROPOFF_ZONE, PICKUP_TIME, PICKUP_ZONE, ZONE_MIN

OPSET = {"": 18, "ai.onnx.ml": 3}
OUTPUT = "duration"
_DAY_S = 86_400.0
_EPOCH_WEEKDAY = 3.0  # as core.model.features: 1970-01-01 was a Thursday

_DESCRIPTIONS = {
    PICKUP_ZONE: "TLC pickup zone id (a number; outside 1..265 or not whole: unknown)",
    DROPOFF_ZONE: "TLC drop-off zone id (a number; outside 1..265 or not whole: unknown)",
    DISTANCE: "miles, as metered (NaN or negative: unusable)",
    PICKUP_TIME: "pickup time as New York wall-clock seconds since 1970-01-01 00:00, NaN: none",
    OUTPUT: "predicted trip duration in minutes",
}
_WALL_CLOCK = (
    "pickup_datetime: the graph reads New York wall-clock seconds (pickup_wall_clock_s), not a "
    "date-time; converting one with an offset needs the time-zone database, so the caller does "
    "it (core.trip.pickup.wall_clock_seconds), NaN for a trip without a time"
)
_TEXT_ZONES = "zone ids as text (as some TLC files hold them): the graph reads numbers"
_PRECISION = {
    "gbm": "float64 throughout, but TreeEnsembleRegressor (ai.onnx.ml 3) sums its trees into "
    "float32: tripq's answers within 1e-5 minutes",
    "baseline": "float64 throughout, in tripq's order of operations: tripq's answers",
}

Floats = NDArray[np.float64]


class Tensor(BaseModel):
    """One input or output of the exported graph."""

    model_config = ConfigDict(frozen=True)

    name: str
    type: str = Field(description="Element type, e.g. `double`.")
    shape: list[str | int] = Field(description="Dimensions; `N` is the number of trips.")
    description: str


class OnnxCard(BaseModel):
    """What an exported ONNX file is, where it came from, and what it leaves to the caller."""

    model_config = ConfigDict(frozen=True)

    model_version: str = Field(description="The tripq model version exported.")
    model_kind: str
    model_artifact_sha256: str = Field(description="The sha256 of the model.skops exported.")
    tripq_version: str = Field(description="The tripq release that wrote the file.")
    file: str = Field(description="The ONNX file's name, beside this card.")
    sha256: str = Field(description="The ONNX file's sha256.")
    opset: dict[str, int] = Field(description="Operator set versions by domain ('' is ai.onnx).")
    inputs: list[Tensor]
    outputs: list[Tensor]
    not_expressible: list[str] = Field(description="Steps of tripq's path left to the caller.")
    precision: str = Field(description="How closely the file's answers follow tripq's.")


class _Graph:
    """Collect ONNX nodes and constants, naming each result."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.constants: list[Any] = []
        self._count = 0

    def constant(self, value: Any, dtype: Any = np.float64) -> str:
        name = self._name("const")
        self.constants.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, domain: str = "", **attributes: Any) -> str:
        name = self._name(op_type.lower())
        self.nodes.append(
            helper.make_node(op_type, list(inputs), [name], domain=domain, **attributes)
        )
        return name

    def _name(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"


def _is_finite(g: _Graph, x: str) -> str:
    return g.op("Not", g.op("Or", g.op("IsNaN", x), g.op("IsInf", x)))


def _zone(g: _Graph, x: str) -> str:
    """Return int64 zone ids: `x` where whole and in 1..265, else 0 (features._zone)."""
    known = g.op(
        "And",
        g.op(
            "And",
            g.op("GreaterOrEqual", x, g.constant(ZONE_MIN)),
            g.op("LessOrEqual", x, g.constant(ZONES)),
        ),
        g.op("Equal", g.op("Floor", x), x),
    )
    return g.op("Cast", g.op("Where", known, x, g.constant(0.0)), to=TensorProto.INT64)


def _pair_table(means: _Means) -> Floats:
    """Flatten the pair means, with every pair of an unknown zone at the prior (_Means.lookup)."""
    table = means.pair.reshape(ZONES + 1, ZONES + 1).copy()
    table[0, :] = means.prior
    table[:, 0] = means.prior
    flat: Floats = table.ravel()
    return flat


def _lookups(g: _Graph, means: _Means, pu: str, do: str, pair: str) -> list[str]:
    return [
        g.op("Gather", g.constant(means.pu), pu),
        g.op("Gather", g.constant(means.do), do),
        g.op("Gather", g.constant(_pair_table(means)), pair),
    ]


def _time_columns(g: _Graph, seconds: str, holidays: NDArray[np.int64]) -> list[str]:
    """Hour, weekday and holiday of wall-clock seconds, as features.time_features computes them."""
    day = g.op("Floor", g.op("Div", seconds, g.constant(_DAY_S)))
    hour = g.op(
        "Div", g.op("Sub", seconds, g.op("Mul", day, g.constant(_DAY_S))), g.constant(3600.0)
    )
    # numpy's % is C's fmod moved into [0, 7); ONNX's Mod with fmod=1 is C's fmod.
    rest = g.op("Mod", g.op("Add", day, g.constant(_EPOCH_WEEKDAY)), g.constant(7.0), fmod=1)
    weekday = g.op(
        "Where", g.op("Less", rest, g.constant(0.0)), g.op("Add", rest, g.constant(7.0)), rest
    )
    # The holidays as a 0/1 table over the days from the first to the last: a sorted search is
    # a membership test, and days outside the table are no holidays.
    first = int(holidays.min()) if len(holidays) else 0
    table = np.zeros(int(holidays.max()) - first + 1 if len(holidays) else 1)
    table[holidays - first] = 1.0
    known = _is_finite(g, day)
    offset = g.op("Sub", g.op("Where", known, day, g.constant(float(first))), g.constant(first))
    inside = g.op(
        "And",
        g.op("GreaterOrEqual", offset, g.constant(0.0)),
        g.op("Less", offset, g.constant(float(len(table)))),
    )
    index = g.op(
        "Cast",
        g.op("Clip", offset, g.constant(0.0), g.constant(len(table) - 1.0)),
        to=TensorProto.INT64,
    )
    found = g.op("Where", inside, g.op("Gather", g.constant(table), index), g.constant(0.0))
    holiday = g.op("Where", known, found, g.constant(np.nan))
    return [hour, weekday, holiday]


def _features(g: _Graph, features: TripFeatures, inputs: dict[str, str]) -> str:
    """Return the [N, 16] feature matrix of TripFeatures.transform_columns."""
    pu, do = _zone(g, inputs[PICKUP_ZONE]), _zone(g, inputs[DROPOFF_ZONE])
    raw = inputs[DISTANCE]
    usable = g.op(
        "And", g.op("GreaterOrEqual", raw, g.constant(0.0)), g.op("Not", g.op("IsInf", raw))
    )
    miles = g.op("Where", usable, g.op("Min", raw, g.constant(MAX_MILES)), g.constant(np.nan))
    pair = g.op("Add", g.op("Mul", pu, g.constant(ZONES + 1, np.int64)), do)
    pu_min, do_min, pair_min = _lookups(g, features.minutes_, pu, do, pair)
    pu_pace, do_pace, pair_pace = _lookups(g, features.pace_, pu, do, pair)
    # np.maximum keeps NaN; ONNX's Max need not, so a missing distance stays missing explicitly.
    floor = g.op(
        "Where",
        g.op("IsNaN", miles),
        miles,
        g.op("Max", miles, g.constant(MIN_PACE_MILES)),
    )
    estimate = g.op("Mul", floor, pair_pace)
    same = g.op(
        "Cast",
        g.op("And", g.op("Equal", pu, do), g.op("Greater", pu, g.constant(0, np.int64))),
        to=TensorProto.DOUBLE,
    )
    codes = g.constant(features.borough_codes_)
    columns = [
        miles,
        same,
        pu_min,
        do_min,
        pair_min,
        pu_pace,
        do_pace,
        pair_pace,
        estimate,
        g.op("Cast", pu, to=TensorProto.DOUBLE),
        g.op("Cast", do, to=TensorProto.DOUBLE),
        g.op("Gather", codes, pu),
        g.op("Gather", codes, do),
        *_time_columns(g, inputs[PICKUP_TIME], features.holidays_),
    ]
    axis = g.constant([1], np.int64)
    return g.op("Concat", *(g.op("Unsqueeze", c, axis) for c in columns), axis=1)


def _ensemble(g: _Graph, ensemble: HistGradientBoostingRegressor, matrix: str) -> str:
    """Return the [N] predictions of a fitted HistGradientBoostingRegressor, in float64 splits."""
    if getattr(ensemble, "is_categorical_", None) is not None or ensemble.loss != "squared_error":
        raise ModelError("only numeric, squared-error boosted trees can be exported to ONNX")
    attributes: dict[str, list[Any]] = {
        key: []
        for key in [
            "nodes_treeids",
            "nodes_nodeids",
            "nodes_featureids",
            "nodes_modes",
            "nodes_values",
            "nodes_truenodeids",
            "nodes_falsenodeids",
            "nodes_missing_value_tracks_true",
            "target_treeids",
            "target_nodeids",
            "target_ids",
            "target_weights",
        ]
    }
    trees = [tree for iteration in ensemble._predictors for tree in iteration]
    for tree_id, tree in enumerate(trees):
        for node_id, node in enumerate(tree.nodes):
            leaf = bool(node["is_leaf"])
            attributes["nodes_treeids"].append(tree_id)
            attributes["nodes_nodeids"].append(node_id)
            attributes["nodes_featureids"].append(0 if leaf else int(node["feature_idx"]))
            attributes["nodes_modes"].append("LEAF" if leaf else "BRANCH_LEQ")
            attributes["nodes_values"].append(0.0 if leaf else float(node["num_threshold"]))
            # scikit-learn goes left when x <= threshold, and left with NaN if missing_go_to_left.
            attributes["nodes_truenodeids"].append(0 if leaf else int(node["left"]))
            attributes["nodes_falsenodeids"].append(0 if leaf else int(node["right"]))
            attributes["nodes_missing_value_tracks_true"].append(int(node["missing_go_to_left"]))
            if leaf:
                attributes["target_treeids"].append(tree_id)
                attributes["target_nodeids"].append(node_id)
                attributes["target_ids"].append(0)
                attributes["target_weights"].append(float(node["value"]))

    def doubles(name: str, values: Any) -> Any:
        return numpy_helper.from_array(np.asarray(values, dtype=np.float64).ravel(), name)

    predicted = g.op(
        "TreeEnsembleRegressor",
        matrix,
        domain="ai.onnx.ml",
        n_targets=1,
        aggregate_function="SUM",
        post_transform="NONE",
        base_values_as_tensor=doubles("base_values", ensemble._baseline_prediction),
        nodes_values_as_tensor=doubles("nodes_values", attributes.pop("nodes_values")),
        target_weights_as_tensor=doubles("target_weights", attributes.pop("target_weights")),
        **attributes,
    )
    return g.op(
        "Cast", g.op("Squeeze", predicted, g.constant([1], np.int64)), to=TensorProto.DOUBLE
    )


def _gbm(g: _Graph, model: TripModel, inputs: dict[str, str]) -> str:
    features, regressor = model.pipeline.steps[0][1], model.regressor
    assert regressor is not None
    if not features.pickup_time:
        raise ModelError(f"model {model.version} reads no pickup time: its trees cannot be routed")
    matrix = _features(g, features, inputs)
    base = g.op(
        "Slice",
        matrix,
        g.constant([0], np.int64),
        g.constant([BASE_COLUMNS], np.int64),
        g.constant([1], np.int64),
    )
    ensembles = regressor.ensembles()
    untimed = _ensemble(g, ensembles["untimed"], base)
    timed = _ensemble(g, ensembles["timed"], matrix)
    # trees.has_time: a row with a finite holiday column has a pickup time.
    holiday = g.op("Gather", matrix, g.constant(TIMED_COLUMNS - 1, np.int64), axis=1)
    return g.op("Where", _is_finite(g, holiday), timed, untimed)


def _baseline(g: _Graph, scorer: LinearScorer, inputs: dict[str, str]) -> tuple[str, list[str]]:
    """Return intercept + pair weight + slope * miles (LinearScorer.predict), and what is left."""
    size = ZONES + 1
    table = np.zeros(size * size)
    skipped = 0
    for key, value in scorer.pair_weights.items():
        pu_text, _, do_text = key.partition("_")
        # A pair a whole-number id formats to: what LinearScorer finds for an int zone id.
        if _whole_zone(pu_text) and _whole_zone(do_text):
            table[int(pu_text) * size + int(do_text)] = value
        else:
            skipped += 1
    pu, do = _zone(g, inputs[PICKUP_ZONE]), _zone(g, inputs[DROPOFF_ZONE])
    known = g.op(
        "And",
        g.op("Greater", pu, g.constant(0, np.int64)),
        g.op("Greater", do, g.constant(0, np.int64)),
    )
    pair = g.op("Add", g.op("Mul", pu, g.constant(size, np.int64)), do)
    weight = g.op("Where", known, g.op("Gather", g.constant(table), pair), g.constant(0.0))
    # The order of LinearScorer's sum, so the rounding is the same too.
    minutes = g.op(
        "Add",
        g.op("Add", g.constant(scorer.intercept), weight),
        g.op("Mul", g.constant(scorer.distance_weight), inputs[DISTANCE]),
    )
    left = [f"{skipped} zone pairs of the training set that are no two whole zone ids"]
    return minutes, left if skipped else []


def _whole_zone(text: str) -> bool:
    """Tell whether `text` is how an int zone id in 1..265 formats."""
    return text.isdigit() and str(int(text)) == text and ZONE_MIN <= int(text) <= ZONES


def export_onnx(model: TripModel, output_dir: Path) -> tuple[Path, OnnxCard]:
    """Write `model` as VERSION.onnx and its card VERSION.onnx.json into `output_dir`."""
    g = _Graph()
    if model.card.kind == "baseline":
        names = [PICKUP_ZONE, DROPOFF_ZONE, DISTANCE]
        inputs = {name: name for name in names}
        scorer = LinearScorer(*(step for _, step in model.pipeline.steps))
        minutes, left = _baseline(g, scorer, inputs)
        left = [_TEXT_ZONES, *left]
    else:
        names = [PICKUP_ZONE, DROPOFF_ZONE, DISTANCE, PICKUP_TIME]
        inputs = {name: name for name in names}
        minutes, left = _gbm(g, model, inputs), [_WALL_CLOCK, _TEXT_ZONES]
    g.nodes.append(helper.make_node("Identity", [minutes], [OUTPUT]))
    tensors = [
        Tensor(name=name, type="double", shape=["N"], description=_DESCRIPTIONS[name])
        for name in [*names, OUTPUT]
    ]
    graph = helper.make_graph(
        g.nodes,
        f"tripq-{model.version}",
        [helper.make_tensor_value_info(t.name, TensorProto.DOUBLE, t.shape) for t in tensors[:-1]],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.DOUBLE, ["N"])],
        initializer=g.constants,
    )
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(domain, v) for domain, v in OPSET.items()],
        producer_name="tripq",
        doc_string=f"tripq model {model.version}: trip duration in minutes",
    )
    proto.ir_version = 9  # what onnxruntime releases since 1.16 read
    onnx.checker.check_model(proto, full_check=True)
    data = proto.SerializeToString()
    card = OnnxCard(
        model_version=model.version,
        model_kind=model.card.kind,
        model_artifact_sha256=model.card.artifact_sha256,
        tripq_version=_tripq_version(),
        file=f"{model.version}.onnx",
        sha256=hashlib.sha256(data).hexdigest(),
        opset=OPSET,
        inputs=tensors[:-1],
        outputs=tensors[-1:],
        not_expressible=left,
        precision=_PRECISION[model.card.kind],
    )
    path = output_dir / card.file
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(path, data)
        write_atomically(card_path(path), card.model_dump_json(indent=2) + "\n")
    except OSError as exc:
        raise ModelError(f"cannot write to {output_dir}: {exc.strerror or exc}") from exc
    return path, card


def card_path(onnx_file: Path) -> Path:
    """Where the card of an exported ONNX file lies: beside it."""
    return onnx_file.with_name(onnx_file.name + ".json")


def _tripq_version() -> str:
    try:
        return package_version("tripq")
    except PackageNotFoundError:
        return "unknown"
