"""Async jobs: accept trips now, answer later, by polling or by webhook.

    POST   /v1/trip/jobs            202 + Location: the job is queued (durably, in Redis)
    GET    /v1/trip/jobs/{job_id}   its state, timestamps, and its result once it has one
    DELETE /v1/trip/jobs/{job_id}   cancel it while it is still queued

The predict routes hand work here too, when the client sends `Prefer: respond-async` and its
wait runs out (see apps.checks.RequestPolicy): a slow fleet then answers 202 and a job, not 504.
"""

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError

from apps.checks import MODEL_VERSION_HEADER, api_key_owner, check_api_key, check_client
from apps.errors import (
    ERROR_RESPONSES,
    IDEMPOTENCY_CONFLICT,
    JOB_RESPONSES,
    RETRY_AFTER_S,
)
from config import Settings
from core.errors import (
    BackendUnavailable,
    IdempotencyConflict,
    InvalidTrip,
    JobConflict,
    UnknownJob,
)
from core.jobs.payload import encode_job_payload
from core.jobs.schemas import CallbackSecret, CallbackUrl, JobReply, JobState
from core.jobs.store import JobStore, idempotency_key
from core.jobs.webhooks import callback_refusal
from core.online.client import PredictionClient
from core.online.routing import version_queue
from core.online.sender import batch_columns
from core.trip.batch_request import parse_trip_batch
from core.trip.schemas import TripRequest

router = APIRouter(prefix="/v1/trip/jobs", tags=["jobs"])

_CALLBACK_URL: TypeAdapter[Any] = TypeAdapter(CallbackUrl)
_CALLBACK_SECRET: TypeAdapter[str] = TypeAdapter(CallbackSecret)
_MAX_IDEMPOTENCY_KEY = 255

_IDEMPOTENCY_HEADER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Send a request again under the same key (1-255 characters) and get the same "
    "job back, not a second one; the same key with another body answers 409.",
    "schema": {"type": "string", "minLength": 1, "maxLength": _MAX_IDEMPOTENCY_KEY},
}

_JOB_BODY = {
    "parameters": [_IDEMPOTENCY_HEADER, MODEL_VERSION_HEADER],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "anyOf": [
                        {"$ref": "#/components/schemas/JobTrip"},
                        {"$ref": "#/components/schemas/JobBatch"},
                    ]
                }
            }
        },
    },
}


def _job_store(request: Request) -> tuple[JobStore, str]:
    """Check the request's key; give the job store and the owner the key makes the caller."""
    check_api_key(request)
    store: JobStore = request.app.state.job_store
    predictor: PredictionClient = request.app.state.predictor
    if not predictor.available:
        raise BackendUnavailable("Redis is not reachable")
    return store, api_key_owner(request)


@dataclass(frozen=True, slots=True)
class _Callback:
    """Where a job's webhook goes, and the secret of its own that signs it (None: the global)."""

    url: str
    secret: str | None


def _parse_job(body: bytes, settings: Settings) -> tuple[dict[str, Any], int, _Callback | None]:
    """Read a job body, one trip or a batch: (task payload, trips, callback)."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidTrip(f"body: invalid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise InvalidTrip('body: expected a trip or {"trips": [...]}')
    callback = _parse_callback(document, settings)
    if "trips" in document:
        trips, refused = parse_trip_batch(body)
    else:
        try:
            trips, refused = [TripRequest.model_validate(document)], {}
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None
    payload = encode_job_payload(batch_columns(trips), [t.request_id for t in trips], refused)
    return payload, len(trips) + len(refused), callback


def _parse_callback(document: dict[str, Any], settings: Settings) -> _Callback | None:
    """Read a job's `callback_url` and `callback_secret`; a job that needs a secret of its own to
    be signed (no WEBHOOK_SECRET) gets a new one."""
    url, secret = document.get("callback_url"), document.get("callback_secret")
    if url is None:  # a secret without a callback signs nothing: it is not kept
        return None
    try:
        url = str(_CALLBACK_URL.validate_python(url))
    except ValidationError as exc:
        raise InvalidTrip(f"callback_url: {exc.errors()[0]['msg']}") from None
    refusal = callback_refusal(
        url, allow_private=settings.webhook_allow_private, ports=settings.webhook_port_set
    )
    if refusal is not None:
        raise InvalidTrip(f"callback_url: {refusal}")
    if secret is not None:
        try:
            secret = _CALLBACK_SECRET.validate_python(secret)
        except ValidationError as exc:
            raise InvalidTrip(f"callback_secret: {exc.errors()[0]['msg']}") from None
    elif not settings.webhook_secret.get_secret_value():
        secret = secrets.token_hex(32)
    return _Callback(url, secret)


def _idempotency(request: Request, owner: str) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not 0 < len(key) <= _MAX_IDEMPOTENCY_KEY:
        raise InvalidTrip(f"Idempotency-Key: must be 1 to {_MAX_IDEMPOTENCY_KEY} characters")
    # Keys are the client's: two clients (API keys) never share one.
    return idempotency_key(owner, key)


async def accept_job(
    request: Request, body: bytes, version: str | None, *, preference_applied: bool = False
) -> Response:
    """Queue the job `body` describes, answered by model `version` (None: current), and reply
    202 with its view and Location."""
    store, owner = _job_store(request)
    settings = request.app.state.settings
    payload, trips, callback = _parse_job(body, settings)
    idempotency = _idempotency(request, owner)
    body_sha = hashlib.sha256(f"{version or ''}\0".encode() + body).hexdigest()
    job_id, created_sha = await store.create(
        payload=payload,
        trips=trips,
        body_sha=body_sha,
        owner=owner,
        idempotency=idempotency,
        callback_url=callback.url if callback else None,
        callback_secret=callback.secret if callback else None,
        version=version,
        # A pinned job waits in its version's jobs queue, apart from the online one: a backlog
        # of jobs never counts toward QUEUE_MAX_DEPTH nor delays a micro-batch.
        job_queue=None if version is None else version_queue(settings.job_queue, version),
    )
    if created_sha != body_sha:
        raise IdempotencyConflict("Idempotency-Key: already used for a different request")
    view = await store.read(job_id, owner)
    if view is None:  # removed between the two calls: only with a result TTL of ~0
        raise UnknownJob(f"job {job_id}: not found")
    if callback is not None:
        # The client learns the job's own secret here, and only here; a retry under the same
        # Idempotency-Key gets the secret the job was made with, not a new one.
        view["callback"]["secret"] = await store.callback_secret(job_id)
    headers = {"Location": _status_url(job_id), "Retry-After": str(RETRY_AFTER_S)}
    if preference_applied:
        headers["Preference-Applied"] = "respond-async"
    return Response(_reply(view), 202, headers, media_type="application/json")


def _status_url(job_id: str) -> str:
    return f"{router.prefix}/{job_id}"


def _reply(view: dict[str, Any]) -> bytes:
    """Serve a job's view as its documented shape, JobReply (fields it lacks stay out)."""
    reply = JobReply.model_validate({**view, "status_url": _status_url(view["job_id"])})
    return reply.model_dump_json(exclude_unset=True).encode()


@router.post(
    "",
    status_code=202,
    response_model=JobReply,
    responses=ERROR_RESPONSES | IDEMPOTENCY_CONFLICT,
    openapi_extra=_JOB_BODY,
)
async def submit_job(request: Request) -> Response:
    """Queue one trip, or a batch of up to 10,000, to be predicted later; answers 202 at once.

    Read the job at its `Location` (or `status_url`) until its state is final: `succeeded`
    (with `result`: one reply per trip, in order, like `/v1/trip/predict/batch`), `failed`
    (with `error`), `expired` (no worker started it within JOB_QUEUE_TIMEOUT_S) or `canceled`.
    A job is kept JOB_RESULT_TTL_S after it ends, then answers 404. With `callback_url`, tripq
    also POSTs the job there when it ends, signed in `X-Tripq-Signature` (see docs/jobs.md). An
    accepted job survives a worker crash and, with Redis's append-only file, a Redis restart.
    `X-Model-Version` pins the version that answers; `Idempotency-Key` makes a retry safe.
    """
    version = check_client(request)
    return await accept_job(request, await request.body(), version)


@router.get(
    "/{job_id}",
    response_model=JobReply,
    responses=JOB_RESPONSES,
)
async def read_job(job_id: str, request: Request) -> Response:
    """Read a job: its state, timestamps, and its result once it succeeded."""
    store, owner = _job_store(request)
    view = await store.read(job_id, owner)
    if view is None:
        raise UnknownJob(f"job {job_id}: not found (unknown, or removed after it ended)")
    headers = {} if JobState(view["state"]).final else {"Retry-After": str(RETRY_AFTER_S)}
    return Response(_reply(view), headers=headers, media_type="application/json")


@router.delete(
    "/{job_id}",
    response_model=JobReply,
    responses=JOB_RESPONSES | {409: ERROR_RESPONSES[409]},
)
async def cancel_job(job_id: str, request: Request) -> Response:
    """Cancel a job that no worker has started; 409 once it runs or has ended otherwise."""
    store, owner = _job_store(request)
    state = await store.cancel(job_id, owner)
    if state is None:
        raise UnknownJob(f"job {job_id}: not found (unknown, or removed after it ended)")
    if state != JobState.CANCELED:
        raise JobConflict(f"job {job_id}: is {state}; only a queued job can be canceled")
    view = await store.read(job_id, owner)
    if view is None:
        raise UnknownJob(f"job {job_id}: not found")
    return Response(_reply(view), media_type="application/json")
