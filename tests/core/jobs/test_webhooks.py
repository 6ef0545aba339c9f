"""Webhook rules: which destinations are refused, and what a receiver's `verify` accepts."""

import ipaddress
import json

import pytest

from core.jobs.webhooks import callback_refusal, is_private, sign, verify

SECRET = "shared-secret"
URL = "https://hooks.example.com/tripq"
BODY = json.dumps({"job_id": "5f0c", "state": "succeeded", "callback": {"url": URL}}).encode()
DELIVERY = "5f0c.1"
NOW = 1_800_000_000.0
ANY_PORT = None
WEB_PORTS = frozenset({80, 443})


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.0.7",
        "169.254.169.254",  # cloud metadata
        "0.1.2.3",
        "100.64.0.1",  # shared, carrier-grade NAT
        "192.0.0.9",  # IETF protocol assignments
        "192.0.2.1",  # documentation
        "192.88.99.1",  # 6to4 relay anycast
        "198.18.0.1",  # benchmarking
        "198.51.100.1",
        "203.0.113.1",
        "224.0.0.1",  # multicast
        "233.252.0.1",
        "240.0.0.1",  # reserved
        "255.255.255.255",  # broadcast
        "::",
        "::1",
        "::7f00:1",  # IPv4-compatible 127.0.0.1
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:8.8.8.8",
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b:1::a9fe:a9fe",  # local-use NAT64
        "100::1",  # discard-only
        "2001::a9fe:a9fe",  # Teredo
        "2001:2::1",  # benchmarking
        "2001:20::1",  # ORCHIDv2
        "2001:db8::1",  # documentation
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "3fff::1",  # documentation
        "5f00::1",  # SRv6
        "fc00::1",  # unique local
        "fe80::1",  # link-local
        "fec0::1",  # site-local
        "ff02::1",  # multicast
        "ff0e::1",
    ],
)
def test_a_special_purpose_address_is_private(address: str) -> None:
    url = f"http://[{address}]/hook" if ":" in address else f"http://{address}/hook"

    assert is_private(ipaddress.ip_address(address))
    assert callback_refusal(url, allow_private=False, ports=ANY_PORT) == (
        f"{address} is not a public address"
    )


@pytest.mark.parametrize(
    "address", ["93.184.215.14", "8.8.8.8", "1.1.1.1", "2606:4700::1111", "2a00:1450:4001::1"]
)
def test_a_public_address_is_not_private(address: str) -> None:
    assert not is_private(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "url",
    [
        "https://93.184.215.14/hook",
        "https://[2606:4700::1111]/x",
        "http://hooks.example.com/tripq",
        "https://hooks.example.com:443/tripq",
    ],
)
def test_a_public_destination_on_a_web_port_is_accepted(url: str) -> None:
    assert callback_refusal(url, allow_private=False, ports=WEB_PORTS) is None


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://localhost/hook", "localhost"),
        ("http://LOCALHOST./hook", "localhost"),
        ("http://api.localhost/hook", "api.localhost"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254"),
        ("http://[64:ff9b::a9fe:a9fe]/x", "64:ff9b::a9fe:a9fe"),
    ],
)
def test_a_private_destination_is_named_as_written(url: str, host: str) -> None:
    assert callback_refusal(url, allow_private=False, ports=ANY_PORT) == (
        f"{host} is not a public address"
    )
    assert callback_refusal(url, allow_private=True, ports=ANY_PORT) is None


def test_a_name_is_left_to_the_worker_to_judge_by_what_it_resolves_to() -> None:
    assert callback_refusal("http://intranet.corp/hook", allow_private=False, ports=None) is None


@pytest.mark.parametrize(
    ("url", "port"),
    [
        ("http://hooks.example.com:8080/x", 8080),
        ("https://hooks.example.com:80/x", 80),
        ("http://hooks.example.com:22/x", 22),
    ],
)
def test_a_port_outside_webhook_ports_is_refused(url: str, port: int) -> None:
    ports = frozenset({443, 8443}) if port == 80 else WEB_PORTS
    assert callback_refusal(url, allow_private=False, ports=ports) == (
        f"port {port} is not allowed (WEBHOOK_PORTS)"
    )
    assert callback_refusal(url, allow_private=False, ports=ANY_PORT) is None


def test_the_implicit_port_of_the_scheme_counts() -> None:
    only_https = frozenset({443})

    assert (
        callback_refusal("https://hooks.example.com/x", allow_private=False, ports=only_https)
        is None
    )
    assert callback_refusal(
        "http://hooks.example.com/x", allow_private=False, ports=only_https
    ) == ("port 80 is not allowed (WEBHOOK_PORTS)")


def test_a_signed_delivery_verifies_with_the_same_secret_delivery_and_url() -> None:
    header = sign(SECRET, BODY, DELIVERY, now=NOW)

    assert verify(SECRET, BODY, header, delivery=DELIVERY, now=NOW + 1)
    assert verify(SECRET, BODY, header, delivery=DELIVERY, url=URL, now=NOW + 1)


@pytest.mark.parametrize(
    ("secret", "body", "delivery"),
    [
        ("another-secret", BODY, DELIVERY),
        (SECRET, BODY.replace(b"succeeded", b"failed"), DELIVERY),
        (SECRET, b"", DELIVERY),
        (SECRET, BODY, "5f0c.2"),  # another attempt's id
        (SECRET, BODY, "9a9a.1"),  # another job's id
    ],
)
def test_another_secret_body_or_delivery_id_does_not_verify(
    secret: str, body: bytes, delivery: str
) -> None:
    assert not verify(
        secret, body, sign(SECRET, BODY, DELIVERY, now=NOW), delivery=delivery, now=NOW
    )


def test_a_delivery_meant_for_another_receiver_does_not_verify() -> None:
    header = sign(SECRET, BODY, DELIVERY, now=NOW)

    assert not verify(
        SECRET, BODY, header, delivery=DELIVERY, url="https://other.example/hook", now=NOW
    )


def test_a_body_without_its_destination_does_not_verify_against_a_url() -> None:
    body = b'{"job_id":"5f0c"}'
    header = sign(SECRET, body, DELIVERY, now=NOW)

    assert verify(SECRET, body, header, delivery=DELIVERY, now=NOW)
    assert not verify(SECRET, body, header, delivery=DELIVERY, url=URL, now=NOW)


def test_a_timestamp_outside_the_window_either_way_is_refused() -> None:
    header = sign(SECRET, BODY, DELIVERY, now=NOW)

    assert verify(SECRET, BODY, header, delivery=DELIVERY, now=NOW + 299)
    assert verify(SECRET, BODY, header, delivery=DELIVERY, now=NOW - 299)
    assert not verify(SECRET, BODY, header, delivery=DELIVERY, now=NOW + 301)  # old: a replay
    assert not verify(SECRET, BODY, header, delivery=DELIVERY, now=NOW - 301)  # from the future


def test_the_window_is_the_receivers_to_choose() -> None:
    header = sign(SECRET, BODY, DELIVERY, now=NOW)

    assert not verify(SECRET, BODY, header, delivery=DELIVERY, tolerance_s=30, now=NOW + 31)


@pytest.mark.parametrize("header", ["", "t=abc,v1=00", "v1=00", f"t={int(NOW)}", "garbage"])
def test_a_malformed_signature_header_does_not_verify(header: str) -> None:
    assert not verify(SECRET, BODY, header, delivery=DELIVERY, now=NOW)
