"""Model versions on a live fleet: promote, canary, pin and roll back under load, and refusals;
jobs pinned to a version, and what is left in the queues of a version retired.

Every test runs real workers and the API against a copy of the committed models (the baseline and
the gradient-boosted model), and changes the routing with the real `tripq models` command.
"""

import hashlib
import json
import shutil
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import skops.io as sio
from prometheus_client.parser import text_string_to_metric_families

from core.model.artifact import TripModel, load_model
from core.online.routing import ROUTING_KEY, Routing, version_queue
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


def pinned_job(base: str, trip: dict[str, object], version: str) -> httpx.Response:
    return httpx.post(
        f"{base}/v1/trip/jobs", json=trip, headers={"X-Model-Version": version}, timeout=10
    )


def route(client: redis.Redis, routing: Routing) -> None:
    """Write the routing in Redis, as `tripq models` leaves it."""
    fields: dict[Any, Any] = routing.to_hash()  # redis-py's mapping type is invariant in its keys
    client.hset(ROUTING_KEY, mapping=fields)


def await_route(url: str, version: str) -> None:
    """Wait until the API at `url` answers a prediction pinned to `version`."""
    pin = {"X-Model-Version": version}
    wait_until(
        lambda: (
            httpx.post(url, json=varied_trips(1)[0], headers=pin, timeout=10).status_code == 200
        ),
        FOLLOW_S,
        f"the API to route to a worker holding {version}",
    )


def read_job(base: str, reply: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{base}{reply.json()['status_url']}", timeout=5).json()
    return body


def queue_depth(base: str, queue: str) -> float:
    """Read the API's tripq_queue_depth of `queue` (0 before it is exported)."""
    for family in text_string_to_metric_families(httpx.get(f"{base}/metrics", timeout=5).text):
        for sample in family.samples:
            if sample.name == "tripq_queue_depth" and sample.labels.get("queue") == queue:
                return sample.value
    return 0.0


def test_a_backlog_of_pinned_jobs_never_refuses_online_requests_and_waits_for_its_version(
    artifacts: Path, fresh_db: redis.Redis, redis_url: str, log_dir: Path, tmp_path: Path
) -> None:
    depth = 5
    older = tmp_path / "older-models"
    shutil.copytree(artifacts / BASELINE, older / BASELINE)
    (older / "CURRENT").write_text(f"{BASELINE}\n")
    # The gbm is the previous version: held for a rollback, and for pins, never routed to.
    route(fresh_db, Routing(BASELINE, GBM))
    settings = {"queue_max_depth": depth, "worker_ttl_s": 60}  # a frozen worker stays live
    env = tripq_env(redis_url, log_dir, artifact_dir=artifacts, **settings)
    (holder,) = start_workers(env, log_dir, [1])
    (other,) = start_workers(
        tripq_env(redis_url, log_dir, artifact_dir=older, **settings), log_dir, [2]
    )
    api, base = start_api(env, log_dir)
    url = f"{base}/v1/trip/predict"
    try:
        await_route(url, GBM)
        holder.process.send_signal(signal.SIGSTOP)  # its version's jobs wait, in a backlog
        try:
            jobs = [pinned_job(base, trip, GBM) for trip in varied_trips(3 * depth, "job")]
            backlog = version_queue("tasks.trip.jobs", GBM)
            wait_until(
                lambda: queue_depth(base, backlog) >= 2 * depth, 10, "the API to see the backlog"
            )
            online = [httpx.post(url, json=t, timeout=10) for t in varied_trips(depth, "now")]
            left = fresh_db.llen(backlog)
        finally:
            holder.process.send_signal(signal.SIGCONT)
        wait_until(
            lambda: all(read_job(base, r)["state"] == "succeeded" for r in jobs),
            60,
            "the pinned jobs to be answered",
        )
        answered = [read_job(base, reply) for reply in jobs]
    finally:
        api.stop()
        holder.stop()
        other.stop()

    assert [r.status_code for r in jobs] == [202] * 3 * depth
    assert left >= 2 * depth  # more than QUEUE_MAX_DEPTH waited, and the online path ran on
    assert [(r.status_code, r.json()["reply_code"]) for r in online] == [(200, 0)] * depth
    assert {job["result"]["model_version"] for job in answered} == {GBM}
    assert fresh_db.llen(version_queue("tasks.trip", GBM)) == 0


def test_a_retired_versions_stranded_tasks_are_swept_and_its_pinned_jobs_fail_saying_why(
    artifacts: Path, fresh_db: redis.Redis, redis_url: str, log_dir: Path
) -> None:
    third = "gbm-2021-01-v3"
    shutil.copytree(artifacts / GBM, artifacts / third)
    card = json.loads((artifacts / third / "card.json").read_text())
    (artifacts / third / "card.json").write_text(json.dumps({**card, "version": third}))
    route(fresh_db, Routing(GBM, BASELINE))
    # Heartbeats every half second, stale after five: a frozen worker leaves the fleet soon.
    env = tripq_env(
        redis_url, log_dir, artifact_dir=artifacts, worker_heartbeat_s=0.5, worker_ttl_s=5
    )
    online, jobs = version_queue("tasks.trip", BASELINE), version_queue("tasks.trip.jobs", BASELINE)
    (first,) = start_workers(env, log_dir, [1])
    api, base = start_api(env, log_dir)
    second = None
    url, pin = f"{base}/v1/trip/predict", {"X-Model-Version": BASELINE}
    try:
        await_route(url, BASELINE)
        first.process.send_signal(signal.SIGSTOP)
        # Once its last poll has timed out, nothing more is handed to the frozen worker.
        wait_until(
            lambda: not any("b" in c["flags"] for c in fresh_db.client_list()),
            5,
            "the frozen worker's poll to end",
        )
        job = pinned_job(base, varied_trips(1, "job")[0], BASELINE)
        late = httpx.post(
            url,
            json=varied_trips(1, "late")[0],
            headers={**pin, "X-Request-Timeout": "0.5"},
            timeout=10,
        )
        first.stop(signal.SIGKILL)  # the worker that held the baseline is gone for good
        stranded = (fresh_db.llen(online), fresh_db.llen(jobs))
        code, output = tripq_models(env, log_dir, "promote", third)  # the baseline retired
        assert code == 0, output
        (second,) = start_workers(env, log_dir, [2])
        wait_until(
            lambda: fresh_db.llen(online) == fresh_db.llen(jobs) == 0,
            30,
            "a worker to sweep the retired version's queues",
        )
        failed = read_job(base, job)
        refused = httpx.post(url, json=varied_trips(1, "after")[0], headers=pin, timeout=10)
    finally:
        api.stop()
        first.stop()
        if second is not None:
            second.stop()

    assert job.status_code == 202
    assert late.status_code == 504
    assert stranded == (1, 1)
    assert Routing.from_hash(fresh_db.hgetall(ROUTING_KEY)) == Routing(third, GBM)
    assert (failed["state"], failed["error"]) == (
        "failed",
        f"model version {BASELINE} is no longer served",
    )
    # A version no live worker holds is refused at once, never queued.
    assert refused.status_code == 409
    assert refused.json()["reply_code"] == 1
