"""Signed webhook bodies: how tripq signs a job's result, and how a receiver checks it.

Each delivery carries

    X-Tripq-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>

Signing the time with the body lets a receiver refuse a replayed old delivery (see `verify`'s
`tolerance_s`). A receiver that holds WEBHOOK_SECRET recomputes the HMAC over the raw body bytes
and compares in constant time; `verify` does that, and is all a Python receiver needs to import.

Deliveries go only to public addresses unless WEBHOOK_ALLOW_PRIVATE is set: a client must not
turn the workers into a way into the network they run in (loopback, cloud metadata, private
ranges). The API refuses such a `callback_url` when it is written as an address; the worker
checks what a name resolves to before each delivery.
"""

import hashlib
import hmac
import ipaddress
import socket
import time
from urllib.parse import urlsplit

SIGNATURE_HEADER = "X-Tripq-Signature"
DELIVERY_HEADER = "X-Tripq-Delivery"  # "<job id>.<attempt>": the same job may arrive twice
DEFAULT_TOLERANCE_S = 300.0


def private_literal(url: str) -> str | None:
    """Name the host of `url` when it is, as written, not a public address (an IP literal in a
    private, loopback or link-local range, or localhost); else None. Needs no DNS lookup."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return host
    try:
        return host if not ipaddress.ip_address(host).is_global else None
    except ValueError:
        return None


def private_destination(url: str) -> str | None:
    """Name the first non-public address the host of `url` resolves to, if any; None when all
    are public or the name does not resolve (the delivery then fails and is retried)."""
    host = urlsplit(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        addresses = {str(info[4][0]) for info in infos}
    except OSError:
        return None
    for address in sorted(addresses):
        if not ipaddress.ip_address(address.split("%", 1)[0]).is_global:
            return f"{host} ({address})"
    return None


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, now: float | None = None) -> str:
    """Give the X-Tripq-Signature value for `body`, signed at `now`."""
    timestamp = int(time.time() if now is None else now)
    return f"t={timestamp},v1={_digest(secret, timestamp, body)}"


def verify(
    secret: str,
    body: bytes,
    header: str,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """Tell whether `header` signs `body` with `secret`, at most `tolerance_s` ago."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
        given = parts["v1"]
    except (KeyError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(_digest(secret, timestamp, body), given)
