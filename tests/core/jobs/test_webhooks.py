"""Webhook signatures: what a receiver accepts and what it refuses."""

import ipaddress
import socket

import pytest

from core.jobs.webhooks import private_destination, private_literal, sign, verify

SECRET = "shared-secret"
BODY = b'{"job_id":"5f0c","state":"succeeded"}'
NOW = 1_800_000_000.0


def test_a_signed_body_verifies_with_the_same_secret() -> None:
    assert verify(SECRET, BODY, sign(SECRET, BODY, now=NOW), now=NOW + 1)


@pytest.mark.parametrize(
    ("secret", "body"),
    [("another-secret", BODY), (SECRET, BODY.replace(b"succeeded", b"failed")), (SECRET, b"")],
)
def test_another_secret_or_a_changed_body_does_not_verify(secret: str, body: bytes) -> None:
    assert not verify(secret, body, sign(SECRET, BODY, now=NOW), now=NOW)


def test_an_old_signature_is_refused_as_a_replay() -> None:
    header = sign(SECRET, BODY, now=NOW)

    assert verify(SECRET, BODY, header, now=NOW + 299)
    assert not verify(SECRET, BODY, header, now=NOW + 301)


@pytest.mark.parametrize("header", ["", "t=abc,v1=00", "v1=00", f"t={int(NOW)}", "garbage"])
def test_a_malformed_signature_header_does_not_verify(header: str) -> None:
    assert not verify(SECRET, BODY, header, now=NOW)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "https://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",  # cloud metadata
        "http://[::1]/hook",
        "http://192.168.0.7/hook",
    ],
)
def test_a_private_address_is_named_as_written_and_as_resolved(url: str) -> None:
    assert private_literal(url) is not None
    assert private_destination(url) is not None


@pytest.mark.parametrize("url", ["https://93.184.215.14/hook", "https://[2606:4700::1111]/x"])
def test_a_public_address_passes(url: str) -> None:
    assert private_literal(url) is None
    assert private_destination(url) is None


def test_a_name_is_judged_by_what_it_resolves_to_not_as_written() -> None:
    # This machine's own name: not an address as written, a local one once resolved.
    url = f"http://{socket.gethostname()}/hook"
    try:
        address = socket.getaddrinfo(socket.gethostname(), None)[0][4][0]
    except OSError:
        pytest.skip("this machine's name does not resolve")
    if ipaddress.ip_address(address).is_global:
        pytest.skip(f"this machine's name resolves to a public address ({address})")

    assert private_literal(url) is None
    assert private_destination(url) is not None
