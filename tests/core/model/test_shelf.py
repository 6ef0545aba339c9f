"""A worker's model shelf following the routing: load first, then serve; drop what is unnamed."""

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from core.errors import ModelError
from core.model.shelf import ModelShelf
from core.online.routing import Routing
from core.trip.schemas import TripColumns
from tests.core.conftest import REPO_ROOT

BASELINE, GBM = "baseline-2021-01", "gbm-2021-01-v2"
T = TypeVar("T")


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    for version in (BASELINE, GBM):
        shutil.copytree(REPO_ROOT / "repo" / "models" / version, tmp_path / version)
    (tmp_path / "CURRENT").write_text(f"{BASELINE}\n")
    return tmp_path


def test_before_any_routing_the_current_file_names_the_model(artifacts: Path) -> None:
    shelf = ModelShelf(artifacts, None)

    assert shelf.get().version == BASELINE
    assert shelf.loaded_version == BASELINE


def test_following_a_promotion_loads_then_serves_and_keeps_the_previous(artifacts: Path) -> None:
    shelf = ModelShelf(artifacts, None)
    shelf.get()

    shelf.follow(Routing(current=GBM, previous=BASELINE))

    assert shelf.loaded_version == GBM
    assert shelf.versions == [BASELINE, GBM]
    assert shelf.get(BASELINE).version == BASELINE


def test_versions_the_routing_no_longer_names_are_dropped(artifacts: Path) -> None:
    shelf = ModelShelf(artifacts, None)
    shelf.follow(Routing(current=GBM, previous=BASELINE))

    shelf.follow(Routing(current=GBM))

    assert shelf.versions == [GBM]


def test_a_version_that_cannot_load_leaves_the_current_one_serving(artifacts: Path) -> None:
    shelf = ModelShelf(artifacts, None)
    shelf.get()

    shelf.follow(Routing(current="absent-1", previous=BASELINE))
    shelf.follow(Routing(current="absent-1", previous=BASELINE))  # not retried at once

    assert shelf.loaded_version == BASELINE
    assert shelf.versions == [BASELINE]
    with pytest.raises(ModelError, match="absent-1"):
        shelf.get("absent-1")


def test_only_loading_and_predicting_go_through_the_offload(artifacts: Path) -> None:
    offloaded: list[str] = []

    def offload(fn: Callable[..., T], /, *args: object) -> T:
        offloaded.append(fn.__name__)
        return fn(*args)

    shelf = ModelShelf(artifacts, None, offload=offload)
    shelf.follow(Routing(current=GBM, previous=BASELINE))
    durations, version = shelf.predict_columns(
        TripColumns(PULocationID=[43], DOLocationID=[151], trip_distance=[1.01])
    )

    assert offloaded == ["load_model", "load_model", "predict"]
    assert version == GBM
    assert durations == shelf.get(GBM).predict_columns([43], [151], [1.01])
