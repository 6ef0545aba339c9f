"""Reading TLC files, training, evaluating, fetching months, and the train/evaluate commands."""

import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from boot.cli_model import evaluate, train
from config import get_settings
from core.errors import ModelError
from core.model.artifact import load_model
from core.model.registry import CURRENT_FILE, read_card, sha256_file
from core.model.tlc import DataError, fetch_month, read_trips, resolve_data_file
from core.model.training import evaluate_model, regression_metrics, train_model
from tests.core.conftest import OUT_OF_WINDOW, TlcMirror

COURSE_RMSE = 7.758715209663881  # MLOps Zoomcamp baseline: green 2021-01 -> 2021-02
MakeTrips = Callable[..., Path]


# --- Reading -------------------------------------------------------------------------------------


def test_read_trips_takes_the_2021_schema_with_string_ids_and_a_duration(
    make_trips: MakeTrips,
) -> None:
    path = make_trips("green_tripdata_2021-01.parquet", string_ids=True, with_duration=True)

    trips = read_trips(path)

    assert list(trips.columns) == [
        "PULocationID",
        "DOLocationID",
        "trip_distance",
        "pickup_wall_clock_s",
        "duration",
    ]
    assert len(trips) == 400 - OUT_OF_WINDOW
    assert trips["duration"].between(1, 60).all()
    assert set(trips["PULocationID"]) <= {"7", "43", "74", "75", "130", "151", "166", "250"}


def test_read_trips_takes_the_2023_schema_with_int_ids_and_no_duration(
    make_trips: MakeTrips,
) -> None:
    path = make_trips("green_tripdata_2023-01.parquet", string_ids=False, with_duration=False)
    raw = pd.read_parquet(path)

    trips = read_trips(path)

    assert raw["PULocationID"].dtype == np.int64
    assert len(trips) == 400 - OUT_OF_WINDOW
    assert trips["PULocationID"].iloc[0] == str(raw["PULocationID"].iloc[OUT_OF_WINDOW])
    expected = (raw["lpep_dropoff_datetime"] - raw["lpep_pickup_datetime"]).dt.total_seconds() / 60
    assert trips["duration"].tolist() == expected.iloc[OUT_OF_WINDOW:].tolist()


def test_read_trips_takes_a_yellow_csv(make_trips: MakeTrips) -> None:
    trips = read_trips(make_trips("yellow_tripdata_2023-01.csv", taxi="yellow"))

    assert len(trips) == 400 - OUT_OF_WINDOW
    assert trips["PULocationID"].map(type).eq(str).all()


def test_a_file_without_tlc_columns_is_refused_with_what_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "zones.parquet"
    pd.DataFrame({"LocationID": [1, 2], "Borough": ["EWR", "Queens"]}).to_parquet(path)

    with pytest.raises(DataError, match=r"zones\.parquet is not a TLC trip file: missing .*PULoc"):
        read_trips(path)


def test_a_file_with_no_trip_between_1_and_60_minutes_is_refused(make_trips: MakeTrips) -> None:
    path = make_trips("short.parquet", rows=20, minutes=0.5)

    with pytest.raises(DataError, match=r"short\.parquet has no usable trips: none of its 20 rows"):
        read_trips(path)


def test_a_file_of_another_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "trips.json"
    path.write_text("[]")

    with pytest.raises(DataError, match=r"trips\.json: expected a \.parquet or \.csv file"):
        read_trips(path)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nothere\.parquet does not exist"):
        read_trips(tmp_path / "nothere.parquet")


def test_a_corrupt_parquet_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not parquet")

    with pytest.raises(DataError, match=r"cannot read broken\.parquet"):
        read_trips(path)


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("name", "rows"),
    [
        ("green_tripdata_2021-01.parquet", 73_908),
        ("green_tripdata_2021-02.parquet", 61_921),
        ("green_tripdata_2023-01.parquet", 65_946),
        ("green_tripdata_2023-02.parquet", 62_574),
    ],
)
def test_read_trips_keeps_the_documented_rows_of_the_real_files(
    real_data: Path, name: str, rows: int
) -> None:
    assert len(read_trips(real_data / name)) == rows


# --- Training and evaluation ---------------------------------------------------------------------


@pytest.mark.realdata
def test_baseline_reproduces_the_course_rmse_on_the_real_files(
    real_data: Path, tmp_path: Path
) -> None:
    valid = real_data / "green_tripdata_2021-02.parquet"

    card = train_model(
        [real_data / "green_tripdata_2021-01.parquet"], valid, tmp_path / "b", kind="baseline"
    )

    assert round(card.metrics["rmse"], 3) == round(COURSE_RMSE, 3) == 7.759
    assert (card.train_rows, card.valid_rows) == (73_908, 61_921)
    assert evaluate_model(tmp_path / "b", [valid])["rmse"] == pytest.approx(card.metrics["rmse"])


def test_train_model_writes_a_card_named_after_its_directory(
    tmp_path: Path, make_trips: MakeTrips
) -> None:
    train = [make_trips("a.parquet", seed=1), make_trips("b.parquet", seed=2, rows=300)]
    valid = make_trips("c.parquet", seed=3)
    steps: list[str] = []

    card = train_model(train, valid, tmp_path / "models" / "baseline-x", progress=steps.append)

    output = tmp_path / "models" / "baseline-x"
    assert read_card(output) == card
    assert card.version == "baseline-x"
    assert card.kind == "gbm"  # the default kind
    assert [(f.name, f.sha256, f.rows_read, f.rows) for f in card.train_files] == [
        ("a.parquet", sha256_file(train[0]), 400, 400 - OUT_OF_WINDOW),
        ("b.parquet", sha256_file(train[1]), 300, 300 - OUT_OF_WINDOW),
    ]
    assert [f.name for f in card.valid_files] == ["c.parquet"]
    assert (card.train_rows, card.valid_rows) == (680, 390)
    three_fields = {"rmse", "mae", "r2", "train_rmse"}
    assert set(card.metrics) == three_fields | {"pickup_rmse", "pickup_mae", "pickup_r2"}
    assert card.metrics["r2"] > 0.8
    assert card.features == ["PULocationID", "DOLocationID", "trip_distance", "pickup_datetime"]
    assert set(card.libraries) == {"python", "scikit-learn", "skops", "numpy", "pandas"}
    assert card.artifact_sha256 == sha256_file(output / card.artifact)
    assert steps[0] == "reading a.parquet"
    assert any(step.startswith("fitting gbm on 680 trips") for step in steps)
    assert steps[-1] == "drawing the report"


def test_an_explicit_version_overrides_the_directory_name(
    tmp_path: Path, make_trips: MakeTrips
) -> None:
    files = [make_trips("a.parquet")], make_trips("b.parquet", seed=1)

    card = train_model(*files, tmp_path / "out", version="baseline-special")

    assert load_model(tmp_path / "out").version == card.version == "baseline-special"


def test_training_is_deterministic(tmp_path: Path, make_trips: MakeTrips) -> None:
    train, valid = [make_trips("a.parquet")], make_trips("b.parquet", seed=1)

    first = train_model(train, valid, tmp_path / "one")
    second = train_model(train, valid, tmp_path / "two")

    assert first.metrics == second.metrics
    trips = read_trips(valid)
    one, two = (evaluate_model(tmp_path / name, [valid]) for name in ("one", "two"))
    for result in (one, two, one["pickup"], two["pickup"]):
        assert result is not None
        result["model"] = ""
    assert one == two
    assert len(trips) == first.valid_rows


def test_an_existing_model_is_not_overwritten_unless_asked(
    tmp_path: Path, make_trips: MakeTrips
) -> None:
    train, valid = [make_trips("a.parquet")], make_trips("b.parquet", seed=1)
    output = tmp_path / "baseline-x"
    train_model(train, valid, output)

    with pytest.raises(ModelError, match="already holds model 'baseline-x'"):
        train_model(train, valid, output)
    assert train_model(train, valid, output, overwrite=True).version == "baseline-x"


def test_an_unknown_kind_is_refused_before_reading_data(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="unknown model kind 'forest'; known kinds: gbm, baseline"):
        train_model([tmp_path / "absent.parquet"], tmp_path / "absent.parquet", tmp_path / "m",
                    kind="forest")  # fmt: skip


def test_evaluate_model_reports_each_file_and_all_of_them(
    model_dir: Path, make_trips: MakeTrips
) -> None:
    files = [make_trips("x.parquet", seed=11), make_trips("y.parquet", seed=12, rows=200)]

    result = evaluate_model(model_dir, files)

    assert result["model"] == "synthetic-1"
    assert [(f["name"], f["rows"]) for f in result["files"]] == [
        ("x.parquet", 390),
        ("y.parquet", 190),
    ]
    assert result["rows"] == 580
    low, high = sorted(f["rmse"] for f in result["files"])
    assert low <= result["rmse"] <= high
    assert 0.0 < result["mae"] <= result["rmse"]


def test_metrics_stay_finite_for_one_trip_and_for_constant_durations() -> None:
    one = regression_metrics(np.array([10.0]), np.array([12.0]))
    exact = regression_metrics(np.array([5.0, 5.0]), np.array([5.0, 5.0]))

    assert one == {"rmse": 2.0, "mae": 2.0, "r2": 0.0}
    assert exact == {"rmse": 0.0, "mae": 0.0, "r2": 1.0}


# --- Fetching months -----------------------------------------------------------------------------


def _publish(mirror: TlcMirror, make_trips: MakeTrips, name: str) -> Path:
    """Put a synthetic trip file on the mirror and return it."""
    source = make_trips(name)
    served = mirror.root / "trip-data" / name
    served.write_bytes(source.read_bytes())
    return served


def test_fetch_month_downloads_a_month_once(
    tlc_mirror: TlcMirror, make_trips: MakeTrips, tmp_path: Path
) -> None:
    served = _publish(tlc_mirror, make_trips, "green_tripdata_2021-01.parquet")
    dest = tmp_path / "downloads"

    first = fetch_month("green:2021-01", dest, tlc_mirror.base_url)
    second = fetch_month("green:2021-01", dest, tlc_mirror.base_url)

    assert first == second == dest / "green_tripdata_2021-01.parquet"
    assert first.read_bytes() == served.read_bytes()
    assert tlc_mirror.paths == ["/trip-data/green_tripdata_2021-01.parquet"]
    assert sorted(p.name for p in dest.iterdir()) == ["green_tripdata_2021-01.parquet"]


def test_fetch_month_reports_a_month_the_server_lacks(
    tlc_mirror: TlcMirror, tmp_path: Path
) -> None:
    with pytest.raises(
        DataError, match=r"cannot download http://.*yellow_tripdata_2023-02\.parquet: HTTP 404"
    ):
        fetch_month("yellow:2023-02", tmp_path / "d", tlc_mirror.base_url)
    assert list((tmp_path / "d").iterdir()) == []


def test_fetch_month_refuses_a_reply_that_is_not_parquet(
    tlc_mirror: TlcMirror, tmp_path: Path
) -> None:
    (tlc_mirror.root / "trip-data" / "green_tripdata_2021-03.parquet").write_text("<html>no</html>")

    with pytest.raises(DataError, match="did not return a parquet file"):
        fetch_month("green:2021-03", tmp_path / "d", tlc_mirror.base_url)
    assert list((tmp_path / "d").iterdir()) == []


@pytest.fixture
def closed_port() -> int:
    """Yield a local port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_fetch_month_says_so_when_offline(closed_port: int, tmp_path: Path) -> None:
    with pytest.raises(
        DataError,
        match=r"cannot reach http://127\.0\.0\.1:\d+/green_tripdata_2021-01\.parquet: .*offline",
    ):
        fetch_month("green:2021-01", tmp_path, f"http://127.0.0.1:{closed_port}", timeout_s=5)


@pytest.mark.parametrize("spec", ["green:2021-13", "blue:2021-01", "green:21-01", "green_2021-01"])
def test_a_malformed_month_spec_is_refused(spec: str, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is not a month spec like green:2021-01"):
        fetch_month(spec, tmp_path, "http://127.0.0.1:9")


def test_resolve_data_file_fetches_specs_and_keeps_paths(
    tlc_mirror: TlcMirror, make_trips: MakeTrips, tmp_path: Path
) -> None:
    _publish(tlc_mirror, make_trips, "green_tripdata_2021-02.parquet")
    local = make_trips("local.parquet")

    fetched = resolve_data_file(
        "green:2021-02", data_dir=tmp_path / "d", base_url=tlc_mirror.base_url
    )
    kept = resolve_data_file(str(local), data_dir=tmp_path / "d", base_url=tlc_mirror.base_url)

    assert fetched == tmp_path / "d" / "green_tripdata_2021-02.parquet"
    assert kept == local


# --- The train and evaluate commands -------------------------------------------------------------


@pytest.fixture
def cli() -> typer.Typer:
    """Build a `tripq`-like app from the two model commands, as boot/cli.py registers them."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(train)
    app.command()(evaluate)
    return app


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """Point the commands' settings at tmp_path (artifact and data dirs); yield the models dir."""
    models = tmp_path / "models"
    monkeypatch.setenv("ARTIFACT_DIR", str(models))
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "tlc"))
    monkeypatch.delenv("SERVING_VERSION", raising=False)
    get_settings.cache_clear()
    yield models
    get_settings.cache_clear()


def test_evaluate_command_ends_with_one_json_line(
    cli: typer.Typer, model_dir: Path, make_trips: MakeTrips
) -> None:
    files = [str(make_trips("x.parquet", seed=11)), str(make_trips("y.parquet", seed=12))]

    result = CliRunner().invoke(cli, ["evaluate", "--model", str(model_dir), *files])

    assert result.exit_code == 0, result.output
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert last["model"] == "synthetic-1"
    assert last["rows"] == 780
    assert {"rmse", "mae", "r2"} <= set(last)
    assert "x.parquet" in result.stdout


def test_evaluate_command_defaults_to_the_current_model(
    cli: typer.Typer, model_dir: Path, make_trips: MakeTrips, settings_env: Path
) -> None:
    (settings_env / CURRENT_FILE).write_text("synthetic-1\n")

    result = CliRunner().invoke(cli, ["evaluate", str(make_trips("x.parquet", seed=11))])

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[-1])["model"] == "synthetic-1"


def test_train_command_accepts_month_specs_and_prints_metrics(
    cli: typer.Typer, tlc_mirror: TlcMirror, make_trips: MakeTrips, settings_env: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("TLC_BASE_URL", tlc_mirror.base_url)
    _publish(tlc_mirror, make_trips, "green_tripdata_2021-01.parquet")
    valid = make_trips("valid.parquet", seed=5)
    output = settings_env / "gbm-cli"

    args = ["train", "--train", "green:2021-01", "--valid", str(valid), "--output", str(output)]
    result = CliRunner().invoke(cli, [*args, "--current"])

    assert result.exit_code == 0, result.output
    assert read_card(output).train_files[0].name == "green_tripdata_2021-01.parquet"
    assert (settings_env / CURRENT_FILE).read_text() == "gbm-cli\n"
    assert (output / "report" / "report.html").is_file()
    assert "rmse" in result.stdout
    assert "fitting gbm" in result.stderr
    # The zone lookup that ships with tripq: the mirror has none, and nothing is fetched.
    assert not (get_settings().data_dir / "taxi_zone_lookup.csv").exists()


def test_command_errors_are_one_line_with_exit_code_1(
    cli: typer.Typer, model_dir: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "nothere.parquet"

    result = CliRunner().invoke(cli, ["evaluate", "--model", str(model_dir), str(missing)])

    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {missing} does not exist"]
    assert "Traceback" not in result.output
