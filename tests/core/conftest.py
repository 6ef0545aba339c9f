"""Trip data for the model tests: small synthetic TLC files, the real ones, and a local TLC mirror.

Synthetic files follow the TLC green schema (lpep_* timestamps) with a known, learnable duration:
about 2 + 3 minutes per mile, so a baseline fitted on them predicts sensibly.
"""

import threading
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from core.model.training import train_model

REPO_ROOT = Path(__file__).resolve().parents[2]
REAL_DATA = REPO_ROOT.parent / "shared" / "data" / "nyc-tlc"
ZONES = np.array([7, 43, 74, 75, 130, 151, 166, 250])
OUT_OF_WINDOW = 10  # leading rows of every synthetic file that last too short or too long


def synthetic_trips(
    rows: int,
    seed: int,
    *,
    string_ids: bool = False,
    with_duration: bool = False,
    taxi: str = "green",
    minutes: float | None = None,
) -> pd.DataFrame:
    """Return TLC-shaped trips; the first OUT_OF_WINDOW rows fall outside 1..60 minutes."""
    rng = np.random.default_rng(seed)
    pu, do = rng.choice(ZONES, rows), rng.choice(ZONES, rows)
    miles = rng.uniform(0.3, 8.0, rows).round(2)
    if minutes is None:
        # Clipped so that exactly the first OUT_OF_WINDOW rows are dropped by cleaning.
        duration = np.clip(2.0 + 3.0 * miles + (pu % 5) + rng.normal(0.0, 1.0, rows), 1.5, 59.0)
        duration[:OUT_OF_WINDOW] = np.where(np.arange(OUT_OF_WINDOW) % 2 == 0, 0.5, 90.0)
    else:
        duration = np.full(rows, minutes)
    pickup = pd.Timestamp("2023-01-01") + pd.to_timedelta(rng.integers(0, 2_500_000, rows), "s")
    dropoff = pickup + pd.to_timedelta(np.round(duration * 60), "s")
    prefix = "lpep" if taxi == "green" else "tpep"
    frame = pd.DataFrame(
        {
            "VendorID": np.full(rows, 2),
            f"{prefix}_pickup_datetime": pickup,
            f"{prefix}_dropoff_datetime": dropoff,
            "PULocationID": pu.astype(str) if string_ids else pu.astype("int64"),
            "DOLocationID": do.astype(str) if string_ids else do.astype("int64"),
            "passenger_count": np.ones(rows),
            "trip_distance": miles,
            "fare_amount": 3.0 + 2.5 * miles,
        }
    )
    if with_duration:
        frame["duration"] = (frame[f"{prefix}_dropoff_datetime"] - pickup).dt.total_seconds() / 60
    return frame


@pytest.fixture
def make_trips(tmp_path: Path) -> Callable[..., Path]:
    """Write synthetic trips to tmp_path/data/<name> (.parquet or .csv) and return the path."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)

    def make(name: str, *, rows: int = 400, seed: int = 0, **options: Any) -> Path:
        """Write `rows` trips; options are those of `synthetic_trips`."""
        frame = synthetic_trips(rows, seed, **options)
        path = data_dir / name
        if name.endswith(".csv"):
            frame.to_csv(path, index=False)
        else:
            frame.to_parquet(path, index=False)
        return path

    return make


def write_zones(path: Path) -> Path:
    """Write a zone lookup in the TLC's layout: zones 1..265 in five boroughs, as the real one."""
    boroughs = ["Bronx", "Brooklyn", "Manhattan", "Queens", "Staten Island"]
    frame = pd.DataFrame(
        {
            "LocationID": range(1, 266),
            "Borough": [boroughs[z % 5] for z in range(1, 266)],
            "Zone": [f"zone {z}" for z in range(1, 266)],
            "service_zone": "Boro Zone",
        }
    )
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def model_dir(tmp_path: Path, make_trips: Callable[..., Path]) -> Path:
    """Return the directory of a model of the default kind trained on synthetic trips, version
    `synthetic-1`."""
    train = make_trips("green_tripdata_2023-01.parquet", seed=1)
    valid = make_trips("green_tripdata_2023-02.parquet", seed=2)
    output = tmp_path / "models" / "synthetic-1"
    train_model([train], valid, output)
    return output


@pytest.fixture
def real_data() -> Path:
    """Return the folder of the real TLC files, or skip the test when they are absent."""
    if not (REAL_DATA / "green_tripdata_2021-01.parquet").is_file():
        pytest.skip(f"real TLC files not found in {REAL_DATA}")
    return REAL_DATA


class _QuietHandler(SimpleHTTPRequestHandler):
    """Serve files without logging each request to stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class TlcMirror:
    """A local HTTP server standing in for the TLC's CloudFront, counting the GETs it answers."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.paths: list[str] = []
        mirror = self

        class Handler(_QuietHandler):
            def do_GET(self) -> None:
                mirror.paths.append(self.path)
                super().do_GET()

        handler: Callable[..., Handler] = partial(Handler, directory=str(root))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/trip-data"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def tlc_mirror(tmp_path: Path) -> Iterator[TlcMirror]:
    """Run a local TLC mirror serving tmp_path/mirror/trip-data/ for the test, then stop it."""
    root = tmp_path / "mirror"
    (root / "trip-data").mkdir(parents=True)
    mirror = TlcMirror(root)
    mirror.start()
    yield mirror
    mirror.stop()
