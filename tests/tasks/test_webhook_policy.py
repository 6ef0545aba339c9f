"""Webhooks go to public addresses and allowed ports only, unless configured otherwise: over the
real API and a real worker, with WEBHOOK_ALLOW_PRIVATE off (the jobs tests turn it on)."""

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import Receiver, running_platform, start_api, tripq_env, wait_until

TRIP = {"request_id": "w1", "PULocationID": 130, "DOLocationID": 250, "trip_distance": 3.0}


@pytest.fixture(scope="module")
def platform(redis_url: str, log_dir: Path) -> Iterator[str]:
    """An API and a worker that take callbacks on any port (the test receivers' are ephemeral)
    and deliver to public addresses only; yield the API's base URL."""
    with running_platform(tripq_env(redis_url, log_dir, webhook_ports="*"), log_dir) as base:
        yield base


@pytest.fixture(scope="module")
def web_ports_only(redis_url: str, log_dir: Path, platform: str) -> Iterator[str]:
    """An API with the default WEBHOOK_PORTS (80 and 443); yield its base URL."""
    api, base = start_api(tripq_env(redis_url, log_dir), log_dir)
    yield base
    api.stop()


def refusal(base: str, callback_url: str) -> httpx.Response:
    """Submit a job with `callback_url`; the API's reply."""
    return httpx.post(
        f"{base}/v1/trip/jobs", json={**TRIP, "callback_url": callback_url}, timeout=5
    )


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254"),
        ("http://[64:ff9b::a9fe:a9fe]/", "64:ff9b::a9fe:a9fe"),  # NAT64 of the metadata address
        ("http://[::7f00:1]/", "::7f00:1"),  # IPv4-compatible loopback
        ("http://localhost/hook", "localhost"),
    ],
)
def test_a_callback_written_as_a_private_address_is_refused_at_once(
    platform: str, url: str, host: str
) -> None:
    reply = refusal(platform, url)

    assert reply.status_code == 400
    assert reply.json()["message"] == f"callback_url: {host} is not a public address"


def test_a_callback_on_a_port_not_allowed_is_refused_at_once(web_ports_only: str) -> None:
    reply = refusal(web_ports_only, "http://hooks.example.com:6379/")

    assert reply.status_code == 400
    assert reply.json()["message"] == "callback_url: port 6379 is not allowed (WEBHOOK_PORTS)"


@pytest.mark.parametrize("receiver", [0], indirect=True)
def test_a_worker_does_not_deliver_to_a_name_that_resolves_to_a_private_address(
    platform: str, receiver: Receiver
) -> None:
    url = receiver.url.replace("127.0.0.1", socket.gethostname())  # a name, not an address
    reply = refusal(platform, url)
    assert reply.status_code == 202, reply.text
    status_url = f"{platform}{reply.json()['status_url']}"

    def callback() -> dict[str, object]:
        job: dict[str, dict[str, object]] = httpx.get(status_url, timeout=5).json()
        return job.get("callback", {})

    wait_until(lambda: callback().get("state") == "failed", 30, "the webhook to be refused")
    assert callback()["attempts"] == 1
    assert callback()["error"] == "refused: private address"
    assert receiver.deliveries == []
