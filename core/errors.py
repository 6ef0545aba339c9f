"""Domain errors, each carrying the reply code a client sees.

    TripqError                     reply_code 3  server error
    ├── InvalidTrip                reply_code 1  the request breaks the contract
    │   ├── VersionNotServed       reply_code 1  it pins a model version no live worker holds
    │   ├── UnknownJob             reply_code 1  no such job (never was, or no longer kept)
    │   ├── JobConflict            reply_code 1  the job is past the state the request needs
    │   └── IdempotencyConflict    reply_code 1  an Idempotency-Key reused for another body
    ├── DeadlineExceeded           reply_code 2  no answer within the request's deadline
    ├── Overloaded                 reply_code 4  tripq refuses new work for now
    ├── BackendUnavailable         reply_code 5  Redis does not answer
    ├── Unauthorized               reply_code 6  no valid API key
    ├── PredictionFailed           reply_code 3  the worker raised while predicting
    └── ModelError                 reply_code 5  no usable model
        └── InvalidArtifact                      an artifact failed its hash or schema check

Domain code raises these; apps/ maps each to an HTTP status, and nothing else.
"""

from enum import IntEnum


class ReplyCode(IntEnum):
    """The `reply_code` of every reply; the HTTP status agrees with it."""

    OK = 0  # a prediction is in the reply
    INVALID_REQUEST = 1  # the body failed validation; the message names the field
    TIMEOUT = 2  # no worker answered within the deadline
    SERVER_ERROR = 3  # tripq failed while answering
    OVERLOADED = 4  # too much queued work; retry after the Retry-After header
    UNAVAILABLE = 5  # Redis or the model is unavailable; retry after the Retry-After header
    UNAUTHORIZED = 6  # the predict endpoints require an API key and none valid was sent


class TripqError(Exception):
    """Base of every error tripq raises on purpose."""

    reply_code = ReplyCode.SERVER_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidTrip(TripqError):
    """A trip that breaks the request contract."""

    reply_code = ReplyCode.INVALID_REQUEST


class VersionNotServed(InvalidTrip):
    """A request pinned to a model version that no live worker holds."""


class UnknownJob(InvalidTrip):
    """A job id that names no job kept in Redis."""


class JobConflict(InvalidTrip):
    """A request about a job in a state that does not allow it (cancel a running job)."""


class IdempotencyConflict(InvalidTrip):
    """An Idempotency-Key already used with a different request body."""


class DeadlineExceeded(TripqError):
    """No answer arrived before the request's deadline."""

    reply_code = ReplyCode.TIMEOUT


class Overloaded(TripqError):
    """tripq refuses new work until the queue drains."""

    reply_code = ReplyCode.OVERLOADED


class BackendUnavailable(TripqError):
    """Redis (broker or result backend) did not answer in time."""

    reply_code = ReplyCode.UNAVAILABLE


class Unauthorized(TripqError):
    """The request carries no valid API key."""

    reply_code = ReplyCode.UNAUTHORIZED


class PredictionFailed(TripqError):
    """A worker raised while computing a prediction."""

    reply_code = ReplyCode.SERVER_ERROR


class ModelError(TripqError):
    """No usable model: missing, unreadable or refused."""

    reply_code = ReplyCode.UNAVAILABLE


class InvalidArtifact(ModelError):
    """A model artifact failed its integrity or schema check."""
