"""One handler per domain error: status code, reply code and a short message; never a traceback."""

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from loguru import logger
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from core.errors import (
    BackendUnavailable,
    DeadlineExceeded,
    IdempotencyConflict,
    InvalidTrip,
    JobConflict,
    ModelError,
    Overloaded,
    PredictionFailed,
    ReplyCode,
    TripqError,
    Unauthorized,
    UnknownJob,
    VersionNotServed,
)
from core.jobs.schemas import JobReply
from core.trip.schemas import ErrorReply, FieldError

RETRY_AFTER_S = 1

# Most specific first: a handler is looked up by the exception's class hierarchy.
STATUS_OF: dict[type[TripqError], int] = {
    VersionNotServed: 409,
    UnknownJob: 404,
    JobConflict: 409,
    IdempotencyConflict: 409,
    InvalidTrip: 400,
    Unauthorized: 401,
    DeadlineExceeded: 504,
    Overloaded: 429,
    BackendUnavailable: 503,
    ModelError: 503,
    PredictionFailed: 500,
    TripqError: 500,
}

# The error replies each predict endpoint documents in /docs.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorReply, "description": "The body failed validation (reply_code 1)."},
    401: {
        "model": ErrorReply,
        "description": "API keys are configured and X-API-Key holds none of them (reply_code 6).",
    },
    409: {
        "model": ErrorReply,
        "description": "X-Model-Version names a version no live worker holds (reply_code 1).",
    },
    413: {
        "model": ErrorReply,
        "description": "The body is larger than MAX_BODY_BYTES (reply_code 1).",
    },
    415: {"model": ErrorReply, "description": "The body is not JSON (reply_code 1)."},
    429: {
        "model": ErrorReply,
        "description": "Overloaded; retry after Retry-After (reply_code 4).",
    },
    500: {"model": ErrorReply, "description": "tripq failed while answering (reply_code 3)."},
    503: {
        "model": ErrorReply,
        "description": "Redis or the model is unavailable; retry after Retry-After (reply_code 5).",
    },
    504: {"model": ErrorReply, "description": "No worker answered in time (reply_code 2)."},
}


def error_response(status: int, reply_code: ReplyCode, message: str, **fields: Any) -> JSONResponse:
    """Build an error reply; refusals that may pass carry Retry-After."""
    body = ErrorReply(reply_code=reply_code, message=message, **fields)
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status in (429, 503) else {}
    if status == 401:
        headers["WWW-Authenticate"] = 'ApiKey header="X-API-Key"'
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Map every error the app can raise to its documented reply."""
    app.add_exception_handler(RequestValidationError, _invalid_request)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    for error_class in STATUS_OF:
        app.add_exception_handler(error_class, _domain_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [_field_error(error) for error in exc.errors()]
    message = "; ".join(f"{e.field}: {e.message}" for e in errors) or "invalid request"
    return error_response(400, ReplyCode.INVALID_REQUEST, message, errors=errors)


def _field_error(error: Any) -> FieldError:
    # FastAPI prefixes body fields with "body"; clients know fields by their own names.
    location = [str(part) for part in error.get("loc", ()) if part != "body"]
    return FieldError(field=".".join(location) or "body", message=str(error.get("msg", "")))


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Answer HTTP-level refusals (404, 405, 413, 415 ...) in tripq's error shape."""
    code = ReplyCode.INVALID_REQUEST if exc.status_code < 500 else ReplyCode.SERVER_ERROR
    response = error_response(exc.status_code, code, str(exc.detail))
    response.headers.update(exc.headers or {})
    if exc.status_code == 405:
        # Starlette names the methods of the first route on the path only; a path served by
        # several routes (GET and DELETE of a job) allows all of theirs.
        response.headers["Allow"] = ", ".join(sorted(_methods_on_path(request)))
    return response


def _methods_on_path(request: Request) -> set[str]:
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return methods


async def _domain_error(request: Request, exc: TripqError) -> JSONResponse:
    status = next(s for cls, s in STATUS_OF.items() if isinstance(exc, cls))
    request_id = getattr(request.state, "request_id", None)
    return error_response(status, exc.reply_code, exc.message, request_id=request_id)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error", path=request.url.path)
    return error_response(500, ReplyCode.SERVER_ERROR, "internal error")


# What a predict route answers instead of waiting, to a client that sends Prefer: respond-async.
ASYNC_RESPONSE: dict[int | str, dict[str, Any]] = {
    202: {
        "model": JobReply,
        "description": "Prefer: respond-async, and no answer within the wait: the trips are now "
        "an async job; read it at `Location`.",
    }
}

# The error replies of the routes that read or cancel a job.
# What POST /v1/trip/jobs says of 409, beside the predict routes' reason.
IDEMPOTENCY_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {
        "model": ErrorReply,
        "description": "X-Model-Version names a version no live worker holds, or "
        "Idempotency-Key was used already for another body (reply_code 1).",
    }
}

JOB_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: ERROR_RESPONSES[401],
    404: {"model": ErrorReply, "description": "No such job is kept (reply_code 1)."},
    503: ERROR_RESPONSES[503],
}
