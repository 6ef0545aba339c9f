"""Async jobs over HTTP: submit, poll, cancel, expire, idempotency, webhooks, Prefer: respond-async.

Two APIs share this module's Redis: `base` has a worker behind it; `idle` sends its online tasks
and its jobs to queues no worker reads until a test starts one, so its jobs stay queued.
"""

import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from config import PROJECT_ROOT
from core.jobs.store import JobRunner, job_key
from core.jobs.webhooks import DELIVERY_HEADER, SIGNATURE_HEADER, verify
from core.model.artifact import TripModel, load_model
from core.model.registry import resolve_model_dir
from core.trip.schemas import TripRequest
from tests.support import Receiver, running_platform, start_api, start_worker, tripq_env, wait_until

SECRET = "webhook-test-secret"
RESULT_TTL_S = 600
WEBHOOK_ATTEMPTS = 3
IDLE_QUEUE, IDLE_JOBS = "idle.trip", "idle.trip.jobs"
IDLE_EXPIRY_S = 3.0
IDLE_MAX_QUEUED = 50
IDLE_RUN_TIMEOUT_S = 11.5  # the least the idle API's REQUEST_TIMEOUT_MAX_S (1 s) allows
TRIP = {"request_id": "j1", "PULocationID": 130, "DOLocationID": 250, "trip_distance": 3.0}
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def model() -> TripModel:
    """The default model, to check answers with."""
    return load_model(resolve_model_dir(PROJECT_ROOT / "repo" / "models", None))


@pytest.fixture(scope="module")
def base(redis_url: str, log_dir: Path) -> Iterator[str]:
    """An API with one worker, signing webhooks with SECRET; yield its base URL."""
    env = tripq_env(
        redis_url,
        log_dir,
        webhook_secret=SECRET,
        webhook_max_attempts=WEBHOOK_ATTEMPTS,
        webhook_allow_private=True,  # the test receivers listen on this machine,
        webhook_ports="*",  # on ports of their own
        job_result_ttl_s=RESULT_TTL_S,
    )
    with running_platform(env, log_dir) as url:
        yield url


def idle_env(redis_url: str, log_dir: Path) -> dict[str, str]:
    """The settings of the idle API, and of a worker that serves it."""
    return tripq_env(
        redis_url,
        log_dir,
        queue=IDLE_QUEUE,
        job_queue=IDLE_JOBS,
        job_queue_timeout_s=IDLE_EXPIRY_S,
        jobs_max_queued=IDLE_MAX_QUEUED,
        request_timeout_s=1,
        request_timeout_max_s=1,
        job_run_timeout_s=IDLE_RUN_TIMEOUT_S,
        webhook_allow_private=True,  # the test receivers listen on this machine,
        webhook_ports="*",  # on ports of their own
    )


@pytest.fixture(scope="module")
def idle(redis_url: str, log_dir: Path, base: str) -> Iterator[str]:
    """An API whose queues no worker reads (the base worker is up, so /ready holds)."""
    api, url = start_api(idle_env(redis_url, log_dir), log_dir)
    yield url
    api.stop()


def submit(base: str, body: object, **headers: str) -> httpx.Response:
    return httpx.post(f"{base}/v1/trip/jobs", json=body, headers=headers, timeout=5)


def job(base: str, job_id: str) -> dict[str, Any]:
    reply = httpx.get(f"{base}/v1/trip/jobs/{job_id}", timeout=5)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def wait_for_state(base: str, job_id: str, state: str, timeout_s: float = 30) -> dict[str, Any]:
    wait_until(lambda: job(base, job_id)["state"] == state, timeout_s, f"the job to be {state}")
    return job(base, job_id)


def expected(model: TripModel, trip: dict[str, Any]) -> float:
    return model.predict_trips([TripRequest.model_validate(trip)])[0]


def test_one_trip_job_is_accepted_at_once_and_answered_with_the_models_own_duration(
    base: str, model: TripModel
) -> None:
    reply = submit(base, TRIP)

    assert reply.status_code == 202, reply.text
    accepted = reply.json()
    assert reply.headers["location"] == accepted["status_url"]
    assert accepted["status_url"] == f"/v1/trip/jobs/{accepted['job_id']}"
    assert accepted["state"] in {"queued", "running", "succeeded"}
    assert accepted["trips"] == 1
    done = wait_for_state(base, accepted["job_id"], "succeeded")
    assert done["result"]["replies"] == [
        {"reply_code": 0, "request_id": "j1", "duration": expected(model, TRIP)}
    ]
    assert done["result"]["model_version"] == model.version
    assert done["created_at"] <= done["started_at"] <= done["finished_at"] < done["kept_until"]


def test_batch_job_answers_each_trip_in_order_and_refuses_invalid_ones_alone(
    base: str, model: TripModel
) -> None:
    good = [{**TRIP, "request_id": f"b{i}", "trip_distance": float(i)} for i in range(3)]
    bad = {**TRIP, "request_id": "bad", "PULocationID": 0}
    reply = submit(base, {"trips": [good[0], bad, good[1], good[2]]})

    assert reply.status_code == 202, reply.text
    replies = wait_for_state(base, reply.json()["job_id"], "succeeded")["result"]["replies"]
    assert [r["request_id"] for r in replies] == ["b0", "bad", "b1", "b2"]
    assert replies[1]["reply_code"] == 1
    assert replies[1]["message"].startswith("PULocationID:")
    # The worker's compiled trees give scikit-learn's answers to rounding (core.model.trees).
    assert [r["duration"] for r in replies if r["reply_code"] == 0] == pytest.approx(
        model.predict_trips([TripRequest.model_validate(t) for t in good]), rel=1e-12
    )


def test_the_same_idempotency_key_gives_back_the_same_job_and_refuses_another_body(
    base: str, redis_client: redis.Redis
) -> None:
    first = submit(base, TRIP, **{"Idempotency-Key": "order-17"})
    again = submit(base, TRIP, **{"Idempotency-Key": "order-17"})
    other = submit(base, {**TRIP, "trip_distance": 9.0}, **{"Idempotency-Key": "order-17"})
    fresh = submit(base, TRIP, **{"Idempotency-Key": "order-18"})

    assert first.status_code == again.status_code == fresh.status_code == 202
    assert again.json()["job_id"] == first.json()["job_id"]
    assert fresh.json()["job_id"] != first.json()["job_id"]
    assert other.status_code == 409
    assert other.json()["message"].startswith("Idempotency-Key:")
    assert len(redis_client.keys(job_key(first.json()["job_id"]))) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**TRIP, "callback_url": "ftp://example.com/hook"}, "callback_url"),
        ({"trips": [TRIP], "callback_url": "not a url"}, "callback_url"),
        ({k: v for k, v in TRIP.items() if k != "trip_distance"}, "trip_distance"),
        ({"trips": []}, "trips"),
        (
            {**TRIP, "callback_url": "https://example.com/h", "callback_secret": "short"},
            "callback_secret",
        ),
        ([TRIP], "body"),
    ],
)
def test_a_bad_job_body_gets_400_naming_the_field(base: str, body: object, field: str) -> None:
    reply = submit(base, body)

    assert reply.status_code == 400, reply.text
    assert reply.json()["reply_code"] == 1
    assert reply.json()["message"].startswith(f"{field}:")


@pytest.mark.parametrize("job_id", ["0" * 32, "not-a-job", "0" * 31 + "g"])
def test_an_unknown_job_answers_404_to_read_and_cancel(base: str, job_id: str) -> None:
    read = httpx.get(f"{base}/v1/trip/jobs/{job_id}", timeout=5)
    cancel = httpx.delete(f"{base}/v1/trip/jobs/{job_id}", timeout=5)

    assert read.status_code == cancel.status_code == 404
    assert read.json()["reply_code"] == 1


def test_a_finished_job_is_kept_for_the_result_ttl_then_removed(
    base: str, redis_client: redis.Redis
) -> None:
    job_id = submit(base, TRIP).json()["job_id"]
    wait_for_state(base, job_id, "succeeded")

    ttl = redis_client.ttl(job_key(job_id))
    assert 0 < ttl <= RESULT_TTL_S  # Redis removes it then, and its id answers 404


def test_a_job_that_ran_cannot_be_canceled(base: str) -> None:
    job_id = submit(base, TRIP).json()["job_id"]
    wait_for_state(base, job_id, "succeeded")

    reply = httpx.delete(f"{base}/v1/trip/jobs/{job_id}", timeout=5)

    assert reply.status_code == 409
    assert "only a queued job can be canceled" in reply.json()["message"]
    assert job(base, job_id)["state"] == "succeeded"


@pytest.mark.parametrize("receiver", [1], indirect=True)
def test_a_webhook_is_retried_until_delivered_and_every_delivery_is_signed(
    base: str, receiver: Receiver
) -> None:
    job_id = submit(base, {**TRIP, "callback_url": receiver.url}).json()["job_id"]

    wait_until(
        lambda: job(base, job_id).get("callback", {}).get("state") == "delivered",
        30,
        "the webhook to be delivered",
    )
    assert len(receiver.deliveries) == 2
    for attempt, (headers, body) in enumerate(receiver.deliveries, start=1):
        signature, delivery = headers[SIGNATURE_HEADER], headers[DELIVERY_HEADER]
        assert verify(SECRET, body, signature, delivery=delivery, url=receiver.url)
        assert not verify("another secret", body, signature, delivery=delivery)
        assert not verify(SECRET, body, signature, delivery=f"{job_id}.{attempt + 1}")
        assert not verify(SECRET, body, signature, delivery=delivery, url=f"{receiver.url}/x")
        assert delivery == f"{job_id}.{attempt}"
        delivered = json.loads(body)
        assert delivered["job_id"] == job_id
        assert delivered["state"] == "succeeded"
        assert delivered["result"]["replies"][0]["request_id"] == "j1"
    callback = job(base, job_id)["callback"]
    assert callback == {"url": receiver.url, "state": "delivered", "attempts": 2, "error": None}


@pytest.mark.parametrize("receiver", [0], indirect=True)
def test_a_job_with_a_secret_of_its_own_is_signed_with_it_not_with_the_global_one(
    base: str, receiver: Receiver
) -> None:
    own = "the receiver's own secret"
    reply = submit(base, {**TRIP, "callback_url": receiver.url, "callback_secret": own})
    job_id = reply.json()["job_id"]

    assert reply.json()["callback"]["secret"] == own
    wait_until(lambda: receiver.deliveries, 30, "the webhook")
    headers, body = receiver.deliveries[0]
    signature, delivery = headers[SIGNATURE_HEADER], headers[DELIVERY_HEADER]
    assert verify(own, body, signature, delivery=delivery, url=receiver.url)
    assert not verify(SECRET, body, signature, delivery=delivery)
    assert own.encode() not in body
    assert "secret" not in job(base, job_id)["callback"]


@pytest.mark.parametrize("receiver", [0], indirect=True)
def test_without_a_webhook_secret_each_job_gets_one_in_its_202_only(
    idle: str, receiver: Receiver
) -> None:
    body = {**TRIP, "callback_url": receiver.url}
    first = submit(idle, body, **{"Idempotency-Key": "signed-by-default"})
    again = submit(idle, body, **{"Idempotency-Key": "signed-by-default"})
    other = submit(idle, body)

    secret = first.json()["callback"]["secret"]
    assert len(secret) == 64
    assert again.json()["callback"]["secret"] == secret  # the job's, not a new one
    assert other.json()["callback"]["secret"] != secret
    assert "secret" not in job(idle, first.json()["job_id"])["callback"]
    for reply in (first, other):
        httpx.delete(f"{idle}/v1/trip/jobs/{reply.json()['job_id']}", timeout=5)


@pytest.mark.parametrize("receiver", [WEBHOOK_ATTEMPTS + 5], indirect=True)
def test_a_webhook_is_given_up_after_its_last_attempt(base: str, receiver: Receiver) -> None:
    job_id = submit(base, {"trips": [TRIP], "callback_url": receiver.url}).json()["job_id"]

    wait_until(
        lambda: job(base, job_id).get("callback", {}).get("state") == "failed",
        30,
        "the webhook to be given up",
    )
    callback = job(base, job_id)["callback"]
    assert callback["attempts"] == WEBHOOK_ATTEMPTS == len(receiver.deliveries)
    assert callback["error"] == "the receiver answered HTTP 500"
    assert job(base, job_id)["state"] == "succeeded"  # the job itself still has its result


def test_prefer_respond_async_wait_0_queues_a_job_at_once(base: str, model: TripModel) -> None:
    reply = httpx.post(
        f"{base}/v1/trip/predict",
        json=TRIP,
        headers={"Prefer": "respond-async, wait=0"},
        timeout=5,
    )

    assert reply.status_code == 202, reply.text
    assert reply.headers["preference-applied"] == "respond-async"
    done = wait_for_state(base, reply.json()["job_id"], "succeeded")
    assert done["result"]["replies"][0]["duration"] == expected(model, TRIP)


@pytest.mark.parametrize("route", ["/v1/trip/predict", "/v1/trip/predict/batch"])
def test_a_slow_fleet_answers_202_and_a_job_to_clients_that_prefer_it_and_504_to_others(
    idle: str, route: str
) -> None:
    trips = 1 if route.endswith("predict") else 2
    body = TRIP if trips == 1 else {"trips": [TRIP] * trips}
    deadline = {"X-Request-Timeout": "0.3"}

    plain = httpx.post(f"{idle}{route}", json=body, headers=deadline, timeout=5)
    prefers = httpx.post(
        f"{idle}{route}", json=body, headers={**deadline, "Prefer": "respond-async"}, timeout=5
    )

    assert plain.status_code == 504
    assert prefers.status_code == 202, prefers.text
    assert prefers.headers["location"] == prefers.json()["status_url"]
    assert job(idle, prefers.json()["job_id"])["trips"] == trips


def test_a_job_no_worker_starts_in_time_expires_and_never_runs(idle: str) -> None:
    job_id = submit(idle, TRIP).json()["job_id"]

    expired = wait_for_state(idle, job_id, "expired", timeout_s=IDLE_EXPIRY_S + 10)
    assert expired["started_at"] is None
    assert "result" not in expired
    assert expired["finished_at"] >= expired["created_at"]


@pytest.mark.parametrize("receiver", [0], indirect=True)
def test_a_job_task_not_taken_in_time_is_discarded_unrun_and_its_job_ends_expired(
    idle: str, redis_url: str, log_dir: Path, redis_client: redis.Redis, receiver: Receiver
) -> None:
    redis_client.delete(IDLE_JOBS)
    job_id = submit(idle, {**TRIP, "callback_url": receiver.url}).json()["job_id"]
    (message,) = redis_client.lrange(IDLE_JOBS, 0, -1)
    expires_at = float(redis_client.hget(job_key(job_id), "expires_at") or 0)
    expires = datetime.fromisoformat(json.loads(message)["headers"]["expires"])
    assert expires.timestamp() == expires_at  # the task expires with the job
    wait_until(lambda: time.time() > expires_at, IDLE_EXPIRY_S + 5, "the job's time to run out")

    worker = start_worker(idle_env(redis_url, log_dir), log_dir)
    try:
        wait_until(lambda: redis_client.llen(IDLE_JOBS) == 0, 30, "the worker to take the task")
        # Nobody reads the job: the worker that discards its task concludes it, webhook and all.
        wait_until(lambda: receiver.deliveries, 30, "the expired job's webhook")
        log = worker.log_tail(100_000)
    finally:
        worker.stop()
    fields = redis_client.hgetall(job_key(job_id))
    assert fields[b"state"] == b"expired"
    assert b"attempts" not in fields  # never claimed: the task was discarded, not run
    assert "job task expired unrun" in log
    assert json.loads(receiver.deliveries[0][1])["state"] == "expired"
    read = job(idle, job_id)
    assert (read["state"], read["started_at"]) == ("expired", None)


def test_too_many_queued_jobs_get_429_with_retry_after(
    idle: str, redis_client: redis.Redis
) -> None:
    redis_client.delete(IDLE_JOBS)
    replies = [submit(idle, TRIP) for _ in range(IDLE_MAX_QUEUED + 1)]

    assert [r.status_code for r in replies] == [202] * IDLE_MAX_QUEUED + [429]
    assert replies[-1].json()["reply_code"] == 4
    assert replies[-1].headers["retry-after"] == "1"
    redis_client.delete(IDLE_JOBS)


def test_a_canceled_job_is_never_run(
    idle: str, redis_url: str, log_dir: Path, redis_client: redis.Redis
) -> None:
    job_id = submit(idle, TRIP).json()["job_id"]

    first = httpx.delete(f"{idle}/v1/trip/jobs/{job_id}", timeout=5)
    again = httpx.delete(f"{idle}/v1/trip/jobs/{job_id}", timeout=5)

    assert first.status_code == again.status_code == 200
    assert first.json()["state"] == "canceled"
    read = httpx.get(f"{idle}/v1/trip/jobs/{job_id}", timeout=5)
    assert read.json()["state"] == "canceled"
    assert "retry-after" not in read.headers  # final: nothing more to poll for
    worker = start_worker(idle_env(redis_url, log_dir), log_dir)
    try:
        wait_until(lambda: redis_client.llen(IDLE_JOBS) == 0, 30, "the worker to take the job")
        wait_until(lambda: redis_client.hlen("unacked") == 0, 30, "the worker to finish with it")
    finally:
        worker.stop()
    canceled = job(idle, job_id)
    assert canceled["state"] == "canceled"
    assert canceled["started_at"] is None


def test_a_job_whose_worker_vanished_with_its_task_fails_after_the_run_timeout(
    idle: str, redis_client: redis.Redis
) -> None:
    redis_client.delete(IDLE_JOBS)
    job_id = submit(idle, TRIP).json()["job_id"]
    # A worker takes the job and vanishes with its task message (the one loss window left:
    # between BRPOP and kombu's unacked record): the job runs, and no task will ever end it.
    runner = JobRunner(redis_client, result_ttl_s=RESULT_TTL_S, run_timeout_s=IDLE_RUN_TIMEOUT_S)
    assert not isinstance(runner.claim(job_id), str)
    assert redis_client.delete(IDLE_JOBS) == 1

    assert job(idle, job_id)["state"] == "running"
    failed = wait_for_state(idle, job_id, "failed", timeout_s=IDLE_RUN_TIMEOUT_S + 10)
    assert failed["error"] == "the worker running the job was lost, and its task with it"
