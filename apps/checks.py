"""What every request to the predict and jobs routes must pass before its body is read, and the
policy a predict request is served under.

These read app state rather than being declared dependencies: FastAPI's dependency solving
costs more per request than everything tripq itself does on the predict path.
"""

import enum
import functools
import hashlib
import hmac
import math
from dataclasses import dataclass

from fastapi import HTTPException, Request
from starlette.datastructures import Headers

from config import Settings
from core.errors import InvalidTrip, Unauthorized
from core.online.client import PredictionClient
from core.online.deadline import Deadline

# How /docs describes the header that check_client reads.
MODEL_VERSION_HEADER = {
    "name": "X-Model-Version",
    "in": "header",
    "required": False,
    "description": "Pin the model version that must answer (409 when no live worker holds "
    "it); by default the current version, or the canary for its share of requests.",
    "schema": {"type": "string"},
}


class OnTimeout(enum.Enum):
    """What a predict request gets when no answer comes by its deadline."""

    REPLY = "reply"  # 504, reply_code 2
    HAND_OVER = "hand_over"  # 202 and an async job holding its trips (Prefer: respond-async)


@dataclass(frozen=True, slots=True)
class RequestPolicy:
    """How one predict request is served, read once from its headers."""

    deadline: Deadline  # when its wait for an answer ends
    version: str | None  # the model version that must answer; None: a worker's current one
    on_timeout: OnTimeout
    job_now: bool  # make the async job at once, without waiting (Prefer: ..., wait=0)


def check_api_key(request: Request) -> None:
    """Refuse the request unless it carries a valid X-API-Key (when keys are configured)."""
    keys = request.app.state.api_keys
    if keys and not is_valid_key(request.headers.get("x-api-key"), keys):
        raise Unauthorized("X-API-Key: missing or not valid")


def api_key_owner(request: Request) -> str:
    """Name who owns a request's work: a hex SHA-256 of its valid API key ("" with no keys)."""
    if not request.app.state.api_keys:
        return ""
    check_api_key(request)
    return _key_digest(request.headers["x-api-key"]).hex()


def is_valid_key(sent: str | None, keys: frozenset[str]) -> bool:
    """Tell whether `sent` is one of `keys`, in time that tells nothing of either."""
    # Digests have one length whatever was sent, and every configured key is compared with no
    # early exit, so the time taken tells nothing of how much of a key was right, nor of which.
    digest = _key_digest(sent or "")
    matched = False
    for known in _key_digests(keys):
        matched |= hmac.compare_digest(digest, known)
    return matched and bool(sent)


def _key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@functools.cache
def _key_digests(keys: frozenset[str]) -> tuple[bytes, ...]:
    return tuple(_key_digest(key) for key in keys)


def check_client(request: Request) -> str | None:
    """Check the key and the content type of a request that sends trips; return the model
    version that must answer it (None: any worker's current one)."""
    check_api_key(request)
    content_type = request.headers.get("content-type")
    if content_type is not None and not _is_json(content_type):
        raise HTTPException(415, f"content-type: expected application/json, got {content_type}")
    predictor: PredictionClient = request.app.state.predictor
    return predictor.route(request.headers.get("x-model-version"))


def request_policy(request: Request) -> RequestPolicy:
    """Check a predict request (see check_client) and read the policy it is served under."""
    version = check_client(request)
    timeout_s = request_timeout(request.headers, request.app.state.settings)
    wait_s = async_preference(request.headers)
    if wait_s is None:
        return RequestPolicy(Deadline.after(timeout_s), version, OnTimeout.REPLY, job_now=False)
    deadline = Deadline.after(min(timeout_s, wait_s))
    return RequestPolicy(deadline, version, OnTimeout.HAND_OVER, job_now=wait_s == 0)


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def request_timeout(headers: Headers, settings: Settings) -> float:
    """Read the client's X-Request-Timeout (seconds), capped by config; else the default."""
    asked = headers.get("x-request-timeout")
    if asked is None:
        return settings.request_timeout_s
    try:
        seconds = float(asked)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise InvalidTrip(f"X-Request-Timeout: must be a positive number of seconds, got {asked!r}")
    return min(seconds, settings.request_timeout_max_s)


def async_preference(headers: Headers) -> float | None:
    """Read `Prefer: respond-async[, wait=N]` (RFC 7240): None when the client did not ask for
    an async reply, else how many seconds it would wait for a synchronous one (inf: its
    deadline)."""
    preferences = [p.strip().lower() for v in headers.getlist("prefer") for p in v.split(",")]
    if "respond-async" not in preferences:
        return None
    for preference in preferences:
        name, _, value = preference.partition("=")
        if name.strip() == "wait":
            try:
                return max(0.0, float(value.strip()))
            except ValueError:
                message = f"Prefer: wait must be a number of seconds, got {value!r}"
                raise InvalidTrip(message) from None
    return float("inf")
