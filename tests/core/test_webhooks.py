"""Webhook signatures: what a receiver accepts and what it refuses."""

import pytest

from core.webhooks import sign, verify

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
