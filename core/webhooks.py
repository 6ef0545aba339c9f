"""Signed webhook bodies: how tripq signs a job's result, and how a receiver checks it.

Each delivery carries

    X-Tripq-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>

Signing the time with the body lets a receiver refuse a replayed old delivery (see `verify`'s
`tolerance_s`). A receiver that holds WEBHOOK_SECRET recomputes the HMAC over the raw body bytes
and compares in constant time; `verify` does that, and is all a Python receiver needs to import.
"""

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Tripq-Signature"
DELIVERY_HEADER = "X-Tripq-Delivery"  # "<job id>.<attempt>": the same job may arrive twice
DEFAULT_TOLERANCE_S = 300.0


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
