"""What every request to the predict and jobs routes must pass before its body is read.

These read app state rather than being declared dependencies: FastAPI's dependency solving
costs more per request than everything tripq itself does on the predict path.
"""

import math

from fastapi import HTTPException, Request
from starlette.datastructures import Headers

from config import Settings
from core.errors import InvalidTrip, Unauthorized
from core.online.client import JobClient

# How /docs describes the header that check_client reads.
MODEL_VERSION_HEADER = {
    "name": "X-Model-Version",
    "in": "header",
    "required": False,
    "description": "Pin the model version that must answer (409 when no live worker holds "
    "it); by default the current version, or the canary for its share of requests.",
    "schema": {"type": "string"},
}


def check_api_key(request: Request) -> None:
    """Refuse the request unless it carries a valid X-API-Key (when keys are configured)."""
    keys = request.app.state.api_keys
    if keys and request.headers.get("x-api-key") not in keys:
        raise Unauthorized("X-API-Key: missing or not valid")


def check_client(request: Request) -> str | None:
    """Check the key and the content type of a request that sends trips; return the model
    version that must answer it (None: any worker's current one)."""
    check_api_key(request)
    content_type = request.headers.get("content-type")
    if content_type is not None and not _is_json(content_type):
        raise HTTPException(415, f"content-type: expected application/json, got {content_type}")
    jobs: JobClient = request.app.state.jobs
    return jobs.route(request.headers.get("x-model-version"))


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def deadline(headers: Headers, settings: Settings) -> float:
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
