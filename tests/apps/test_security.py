"""Hostile clients, over HTTP: a key on every route that takes work, what /health and /ready tell
whoever asks, admission before a large body is read, and where a worker's metrics listen.

One worker serves the module's APIs. `keyed` wants API keys and keeps STATUS_DETAIL off, as a
deployment gets them by default; `detailed` turns STATUS_DETAIL on. The overload tests start
APIs of their own, whose queues no worker reads.
"""

import hashlib
import http.client
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest
import redis
from starlette.requests import Request

from apps.checks import api_key_owner
from core.errors import Unauthorized
from core.online.schemas import HealthReply, ReadyReply
from tests.support import (
    Service,
    WorkerProcess,
    await_workers,
    free_port,
    start_api,
    start_worker,
    tripq_env,
    wait_until,
)

KEYS = ("sec-key-one-3f9a2c7e5b1d", "sec-key-two-8e4b6a0c2f7d")
KEY = {"X-API-Key": KEYS[1]}
TRIP = {"request_id": "sec-1", "PULocationID": 130, "DOLocationID": 250, "trip_distance": 3.0}
# Keys an attacker might send: none, nothing, a guess, the right key but for its last character,
# a prefix of a right key, and the whole configured list.
WRONG_KEYS = {
    "missing": None,
    "empty": "",
    "unknown": "not-a-key",
    "last-character": KEYS[1][:-1] + chr(ord(KEYS[1][-1]) ^ 1),
    "prefix": KEYS[0][:-1],
    "every-key": ",".join(KEYS),
}
# The routes that take work or show it: (method, path, body); {job} is a job made with KEY.
ROUTES: dict[str, tuple[str, str, Any]] = {
    "predict": ("POST", "/v1/trip/predict", TRIP),
    "batch": ("POST", "/v1/trip/predict/batch", {"trips": [TRIP]}),
    "submit-job": ("POST", "/v1/trip/jobs", TRIP),
    "read-job": ("GET", "/v1/trip/jobs/{job}", None),
    "cancel-job": ("DELETE", "/v1/trip/jobs/{job}", None),
}
# The 4 MiB a batch may be, nearly: the body an overloaded API must not read and parse.
LARGE_BODY_BYTES = 3 * 1024 * 1024


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def worker(redis_url: str, log_dir: Path, metrics_port: int) -> Iterator[Service]:
    """The module's one worker, serving its metrics at the default address."""
    env = tripq_env(redis_url, log_dir, worker_metrics_port=metrics_port)
    env.pop("WORKER_METRICS_HOST", None)  # the default, whatever this shell may set
    process = start_worker(env, log_dir)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def keyed(redis_url: str, log_dir: Path, worker: Service) -> Iterator[str]:
    """An API that wants KEYS, with the status detail off (the default)."""
    env = tripq_env(redis_url, log_dir, api_keys=",".join(KEYS), status_detail=False)
    process, base = start_api(env, log_dir)
    yield base
    process.stop()


@pytest.fixture(scope="module")
def detailed(redis_url: str, log_dir: Path, worker: Service) -> Iterator[str]:
    """An API with STATUS_DETAIL on."""
    process, base = start_api(tripq_env(redis_url, log_dir, status_detail=True), log_dir)
    yield base
    process.stop()


@pytest.fixture(scope="module")
def job(keyed: str) -> str:
    """The id of a job made with KEY."""
    reply = httpx.post(f"{keyed}/v1/trip/jobs", json=TRIP, headers=KEY, timeout=10)
    assert reply.status_code == 202, reply.text
    job_id: str = reply.json()["job_id"]
    return job_id


def call(base: str, route: str, job: str, key: str | None) -> httpx.Response:
    """Send one route's request, with `key` in X-API-Key (None: no header)."""
    method, path, body = ROUTES[route]
    headers = {} if key is None else {"X-API-Key": key}
    return httpx.request(
        method, base + path.format(job=job), json=body, headers=headers, timeout=10
    )


# --- API keys on every route that takes work ---


@pytest.mark.parametrize("sent", list(WRONG_KEYS), ids=list(WRONG_KEYS))
@pytest.mark.parametrize("route", list(ROUTES))
def test_every_route_that_takes_work_answers_401_to_a_missing_or_wrong_key(
    keyed: str, job: str, route: str, sent: str
) -> None:
    reply = call(keyed, route, job, WRONG_KEYS[sent])

    assert reply.status_code == 401, reply.text
    assert reply.json()["reply_code"] == 6
    assert "X-API-Key" in reply.json()["message"]
    assert reply.headers["www-authenticate"].startswith("ApiKey")


@pytest.mark.parametrize(
    ("route", "statuses"),
    [
        ("predict", {200}),
        ("batch", {200}),
        ("submit-job", {202}),
        ("read-job", {200}),
        ("cancel-job", {200, 409}),  # 409: the worker has already run it
    ],
)
def test_every_route_that_takes_work_serves_each_configured_key(
    keyed: str, job: str, route: str, statuses: set[int]
) -> None:
    # The job was made with the second key; the first reads it only if keys share jobs.
    replies = [call(keyed, route, job, key) for key in reversed(KEYS)]

    assert replies[0].status_code in statuses, replies[0].text
    assert replies[1].status_code != 401, replies[1].text


def request_with(key: str | None, keys: tuple[str, ...]) -> Request:
    """A request that sends `key` (None: no header) to an app configured with `keys`."""
    app = SimpleNamespace(state=SimpleNamespace(api_keys=frozenset(keys)))
    headers = [] if key is None else [(b"x-api-key", key.encode())]
    return Request({"type": "http", "method": "GET", "headers": headers, "app": app})


def test_a_jobs_owner_is_a_digest_of_its_valid_key_and_no_one_without_keys() -> None:
    owners = [api_key_owner(request_with(key, KEYS)) for key in KEYS]

    assert owners == [hashlib.sha256(key.encode()).hexdigest() for key in KEYS]
    assert api_key_owner(request_with(None, ())) == ""
    assert api_key_owner(request_with("anything", ())) == ""


@pytest.mark.parametrize("sent", list(WRONG_KEYS), ids=list(WRONG_KEYS))
def test_a_wrong_key_owns_nothing(sent: str) -> None:
    with pytest.raises(Unauthorized, match="X-API-Key"):
        api_key_owner(request_with(WRONG_KEYS[sent], KEYS))


# --- What /health and /ready tell whoever asks ---


def test_health_by_default_says_only_that_the_api_is_alive(keyed: str) -> None:
    reply = httpx.get(f"{keyed}/health", timeout=5)

    assert reply.status_code == 200
    assert reply.json() == {"name": "tripq", "alive": True}
    HealthReply.model_validate(reply.json())


def test_ready_by_default_says_only_whether_it_and_redis_are_ready(keyed: str) -> None:
    reply = httpx.get(f"{keyed}/ready", timeout=5)

    # A worker is live: there would be hosts and versions to name.
    assert reply.status_code == 200
    assert reply.json() == {"ready": True, "redis": True}
    assert socket.gethostname() not in reply.text
    ReadyReply.model_validate(reply.json())


def test_with_status_detail_health_names_the_versions_served(detailed: str) -> None:
    body = httpx.get(f"{detailed}/health", timeout=5).json()

    assert body["alive"] is True
    assert body["api_version"]
    assert body["model_version"]
    assert {"canary", "canary_share"} <= set(body)
    HealthReply.model_validate(body)


def test_with_status_detail_ready_names_each_worker_and_its_versions(detailed: str) -> None:
    body = httpx.get(f"{detailed}/ready", timeout=5).json()

    assert body["ready"] is True
    workers = {worker["name"]: worker for worker in body["workers"]}
    worker = workers[f"trip1@{socket.gethostname()}"]
    assert worker["model_versions"] == body["model_versions"] != []
    assert worker["evaluators"]
    ReadyReply.model_validate(body)


# --- Admission before a body is read ---


def await_refusal(base: str) -> None:
    """Wait until the API refuses a valid predict request with 429."""

    def refused() -> bool:
        reply = httpx.post(
            f"{base}/v1/trip/predict", json=TRIP, headers={"X-Request-Timeout": "0.2"}, timeout=5
        )
        return reply.status_code == 429

    wait_until(refused, 10, "the API to refuse work with 429")


def send_large_batch(base: str) -> tuple[int, dict[str, Any]]:
    """Send LARGE_BODY_BYTES that are not JSON to /predict/batch as urllib-like clients do (the
    whole body, then the reply); return the status and the reply's JSON."""
    url = httpx.URL(base)
    body = b'{"trips": [' + b"x" * LARGE_BODY_BYTES + b"]}"
    connection = http.client.HTTPConnection(url.host, url.port, timeout=30)
    try:
        headers = {"content-type": "application/json"}
        connection.request("POST", "/v1/trip/predict/batch", body, headers)
        reply = connection.getresponse()
        return reply.status, orjson.loads(reply.read())
    finally:
        connection.close()


@pytest.fixture
def full_queue(redis_url: str, redis_client: redis.Redis, log_dir: Path) -> Iterator[str]:
    """An API whose queue holds as many tasks as it may, none of which any worker reads."""
    queue = "security.full"
    redis_client.delete(queue)
    env = tripq_env(redis_url, log_dir, queue=queue, queue_max_depth=1)
    process, base = start_api(env, log_dir)
    try:
        # Its task stays in the queue after its 504: nothing takes it out.
        first = httpx.post(
            f"{base}/v1/trip/predict", json=TRIP, headers={"X-Request-Timeout": "0.2"}, timeout=5
        )
        assert first.status_code == 504, first.text
        assert redis_client.llen(queue) == 1
        await_refusal(base)
        yield base
    finally:
        process.stop()
        redis_client.delete(queue)


def test_a_full_queue_refuses_a_large_batch_with_429_before_parsing_it(full_queue: str) -> None:
    status, body = send_large_batch(full_queue)

    # Not 400: the body was never parsed.
    assert status == 429
    assert body["reply_code"] == 4
    assert body["message"] == "the queue holds 1 tasks; retry shortly"


@pytest.fixture
def busy(redis_url: str, redis_client: redis.Redis, log_dir: Path) -> Iterator[str]:
    """An API that holds one waiting trip at most, whose queue no worker reads."""
    queue = "security.busy"
    redis_client.delete(queue)
    env = tripq_env(redis_url, log_dir, queue=queue, max_pending_requests=1)
    process, base = start_api(env, log_dir)
    yield base
    process.stop()
    redis_client.delete(queue)


def test_a_process_holding_all_it_may_refuses_a_batch_with_429_before_parsing_it(
    busy: str, redis_client: redis.Redis
) -> None:
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(
            httpx.post,
            f"{busy}/v1/trip/predict",
            json=TRIP,
            headers={"X-Request-Timeout": "3"},
            timeout=10,
        )
        wait_until(lambda: redis_client.llen("security.busy") >= 1, 10, "a trip waiting")
        invalid = httpx.post(
            f"{busy}/v1/trip/predict/batch",
            content=b"{not json",
            headers={"content-type": "application/json"},
            timeout=10,
        )
        status, body = send_large_batch(busy)
        first = waiting.result(10)

    assert (invalid.status_code, invalid.json()["reply_code"]) == (429, 4)
    assert status == 429
    assert body["message"] == "this API process holds as much work as it may; retry shortly"
    assert first.status_code == 504  # no worker: it waited its deadline, and was not refused


# --- Where a worker's metrics listen ---


def answers_on(host: str, port: int) -> bool:
    """Tell whether something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except ConnectionRefusedError:
        return False


def test_worker_metrics_listen_on_loopback_and_no_other_address(
    worker: Service, metrics_port: int
) -> None:
    # 127.0.0.2 is this host too (all of 127/8 is loopback), but not the address configured.
    reply = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)

    assert reply.status_code == 200
    assert "tripq_worker_model_info" in reply.text
    assert not answers_on("127.0.0.2", metrics_port)


def test_worker_metrics_listen_where_configured(redis_url: str, log_dir: Path) -> None:
    port = free_port()
    env = tripq_env(redis_url, log_dir, worker_metrics_port=port, worker_metrics_host="127.0.0.2")
    # A name of its own, beside the module's worker on this host.
    (process,) = await_workers([WorkerProcess(1, env, log_dir, 4, node="elsewhere")], env)
    try:
        served = httpx.get(f"http://127.0.0.2:{port}/metrics", timeout=5).status_code
        on_loopback = answers_on("127.0.0.1", port)
    finally:
        process.stop()

    assert served == 200
    assert not on_loopback
