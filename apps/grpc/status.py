"""tripq's errors as gRPC status codes, with the details HTTP gives them (apps.errors).

    InvalidTrip           INVALID_ARGUMENT      message names the field; google.rpc.BadRequest
    └── VersionNotServed  FAILED_PRECONDITION   x-model-version names a version no worker holds
    Unauthorized          UNAUTHENTICATED       x-api-key missing or not valid
    DeadlineExceeded      DEADLINE_EXCEEDED     no worker answered within the call's deadline
    Overloaded            RESOURCE_EXHAUSTED    retry hint: `retry-after` and google.rpc.RetryInfo
    BackendUnavailable    UNAVAILABLE           retry hint, as above
    ModelError            UNAVAILABLE           retry hint, as above
    PredictionFailed      INTERNAL
    TripqError            INTERNAL

Every refusal carries tripq's `reply-code` in its trailing metadata, and its rich details (a
google.rpc.Status) in `grpc-status-details-bin`, which grpcio-status's `rpc_status.from_call`
reads. The message is the one HTTP puts in its body: never a traceback.
"""

from collections.abc import Sequence
from typing import Any, NamedTuple, NoReturn

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from loguru import logger
from pydantic import ValidationError

from apps.errors import RETRY_AFTER_S
from core.errors import (
    BackendUnavailable,
    DeadlineExceeded,
    InvalidTrip,
    ModelError,
    Overloaded,
    PredictionFailed,
    TripqError,
    Unauthorized,
    VersionNotServed,
)

# Most specific first, as apps.errors.STATUS_OF.
CODE_OF: dict[type[TripqError], grpc.StatusCode] = {
    VersionNotServed: grpc.StatusCode.FAILED_PRECONDITION,
    InvalidTrip: grpc.StatusCode.INVALID_ARGUMENT,
    Unauthorized: grpc.StatusCode.UNAUTHENTICATED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    BackendUnavailable: grpc.StatusCode.UNAVAILABLE,
    ModelError: grpc.StatusCode.UNAVAILABLE,
    PredictionFailed: grpc.StatusCode.INTERNAL,
    TripqError: grpc.StatusCode.INTERNAL,
}
# Refusals that may pass by themselves, so a client should retry them after the hint.
RETRYABLE = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE})

RETRY_AFTER_KEY = "retry-after"
REPLY_CODE_KEY = "reply-code"
DETAILS_KEY = "grpc-status-details-bin"  # grpcio-status's GRPC_DETAILS_METADATA_KEY

Metadata = tuple[tuple[str, str | bytes], ...]


class InvalidFields(InvalidTrip):
    """A trip that failed validation, with each offending field and why."""

    def __init__(self, violations: Sequence[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{field}: {why}" for field, why in violations) or "trip")
        self.violations = list(violations)


def invalid_fields(exc: ValidationError) -> InvalidFields:
    """Name each field a trip failed on, as HTTP's 400 does."""
    return InvalidFields(
        [(".".join(str(p) for p in error["loc"]) or "trip", error["msg"]) for error in exc.errors()]
    )


class Refusal(NamedTuple):
    """How a call fails: its status code, its message and its trailing metadata."""

    code: grpc.StatusCode
    message: str
    trailing_metadata: Metadata


def refusal(exc: TripqError) -> Refusal:
    """Map a domain error to the status a call fails with, and the details that go with it."""
    code = next(c for cls, c in CODE_OF.items() if isinstance(exc, cls))
    status = status_pb2.Status(code=code.value[0], message=exc.message)
    metadata: list[tuple[str, str | bytes]] = [(REPLY_CODE_KEY, str(int(exc.reply_code)))]
    if code in RETRYABLE:
        metadata.append((RETRY_AFTER_KEY, str(RETRY_AFTER_S)))
        status.details.add().Pack(
            error_details_pb2.RetryInfo(retry_delay=Duration(seconds=RETRY_AFTER_S))
        )
    if isinstance(exc, InvalidFields):
        violations = [
            error_details_pb2.BadRequest.FieldViolation(field=field, description=why)
            for field, why in exc.violations
        ]
        status.details.add().Pack(error_details_pb2.BadRequest(field_violations=violations))
    metadata.append((DETAILS_KEY, status.SerializeToString()))
    return Refusal(code, exc.message, tuple(metadata))


async def abort(context: "grpc.aio.ServicerContext[Any, Any]", exc: TripqError) -> NoReturn:
    """Fail the call with the status that `exc` maps to."""
    code, message, metadata = refusal(exc)
    await context.abort(code, message, metadata)


async def abort_unexpected(
    context: "grpc.aio.ServicerContext[Any, Any]", exc: Exception, method: str
) -> NoReturn:
    """Log an error no handler expected, and fail the call with INTERNAL and no more said, as
    HTTP's 500 does (grpcio would send the exception's text)."""
    logger.opt(exception=exc).error("unhandled error", method=method)
    await abort(context, TripqError("internal error"))
