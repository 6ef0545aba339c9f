"""Receivers that fight back, over the real API and a real worker: a receiver can hold a delivery
for WEBHOOK_TIMEOUT_S at most, takes no more than WEBHOOK_DELIVERIES_AT_ONCE of a worker's
deliveries, never the predictions, and learns nothing from `callback.error` but a category."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.receivers import (
    GarbageReceiver,
    HostileReceiver,
    HugeBodyReceiver,
    PlainReceiver,
    RedirectingReceiver,
    TricklingReceiver,
)
from tests.support import free_port, running_platform, tripq_env, wait_until

TIMEOUT_S = 1.0
AT_ONCE = 2
ATTEMPTS = 2
MARGIN_S = 1.5  # a connection may outlive the deadline by its closing, on a busy host
TRIP = {"request_id": "h1", "PULocationID": 130, "DOLocationID": 250, "trip_distance": 3.0}
CATEGORIES = {
    "timed out",
    "failed: could not connect",
    "failed: connection lost",
    "failed: bad response",
    "failed: TLS",
    "failed: name did not resolve",
    "refused: private address",
    "refused: port not allowed",
}


@pytest.fixture(scope="module")
def base(redis_url: str, log_dir: Path) -> Iterator[str]:
    """An API and a worker that deliver to this machine's receivers, on any port."""
    env = tripq_env(
        redis_url,
        log_dir,
        webhook_allow_private=True,  # the receivers listen on loopback
        webhook_ports="*",
        webhook_timeout_s=TIMEOUT_S,
        webhook_deliveries_at_once=AT_ONCE,
        webhook_max_attempts=ATTEMPTS,
    )
    with running_platform(env, log_dir) as url:
        yield url


def submit(base: str, callback_url: str) -> str:
    """Submit a job whose webhook goes to `callback_url`; its status URL."""
    reply = httpx.post(
        f"{base}/v1/trip/jobs", json={**TRIP, "callback_url": callback_url}, timeout=5
    )
    assert reply.status_code == 202, reply.text
    return f"{base}{reply.json()['status_url']}"


def callback(status_url: str) -> dict[str, Any]:
    """The callback part of a job as its client reads it."""
    job: dict[str, dict[str, Any]] = httpx.get(status_url, timeout=5).json()
    return job.get("callback", {})


def settled(status_url: str) -> dict[str, Any]:
    """Wait until a job's webhook is delivered or given up; its callback part then."""
    wait_until(
        lambda: callback(status_url).get("state") in ("delivered", "failed"),
        30,
        "the webhook to be delivered or given up",
    )
    return callback(status_url)


def test_trickling_receivers_beyond_the_pool_are_cut_off_without_delaying_predictions(
    base: str,
) -> None:
    jobs = 5  # each trickling to the end of its WEBHOOK_TIMEOUT_S, AT_ONCE at a time
    with TricklingReceiver() as receiver:
        status_urls = [submit(base, receiver.url()) for _ in range(jobs)]
        predictions: list[int] = []

        def all_given_up() -> bool:
            reply = httpx.post(f"{base}/v1/trip/predict", json=TRIP, timeout=10)
            predictions.append(reply.status_code)
            return all(callback(url).get("state") == "failed" for url in status_urls)

        wait_until(all_given_up, 60, "every trickled webhook to be given up")

    assert {callback(url)["error"] for url in status_urls} == {"timed out"}
    assert len(receiver.deliveries) == jobs * ATTEMPTS
    assert len(set(receiver.deliveries)) == len(receiver.deliveries)  # no attempt twice
    assert receiver.most_at_once(grace_s=0.2) == AT_ONCE
    assert max(v.seconds for v in receiver.visits) <= TIMEOUT_S + MARGIN_S
    # Answered, each within its deadline, while every delivery slot was held.
    assert set(predictions) == {200}  # at least one, and every one answered


def test_a_huge_body_is_delivered_without_being_read(base: str) -> None:
    with HugeBodyReceiver(1 << 30) as receiver:
        status_url = submit(base, receiver.url())
        delivered = settled(status_url)

    assert (delivered["state"], delivered["attempts"]) == ("delivered", 1)
    assert receiver.visits[0].bytes_sent < 64 << 20  # what socket buffers took: not the GiB


def test_a_redirect_inside_is_not_followed(base: str) -> None:
    with PlainReceiver() as inside, RedirectingReceiver(inside.url("/admin")) as receiver:
        status_url = submit(base, receiver.url())
        failed = settled(status_url)

    assert failed["state"] == "failed"
    assert failed["error"] == "the receiver answered HTTP 302"
    assert len(receiver.deliveries) == ATTEMPTS
    assert inside.visits == []


@pytest.mark.parametrize(
    ("receiver", "error"),
    [(GarbageReceiver, "failed: bad response"), (None, "failed: could not connect")],
)
def test_a_failure_reaches_the_client_as_a_category_only(
    base: str, receiver: type[HostileReceiver] | None, error: str
) -> None:
    if receiver is None:  # nothing listens there
        failed = settled(submit(base, f"http://127.0.0.1:{free_port()}/hook"))
    else:
        with receiver() as listening:
            failed = settled(submit(base, listening.url()))

    assert (failed["state"], failed["attempts"], failed["error"]) == ("failed", ATTEMPTS, error)
    assert failed["error"] in CATEGORIES
