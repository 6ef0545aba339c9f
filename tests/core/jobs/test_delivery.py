"""One webhook delivery against real receivers on this machine: what it refuses, how long a
hostile receiver can hold it, and what the client is told (a category, never an exception)."""

import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis

from config import Settings
from core.jobs.delivery import (
    FAILED_CONNECT,
    FAILED_RESPONSE,
    FAILED_TLS,
    REFUSED_PORT,
    REFUSED_PRIVATE,
    TIMED_OUT,
    DeliveryDeadline,
    DeliveryFailed,
    Lookup,
    WebhookDelivery,
)
from core.jobs.schedule import DueWebhook
from core.jobs.webhooks import SIGNATURE_HEADER, verify
from tests.receivers import (
    GarbageReceiver,
    HugeBodyReceiver,
    PlainReceiver,
    RedirectingReceiver,
    TricklingReceiver,
)
from tests.support import free_port

TIMEOUT_S = 1.0
MARGIN_S = 1.5  # beyond WEBHOOK_TIMEOUT_S: closing its socket, on a busy host
GIB = 1 << 30
SECRET = "job-secret"
# Loopback receivers: private addresses, allowed here unless a test says otherwise.
RECEIVERS_ALLOWED: dict[str, Any] = {"webhook_allow_private": True, "webhook_ports": "*"}


def deliverer(
    redis_client: redis.Redis, lookup: Lookup | None = None, **settings: Any
) -> WebhookDelivery:
    """A deliverer with WEBHOOK_TIMEOUT_S of TIMEOUT_S and `settings`."""
    chosen = Settings.model_validate({"webhook_timeout_s": TIMEOUT_S, **settings})
    if lookup is None:
        return WebhookDelivery(redis_client, chosen)
    return WebhookDelivery(redis_client, chosen, lookup=lookup)


def webhook(url: str, secret: str | None = None) -> DueWebhook:
    """A due webhook of a succeeded job, to `url`."""
    view = {"job_id": "ab" * 16, "state": "succeeded", "callback": {"url": url, "attempts": 0}}
    return DueWebhook(view, secret)


def deliver(delivery: WebhookDelivery, url: str, secret: str | None = None) -> float:
    """Deliver a webhook to `url`; return the seconds it took."""
    started = time.monotonic()
    delivery.deliver(webhook(url, secret), "ab.1", DeliveryDeadline(TIMEOUT_S))
    return time.monotonic() - started


def refusal(delivery: WebhookDelivery, url: str) -> DeliveryFailed:
    """Deliver a webhook to `url`, which must fail; return how."""
    with pytest.raises(DeliveryFailed) as failed:
        deliver(delivery, url)
    return failed.value


def test_a_receiver_trickling_its_headers_is_cut_off_at_the_timeout(
    redis_client: redis.Redis,
) -> None:
    with TricklingReceiver() as receiver:
        started = time.monotonic()
        failed = refusal(deliverer(redis_client, **RECEIVERS_ALLOWED), receiver.url())
        took = time.monotonic() - started

    assert failed.reason == TIMED_OUT
    assert not failed.final
    assert TIMEOUT_S <= took <= TIMEOUT_S + MARGIN_S
    assert receiver.visits[0].bytes_sent > 10  # it was trickling when it was cut off


def test_a_huge_body_is_not_read(redis_client: redis.Redis) -> None:
    with HugeBodyReceiver(GIB) as receiver:
        took = deliver(deliverer(redis_client, **RECEIVERS_ALLOWED), receiver.url())

    assert took < TIMEOUT_S
    # What the kernel's buffers took before the deliverer left: nowhere near the gigabyte.
    assert receiver.visits[0].bytes_sent < 64 << 20


def test_a_redirect_is_not_followed(redis_client: redis.Redis) -> None:
    with PlainReceiver() as inside, RedirectingReceiver(inside.url("/admin")) as receiver:
        failed = refusal(deliverer(redis_client, **RECEIVERS_ALLOWED), receiver.url())

    assert failed.reason == "the receiver answered HTTP 302"
    assert inside.visits == []


def test_a_receiver_that_does_not_speak_http_is_a_bad_response(
    redis_client: redis.Redis,
) -> None:
    with GarbageReceiver() as receiver:
        failed = refusal(deliverer(redis_client, **RECEIVERS_ALLOWED), receiver.url())

    assert failed.reason == FAILED_RESPONSE


def test_a_closed_port_could_not_connect_and_says_nothing_more(
    redis_client: redis.Redis,
) -> None:
    failed = refusal(
        deliverer(redis_client, **RECEIVERS_ALLOWED), f"http://127.0.0.1:{free_port()}/hook"
    )

    assert failed.reason == FAILED_CONNECT
    assert "refused" in failed.detail.lower()  # the detail is for the worker's log


def test_a_private_address_is_refused_for_good_without_a_connection(
    redis_client: redis.Redis,
) -> None:
    with PlainReceiver() as receiver:
        failed = refusal(deliverer(redis_client, webhook_ports="*"), receiver.url())

    assert (failed.reason, failed.final) == (REFUSED_PRIVATE, True)
    assert receiver.visits == []


def test_a_name_is_refused_when_any_of_its_addresses_is_private(
    redis_client: redis.Redis,
) -> None:
    def two_addresses(host: str, port: int) -> Sequence[tuple[Any, ...]]:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", port)),
        ]

    delivery = deliverer(redis_client, two_addresses, webhook_ports="*")

    assert refusal(delivery, "http://hooks.example.com/x").reason == REFUSED_PRIVATE


def test_a_port_outside_webhook_ports_is_refused_for_good_by_the_worker_too(
    redis_client: redis.Redis,
) -> None:
    with PlainReceiver() as receiver:
        delivery = deliverer(redis_client, webhook_allow_private=True, webhook_ports="80,443")
        failed = refusal(delivery, receiver.url())

    assert (failed.reason, failed.final) == (REFUSED_PORT, True)
    assert receiver.visits == []


def test_a_delivery_is_signed_with_the_jobs_own_secret_bound_to_its_id_and_url(
    redis_client: redis.Redis,
) -> None:
    with PlainReceiver() as receiver:
        deliver(deliverer(redis_client, **RECEIVERS_ALLOWED), receiver.url(), SECRET)

    visit = receiver.visits[0]
    header = visit.headers[SIGNATURE_HEADER.lower()]
    assert verify(SECRET, visit.body, header, delivery="ab.1", url=receiver.url())
    assert not verify(SECRET, visit.body, header, delivery="ab.2", url=receiver.url())
    assert not verify("another secret", visit.body, header, delivery="ab.1")
    assert SECRET not in visit.body.decode()


# --- TLS: verified against the URL's host, while connected to the address checked -------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test CA (ca.pem) and a certificate it signed for hook.test (hook.pem, hook.key)."""
    if shutil.which("openssl") is None:
        pytest.skip("the TLS tests make their certificates with the openssl command")
    folder = tmp_path_factory.mktemp("tls")
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
            "-subj", "/CN=tripq test CA")  # fmt: skip
    openssl("req", *key, "-keyout", "hook.key", "-out", "hook.csr", "-subj", "/CN=hook.test")
    (folder / "san.ext").write_text("subjectAltName=DNS:hook.test\n")
    openssl("x509", "-req", "-in", "hook.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "hook.pem", "-days", "1", "-extfile", "san.ext")  # fmt: skip
    return folder


@pytest.fixture
def tls_receiver(certificates: Path) -> Iterator[PlainReceiver]:
    """A receiver on loopback with the certificate of hook.test."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificates / "hook.pem", certificates / "hook.key")
    with PlainReceiver(tls=context) as receiver:
        yield receiver


def to_loopback(host: str, port: int) -> Sequence[tuple[Any, ...]]:
    """Resolve every name to this machine, as a name server would for the receiver's name."""
    return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]


def test_tls_is_verified_against_the_urls_host_not_the_address(
    redis_client: redis.Redis,
    tls_receiver: PlainReceiver,
    certificates: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates / "ca.pem"))  # trust the test CA
    delivery = deliverer(redis_client, to_loopback, **RECEIVERS_ALLOWED)

    deliver(delivery, tls_receiver.url(host="hook.test"))
    failed = refusal(delivery, tls_receiver.url(host="other.test"))

    assert failed.reason == FAILED_TLS
    assert [v.headers["host"] for v in tls_receiver.visits if v.headers] == [
        tls_receiver.url(host="hook.test").split("/")[2]
    ]


def test_a_certificate_from_an_unknown_authority_fails_tls(
    redis_client: redis.Redis, tls_receiver: PlainReceiver
) -> None:
    delivery = deliverer(redis_client, to_loopback, **RECEIVERS_ALLOWED)

    assert refusal(delivery, tls_receiver.url(host="hook.test")).reason == FAILED_TLS
