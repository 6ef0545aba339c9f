"""What the API refuses before queueing work: keys, content types, sizes, deadlines, overload."""

import asyncio
import http.client
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
import redis

from tests.support import start_api, tripq_env, wait_until

TRIP = {"request_id": "adm-1", "PULocationID": 130, "DOLocationID": 250, "trip_distance": 3.0}
KEY = {"X-API-Key": "key-2"}
DEFAULT_S, MAX_S = 1.0, 1.5


@pytest.fixture(scope="module")
def api(redis_url: str, log_dir: Path) -> Iterator[str]:
    """An API with API keys, a small body limit and short deadlines, and no worker."""
    env = tripq_env(
        redis_url,
        log_dir,
        api_keys="key-1, key-2",
        max_body_bytes=2000,
        request_timeout_s=DEFAULT_S,
        request_timeout_max_s=MAX_S,
    )
    process, base = start_api(env, log_dir)
    yield base
    process.stop()


def post(base: str, body: object = TRIP, **headers: str) -> httpx.Response:
    return httpx.post(f"{base}/v1/trip/predict", json=body, headers=headers, timeout=10)


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}])
def test_predict_without_a_valid_api_key_answers_401(api: str, headers: dict[str, str]) -> None:
    reply = post(api, **headers)

    assert reply.status_code == 401
    assert reply.json()["reply_code"] == 6
    assert "X-API-Key" in reply.json()["message"]
    assert reply.headers["www-authenticate"].startswith("ApiKey")


def test_health_and_docs_stay_open_when_keys_are_required(api: str) -> None:
    assert httpx.get(f"{api}/health", timeout=5).status_code == 200
    assert httpx.get(f"{api}/docs", timeout=5).status_code == 200


def test_client_deadline_header_shortens_the_wait(api: str) -> None:
    started = time.monotonic()
    reply = post(api, **KEY, **{"X-Request-Timeout": "0.3"})
    elapsed = time.monotonic() - started

    assert reply.status_code == 504
    assert reply.json()["reply_code"] == 2
    assert 0.3 <= elapsed < 0.3 + 0.5


def test_client_deadline_header_is_capped_by_config(api: str) -> None:
    started = time.monotonic()
    reply = post(api, **KEY, **{"X-Request-Timeout": "600"})
    elapsed = time.monotonic() - started

    assert reply.status_code == 504
    assert MAX_S <= elapsed < MAX_S + 0.5


@pytest.mark.parametrize("value", ["soon", "0", "-2", "nan", "inf"])
def test_invalid_deadline_header_answers_400_naming_it(api: str, value: str) -> None:
    reply = post(api, **KEY, **{"X-Request-Timeout": value})

    assert reply.status_code == 400
    assert reply.json()["reply_code"] == 1
    assert "X-Request-Timeout" in reply.json()["message"]


def test_body_over_the_size_limit_answers_413(api: str) -> None:
    reply = post(api, {**TRIP, "request_id": "x" * 3000}, **KEY)

    assert reply.status_code == 413
    assert reply.json()["reply_code"] == 1


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_python_client_sending_a_large_body_receives_the_413(api: str, chunked: bool) -> None:
    # Replying with most of a body unread would make urllib see "connection reset", not a 413.
    url = urlsplit(api)
    body = b'{"request_id": "' + b"x" * (24 * 1024 * 1024) + b'"}'
    headers = {**KEY, "content-type": "application/json"}
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=30)
    try:
        if chunked:
            chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
            connection.request("POST", "/v1/trip/predict", chunks, headers, encode_chunked=True)
        else:
            connection.request("POST", "/v1/trip/predict", body, headers)
        reply = connection.getresponse()
        assert reply.status == 413
        assert orjson.loads(reply.read())["reply_code"] == 1
    finally:
        connection.close()


def test_non_json_content_type_answers_415(api: str) -> None:
    reply = httpx.post(
        f"{api}/v1/trip/predict",
        content=b"request_id=1&PULocationID=130",
        headers={**KEY, "content-type": "application/x-www-form-urlencoded"},
        timeout=10,
    )

    assert reply.status_code == 415
    assert reply.json()["reply_code"] == 1
    assert "content-type" in reply.json()["message"]


def test_unknown_path_answers_404_in_the_error_shape(api: str) -> None:
    reply = httpx.get(f"{api}/v1/nowhere", timeout=5)

    assert reply.status_code == 404
    assert reply.json()["reply_code"] == 1


@pytest.fixture
def small_api(redis_url: str, redis_client: redis.Redis, log_dir: Path) -> Iterator[str]:
    """An API that admits one queued task and three waiting trips, with no worker."""
    redis_client.delete("tasks.trip")  # tasks left by earlier tests would count against it
    env = tripq_env(
        redis_url, log_dir, queue_max_depth=1, max_pending_requests=3, request_timeout_s=3
    )
    process, base = start_api(env, log_dir)
    yield base
    process.stop()


@pytest.fixture
def pending_api(redis_url: str, redis_client: redis.Redis, log_dir: Path) -> Iterator[str]:
    """An API that holds at most three waiting trips, with no worker and no queue bound."""
    redis_client.delete("tasks.trip")
    env = tripq_env(redis_url, log_dir, max_pending_requests=3, request_timeout_s=3)
    process, base = start_api(env, log_dir)
    yield base
    process.stop()


def test_more_waiting_trips_than_allowed_answer_429_with_retry_after(
    pending_api: str, redis_client: redis.Redis
) -> None:
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(httpx.post, f"{pending_api}/v1/trip/predict", json=TRIP, timeout=10)
        wait_until(lambda: redis_client.llen("tasks.trip") >= 1, 10, "the first trip waiting")
        reply = httpx.post(
            f"{pending_api}/v1/trip/predict/batch", json={"trips": [TRIP] * 3}, timeout=10
        )
        first = waiting.result(10)

    assert reply.status_code == 429
    assert reply.json() == {
        "reply_code": 4,
        "message": "this API process holds as much work as it may; retry shortly",
    }
    assert reply.headers["retry-after"] == "1"
    assert first.status_code == 504  # no worker: it waited its deadline, and was not refused


def test_an_idle_api_admits_a_batch_larger_than_its_bound(
    pending_api: str, redis_client: redis.Redis
) -> None:
    reply = httpx.post(
        f"{pending_api}/v1/trip/predict/batch",
        json={"trips": [TRIP] * 5},
        headers={"X-Request-Timeout": "0.5"},
        timeout=10,
    )

    # Admitted (no worker runs, so it times out), rather than refused for good with 429.
    assert reply.status_code == 504
    assert reply.json()["reply_code"] == 2


def test_a_full_queue_answers_429_at_once_while_health_stays_open(
    small_api: str, redis_client: redis.Redis
) -> None:
    async def scenario() -> tuple[httpx.Response, httpx.Response, float]:
        async with httpx.AsyncClient(base_url=small_api, timeout=10) as client:
            # The first request's task waits in the queue: no worker takes it.
            waiting = asyncio.create_task(client.post("/v1/trip/predict", json=TRIP))
            await asyncio.to_thread(
                wait_until,
                lambda: waiting.done() or redis_client.llen("tasks.trip") >= 1,
                5,
                "a queued task",
            )
            assert not waiting.done(), waiting.result().text
            refused: httpx.Response | None = None
            started = time.monotonic()
            while refused is None and time.monotonic() - started < 5:
                reply = await client.post("/v1/trip/predict", json=TRIP)
                refused = reply if reply.status_code == 429 else None
            assert refused is not None, "the API never refused work over the queue limit"
            elapsed_once = time.monotonic()
            await client.post("/v1/trip/predict", json=TRIP)
            elapsed_once = time.monotonic() - elapsed_once
            health = await client.get("/health")
            waiting.cancel()
            return refused, health, elapsed_once

    try:
        refused, health, refusal_s = asyncio.run(scenario())
    finally:
        redis_client.delete("tasks.trip")

    assert refused.json()["reply_code"] == 4
    assert refused.headers["retry-after"] == "1"
    assert refusal_s < 0.5  # refused at once, not after a deadline
    assert health.status_code == 200
