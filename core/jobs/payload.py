"""Encode a job's payload on the API side, decode it on the worker side (`JobPayload`)."""

from collections.abc import Mapping, Sequence
from typing import Any

from core.jobs.schemas import JobPayload
from core.trip.schemas import TripOutcome


def encode_job_payload(
    columns: Mapping[str, Any], request_ids: Sequence[str], refused: Mapping[int, TripOutcome]
) -> dict[str, Any]:
    """Lay out a job's payload as JobStore.create stores it (JSON-ready, refusals by position)."""
    return {
        "columns": dict(columns),
        "request_ids": list(request_ids),
        "refused": {str(p): o.model_dump(exclude_none=True) for p, o in refused.items()},
    }


def decode_job_payload(payload: Mapping[str, Any]) -> JobPayload:
    """Read a claimed job's payload (raises pydantic's ValidationError when malformed)."""
    return JobPayload.model_validate(payload)


def refused_replies(payload: JobPayload) -> dict[int, dict[str, Any]]:
    """Give each refused trip's reply as the job's result carries it."""
    return {p: o.model_dump(mode="json", exclude_none=True) for p, o in payload.refused.items()}
