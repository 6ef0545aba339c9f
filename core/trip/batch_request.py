"""Reading a batch request: the envelope must be right, each trip may be wrong on its own."""

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError

from core.errors import InvalidTrip, ReplyCode
from core.trip.schemas import MAX_BATCH_TRIPS, BatchRequest, TripOutcome, TripRequest

_TRIPS = TypeAdapter(list[Any])


def parse_trip_batch(body: bytes) -> tuple[list[TripRequest], dict[int, TripOutcome]]:
    """Split a batch body into its valid trips and a reply for each invalid one, by position.

    A body that is not a batch at all (bad JSON, no `trips` list, too few or too many trips)
    raises InvalidTrip naming the problem.
    """
    try:
        # The common case, all trips valid, is parsed and validated in one pass.
        return BatchRequest.model_validate_json(body).trips, {}
    except ValidationError:
        pass
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidTrip(f"body: invalid JSON ({exc})") from None
    if not isinstance(document, dict) or "trips" not in document:
        raise InvalidTrip("trips: Field required")
    try:
        items = _TRIPS.validate_python(document["trips"])
    except ValidationError:
        raise InvalidTrip("trips: Input should be a valid list") from None
    if not 1 <= len(items) <= MAX_BATCH_TRIPS:
        raise InvalidTrip(f"trips: must hold 1 to {MAX_BATCH_TRIPS} trips, got {len(items)}")
    valid: list[TripRequest] = []
    refused: dict[int, TripOutcome] = {}
    for position, item in enumerate(items):
        try:
            valid.append(TripRequest.model_validate(item))
        except ValidationError as exc:
            refused[position] = TripOutcome(
                reply_code=ReplyCode.INVALID_REQUEST,
                request_id=_request_id_of(item),
                message=_describe(exc),
            )
    return valid, refused


def _request_id_of(item: object) -> str | None:
    if isinstance(item, dict):
        request_id = item.get("request_id")
        if isinstance(request_id, str | int) and not isinstance(request_id, bool):
            return str(request_id)[:128]
    return None


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "trip"
        parts.append(f"{field}: {error['msg']}")
    return "; ".join(parts)


def merge_replies(
    request_ids: Sequence[str],
    durations: Sequence[float],
    refused: Mapping[int, dict[str, Any]],
) -> list[dict[str, Any]]:
    """Lay out a batch's replies in the order of its trips: a duration for each valid trip (ids
    and durations in order), the refusal of each invalid one at its position."""
    answered = iter(zip(request_ids, durations, strict=True))
    replies: list[dict[str, Any]] = []
    for position in range(len(request_ids) + len(refused)):
        outcome = refused.get(position)
        if outcome is not None:
            replies.append(outcome)
        else:
            request_id, duration = next(answered)
            replies.append({"reply_code": 0, "request_id": request_id, "duration": duration})
    return replies
