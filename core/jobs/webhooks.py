"""Webhooks: where tripq may send a job's result, and how a receiver checks it came from tripq.

Each delivery carries

    X-Tripq-Delivery:  <job id>.<attempt>
    X-Tripq-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<delivery>.<body>")>

signed with the job's own secret (chosen by its client, or made for it and given in its 202
reply), else WEBHOOK_SECRET. The HMAC binds the time, the delivery id and the raw body bytes; the
body is the job's view, whose `callback.url` names the receiver it was sent to, so a receiver
that passes its own URL to `verify` refuses a delivery meant for another. `verify` refuses a
timestamp more than `tolerance_s` (300 s) from now, in the past or the future. Inside that window
a replayed delivery still verifies: a receiver dedupes by X-Tripq-Delivery (which the signature
binds), as it must anyway, since delivery is at least once. `verify` is all a Python receiver
needs to import.

Deliveries go only to public addresses unless WEBHOOK_ALLOW_PRIVATE is set, and only to the ports
of WEBHOOK_PORTS: a client must not turn the workers into a way into the network they run in
(loopback, cloud metadata, private ranges, the special-purpose ranges that reach them anyway).
The API refuses a `callback_url` that is not acceptable as written (`callback_refusal`); the
worker resolves a name once, refuses it if any of its addresses is private (`is_private`), and
connects to the address it checked (core.jobs.delivery).
"""

import hashlib
import hmac
import ipaddress
import json
import time
from urllib.parse import SplitResult, urlsplit

SIGNATURE_HEADER = "X-Tripq-Signature"
DELIVERY_HEADER = "X-Tripq-Delivery"  # "<job id>.<attempt>": the same job may arrive twice
DEFAULT_TOLERANCE_S = 300.0

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Special-purpose ranges (IANA's registries), all refused: Python 3.11's `is_global` calls some of
# them global (NAT64, 6to4, IPv4-compatible, multicast, parts of 192.0.0.0/24), and several of
# those reach a private or loopback address through a translator or a tunnel.
_SPECIAL_NETWORKS = tuple(
    ipaddress.ip_network(network)
    for network in (
        "0.0.0.0/8",  # "this network", RFC 791
        "10.0.0.0/8",  # private, RFC 1918
        "100.64.0.0/10",  # shared (carrier-grade NAT), RFC 6598
        "127.0.0.0/8",  # loopback, RFC 1122
        "169.254.0.0/16",  # link-local (cloud metadata), RFC 3927
        "172.16.0.0/12",  # private, RFC 1918
        "192.0.0.0/24",  # IETF protocol assignments, RFC 6890
        "192.0.2.0/24",  # documentation TEST-NET-1, RFC 5737
        "192.88.99.0/24",  # 6to4 relay anycast, RFC 7526
        "192.168.0.0/16",  # private, RFC 1918
        "198.18.0.0/15",  # benchmarking, RFC 2544
        "198.51.100.0/24",  # documentation TEST-NET-2, RFC 5737
        "203.0.113.0/24",  # documentation TEST-NET-3, RFC 5737
        "224.0.0.0/4",  # multicast, RFC 5771
        "240.0.0.0/4",  # reserved, RFC 1112, and the limited broadcast 255.255.255.255, RFC 919
        "::/96",  # IPv4-compatible (deprecated), with unspecified :: and loopback ::1, RFC 4291
        "::ffff:0:0/96",  # IPv4-mapped, RFC 4291
        "64:ff9b::/96",  # NAT64 well-known prefix, RFC 6052
        "64:ff9b:1::/48",  # NAT64 local-use prefix, RFC 8215
        "100::/64",  # discard-only, RFC 6666
        "2001::/23",  # IETF protocol assignments, RFC 2928, which holds the three below
        "2001::/32",  # Teredo, RFC 4380
        "2001:2::/48",  # benchmarking, RFC 5180
        "2001:20::/28",  # ORCHIDv2, RFC 7343
        "2001:db8::/32",  # documentation, RFC 3849
        "2002::/16",  # 6to4, RFC 3056
        "3fff::/20",  # documentation, RFC 9637
        "5f00::/16",  # segment routing (SRv6) SIDs, RFC 9602
        "fc00::/7",  # unique local, RFC 4193
        "fe80::/10",  # link-local, RFC 4291
        "fec0::/10",  # site-local (deprecated), RFC 3879
        "ff00::/8",  # multicast, RFC 4291
    )
)
_DEFAULT_PORTS = {"http": 80, "https": 443}


def is_private(address: Address) -> bool:
    """Tell whether a webhook must not go to `address` (not public, or special-purpose)."""
    if not address.is_global:
        return True
    return any(address in network for network in _SPECIAL_NETWORKS)


def url_port(parts: SplitResult) -> int:
    """Give the port a split callback URL connects to: the one written, else its scheme's."""
    written = parts.port
    return written if written is not None else _DEFAULT_PORTS.get(parts.scheme.lower(), 0)


def callback_refusal(url: str, *, allow_private: bool, ports: frozenset[int] | None) -> str | None:
    """Say why `url`, as written, is no place for a webhook (None: acceptable); no DNS lookup."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower().rstrip(".")
    if not allow_private and _private_as_written(host):
        return f"{host} is not a public address"
    try:
        port = url_port(parts)
    except ValueError:
        return "the port is not a number from 1 to 65535"
    if ports is not None and port not in ports:
        return f"port {port} is not allowed (WEBHOOK_PORTS)"
    return None


def _private_as_written(host: str) -> bool:
    """Tell whether `host` names a private place without being resolved: localhost, or a
    private address literal. A name is judged by the worker, by what it resolves to."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return is_private(ipaddress.ip_address(host))
    except ValueError:
        return False


def _digest(secret: str, timestamp: int, delivery: str, body: bytes) -> str:
    signed = f"{timestamp}.{delivery}.".encode() + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, delivery: str, now: float | None = None) -> str:
    """Give the X-Tripq-Signature value of delivery `delivery` of `body`, signed at `now`."""
    timestamp = int(time.time() if now is None else now)
    return f"t={timestamp},v1={_digest(secret, timestamp, delivery, body)}"


def verify(
    secret: str,
    body: bytes,
    header: str,
    *,
    delivery: str,
    url: str | None = None,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """Tell whether `header` signs `body` as delivery `delivery` with `secret`, within
    `tolerance_s` of now (either way), and, given `url`, whether the body was sent to `url`."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
        given = parts["v1"]
    except (KeyError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    if not hmac.compare_digest(_digest(secret, timestamp, delivery, body), given):
        return False
    return url is None or _destination(body) == url


def _destination(body: bytes) -> str | None:
    """Give the callback URL a signed job view names, or None."""
    try:
        view = json.loads(body)
    except ValueError:
        return None
    callback = view.get("callback") if isinstance(view, dict) else None
    destination = callback.get("url") if isinstance(callback, dict) else None
    return destination if isinstance(destination, str) else None
