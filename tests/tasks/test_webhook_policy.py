"""Webhooks go to public addresses only, unless WEBHOOK_ALLOW_PRIVATE: over the real API and a
real worker with the default settings (the jobs tests allow private receivers)."""

import socket

import httpx
import pytest

from tests.support import Receiver, wait_until

TRIP = {"request_id": "w1", "PULocationID": 130, "DOLocationID": 250, "trip_distance": 3.0}


def test_a_callback_written_as_a_private_address_is_refused_at_once(platform: str) -> None:
    body = {**TRIP, "callback_url": "http://169.254.169.254/latest/meta-data"}
    reply = httpx.post(f"{platform}/v1/trip/jobs", json=body, timeout=5)

    assert reply.status_code == 400
    assert reply.json()["message"] == "callback_url: 169.254.169.254 is not a public address"


@pytest.mark.parametrize("receiver", [0], indirect=True)
def test_a_worker_does_not_deliver_to_a_name_that_resolves_to_a_private_address(
    platform: str, receiver: Receiver
) -> None:
    url = receiver.url.replace("127.0.0.1", socket.gethostname())  # a name, not an address
    reply = httpx.post(f"{platform}/v1/trip/jobs", json={**TRIP, "callback_url": url}, timeout=5)
    status_url = f"{platform}{reply.json()['status_url']}"

    def callback() -> dict[str, object]:
        job: dict[str, dict[str, object]] = httpx.get(status_url, timeout=5).json()
        return job.get("callback", {})

    wait_until(lambda: callback().get("state") == "failed", 30, "the webhook to be refused")
    assert callback()["attempts"] == 1
    assert "is not a public address" in str(callback()["error"])
    assert receiver.deliveries == []
