"""Model versions on a live fleet: promote, canary, pin and roll back under load, and refusals.

Every test runs real workers and the API against a copy of the committed models (the baseline and
the gradient-boosted model), and changes the routing with the real `tripq models` command.
"""

import hashlib
import json
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import skops.io as sio

from core.model.artifact import TripModel, load_model
from core.online.routing import ROUTING_KEY, Routing
from tests.support import (
    REPO,
    Load,
    Outcome,
    Service,
    start_api,
    start_workers,
    tripq_env,
    varied_trips,
    wait_until,
)

BASELINE, GBM = "baseline-2021-01", "gbm-2021-01-v2"
FOLLOW_S = 20.0  # a command waits for the fleet; a reply may still come from the old version


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    """An artifact directory of this test's own: both committed models, the baseline current."""
    folder = tmp_path / "models"
    for version in (BASELINE, GBM):
        shutil.copytree(REPO / "repo" / "models" / version, folder / version)
    (folder / "CURRENT").write_text(f"{BASELINE}\n")
    return folder


@pytest.fixture
def fresh_db(redis_client: redis.Redis) -> redis.Redis:
    redis_client.flushdb()
    return redis_client


@pytest.fixture(scope="module")
def models() -> dict[str, TripModel]:
    return {v: load_model(REPO / "repo" / "models" / v) for v in (BASELINE, GBM)}


def tripq_models(env: dict[str, str], log_dir: Path, *args: str) -> tuple[int, str]:
    """Run `tripq models ARGS`; its exit code and output."""
    command = Service(f"models-{args[0]}-{time.monotonic_ns()}", ["models", *args], env, log_dir)
    code = command.finish(60)
    return code, command.log_tail(20_000)


def versions_since(load: Load, since: float) -> Counter[str]:
    """Count the versions that answered the requests sent at or after `since`."""
    answered = (o.body for o in load.sent_since(since) if o.kind == "ok")
    return Counter(body["model_version"] for body in answered if body)


def unanswered_by_change(outcomes: list[Outcome], changes: dict[str, float]) -> list[str]:
    """Describe each request that was not answered: when it was sent, from each routing change."""
    return [
        f"{o.kind} after {o.latency_s:.3f} s, sent "
        + ", ".join(f"{o.sent_at - at:+.3f} s from {name}" for name, at in changes.items())
        for o in outcomes
        if o.kind != "ok"
    ]


def wrong_answers(outcomes: list[Outcome], models: dict[str, TripModel]) -> list[Outcome]:
    """The successful outcomes whose duration is not what the version they name predicts."""
    by_version: dict[str, list[tuple[Outcome, float]]] = {}
    for outcome in outcomes:
        if outcome.kind == "ok" and outcome.body is not None:
            version, duration = outcome.body["model_version"], outcome.body["duration"]
            by_version.setdefault(version, []).append((outcome, duration))
    wrong = []
    for version, answered in by_version.items():
        # One call per version: the gbm costs milliseconds a call, whatever its batch size.
        trips = [outcome.trip for outcome, _ in answered]
        expected = models[version].predict_columns(
            [t["PULocationID"] for t in trips],
            [t["DOLocationID"] for t in trips],
            [t["trip_distance"] for t in trips],
        )
        for (outcome, duration), should in zip(answered, expected, strict=True):
            if abs(duration - should) > 1e-6 * max(1.0, abs(should)):
                wrong.append(outcome)
    return wrong


@pytest.fixture
def fleet(
    artifacts: Path, fresh_db: redis.Redis, redis_url: str, log_dir: Path
) -> Iterator[tuple[str, dict[str, str]]]:
    env = tripq_env(redis_url, log_dir, artifact_dir=artifacts)
    workers = start_workers(env, log_dir, [1, 2])
    api, base = start_api(env, log_dir)
    try:
        yield base, env
    finally:
        api.stop()
        for worker in workers:
            worker.stop()


def test_promote_canary_pin_and_rollback_under_load_lose_no_request(
    fleet: tuple[str, dict[str, str]],
    fresh_db: redis.Redis,
    artifacts: Path,
    log_dir: Path,
    models: dict[str, TripModel],
) -> None:
    base, env = fleet
    with Load(base, varied_trips(2000), repeat=True, concurrency=8, timeout_s=15) as load:
        wait_until(lambda: versions_since(load, 0)[BASELINE] > 50, 30, "baseline answers")

        code, output = tripq_models(env, log_dir, "promote", GBM)
        assert code == 0, output
        promoted = time.monotonic()
        wait_until(lambda: versions_since(load, promoted + 1)[GBM] > 50, FOLLOW_S, "gbm answers")
        assert set(versions_since(load, promoted + 1)) == {GBM}
        assert (artifacts / "CURRENT").read_text() == f"{GBM}\n"

        code, output = tripq_models(env, log_dir, "canary", BASELINE, "--share", "0.5")
        assert code == 0, output
        canaried = time.monotonic()
        wait_until(
            lambda: min(versions_since(load, canaried + 1)[v] for v in (BASELINE, GBM)) > 30,
            FOLLOW_S,
            "both versions answering",
        )
        pinned = httpx.post(
            f"{base}/v1/trip/predict",
            json=varied_trips(1, "pin")[0],
            headers={"X-Model-Version": GBM},
            timeout=10,
        )
        health = httpx.get(f"{base}/health", timeout=5).json()

        code, output = tripq_models(env, log_dir, "rollback")
        assert code == 0, output
        rolled = time.monotonic()
        wait_until(
            lambda: versions_since(load, rolled + 1)[BASELINE] > 50, FOLLOW_S, "baseline again"
        )
        assert set(versions_since(load, rolled + 1)) == {BASELINE}
    outcomes = load.outcomes

    changes = {"promote": promoted, "canary": canaried, "rollback": rolled}
    assert {o.kind for o in outcomes} == {"ok"}, (
        Counter(o.kind for o in outcomes),
        unanswered_by_change(outcomes, changes),
    )
    assert wrong_answers(outcomes, models) == []
    assert pinned.status_code == 200
    assert pinned.json()["model_version"] == GBM
    assert health["model_version"] == GBM
    assert (health["canary"], health["canary_share"]) == (BASELINE, 0.5)
    assert Routing.from_hash(fresh_db.hgetall(ROUTING_KEY)) == Routing(BASELINE, GBM)


@pytest.mark.parametrize("damage", ["hash", "features", "shape", "smoke"])
def test_a_bad_artifact_is_refused_at_promotion_and_the_current_model_keeps_serving(
    fleet: tuple[str, dict[str, str]],
    fresh_db: redis.Redis,
    artifacts: Path,
    log_dir: Path,
    damage: str,
) -> None:
    base, env = fleet
    bad = artifacts / "bad-1"
    shutil.copytree(artifacts / GBM, bad)
    card = json.loads((bad / "card.json").read_text())
    card["version"] = "bad-1"
    if damage == "hash":
        card["artifact_sha256"] = "0" * 64
    elif damage == "features":
        card["features"] = ["PULocationID", "DOLocationID", "trip_distance", "fare_amount"]
    elif damage == "shape":
        # A baseline's card on a gbm artifact: its pipeline is not what the card vouches for.
        card["kind"] = "baseline"
    else:
        # A well-formed, correctly signed baseline that answers NaN: only its smoke test tells.
        pipeline = load_model(artifacts / BASELINE).pipeline
        pipeline.steps[-1][1].intercept_ = float("nan")
        data = sio.dumps(pipeline)
        (bad / "model.skops").write_bytes(data)
        card.update(kind="baseline", artifact_sha256=hashlib.sha256(data).hexdigest())
    (bad / "card.json").write_text(json.dumps(card))

    code, output = tripq_models(env, log_dir, "promote", "bad-1")
    reply = httpx.post(f"{base}/v1/trip/predict", json=varied_trips(1, "after")[0], timeout=10)

    assert code == 1
    assert "bad-1 not promoted" in output
    assert "nothing changed" in output
    assert fresh_db.hgetall(ROUTING_KEY) == {}
    assert (artifacts / "CURRENT").read_text() == f"{BASELINE}\n"
    assert reply.status_code == 200
    assert reply.json()["model_version"] == BASELINE


def test_a_pinned_request_is_only_served_by_a_worker_that_holds_its_version(
    artifacts: Path, fresh_db: redis.Redis, redis_url: str, log_dir: Path, tmp_path: Path
) -> None:
    # One worker has both models; the other was deployed without the gbm (an older image).
    older = tmp_path / "older-models"
    shutil.copytree(artifacts / BASELINE, older / BASELINE)
    (older / "CURRENT").write_text(f"{BASELINE}\n")
    env = tripq_env(redis_url, log_dir, artifact_dir=artifacts)
    older_env = tripq_env(redis_url, log_dir, artifact_dir=older)
    (full,) = start_workers(env, log_dir, [1])
    (partial,) = start_workers(older_env, log_dir, [2])
    api, base = start_api(env, log_dir)
    url, trip = f"{base}/v1/trip/predict", varied_trips(1, "first")[0]
    try:
        code, output = tripq_models(env, log_dir, "canary", GBM, "--share", "0.5")
        assert code == 0, output
        pin = {"X-Model-Version": GBM}
        wait_until(
            lambda: httpx.post(url, json=trip, headers=pin, timeout=10).status_code == 200,
            FOLLOW_S,
            "the API to route to a worker holding the gbm",
        )
        with Load(
            base,
            varied_trips(400),
            concurrency=8,
            timeout_s=15,
            headers={"X-Model-Version": GBM},
        ) as load:
            outcomes = load.wait(120)
        ready = httpx.get(f"{base}/ready", timeout=5).json()
    finally:
        api.stop()
        full.stop()
        partial.stop()

    assert {o.kind for o in outcomes} == {"ok"}, Counter(o.kind for o in outcomes)
    assert {o.body["model_version"] for o in outcomes if o.body} == {GBM}
    holders = {w["name"].split("@")[0]: w["model_versions"] for w in ready["workers"]}
    assert GBM in holders["trip1"]
    assert GBM not in holders["trip2"]
