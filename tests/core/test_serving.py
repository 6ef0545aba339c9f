"""A worker's model shelf following the routing: load first, then serve; drop what is unnamed."""

import shutil
from pathlib import Path

import pytest

from core.errors import ModelError
from core.rollout import Routing
from core.serving import ModelShelf
from tests.core.conftest import REPO_ROOT

BASELINE, GBM = "baseline-2021-01", "gbm-2021-01"


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
