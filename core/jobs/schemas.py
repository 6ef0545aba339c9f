"""The shapes of async jobs (`POST /v1/trip/jobs`): what clients send, where a job stands."""

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from core.trip.schemas import EXAMPLE_TRIP, BatchRequest, TripColumns, TripOutcome, TripRequest

CallbackUrl = Annotated[
    HttpUrl,
    Field(description="Where tripq POSTs the job, signed, once it ends (see `X-Tripq-Signature`)."),
]

CallbackSecret = Annotated[
    str,
    Field(
        min_length=16,
        max_length=256,
        description="The secret this job's webhooks are signed with (HMAC-SHA256), for a "
        "receiver of its own; by default WEBHOOK_SECRET, or one made for the job.",
    ),
]


class JobTrip(TripRequest):
    """One trip to predict later, in the contract of `/v1/trip/predict`."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_TRIP]})

    callback_url: CallbackUrl | None = None
    callback_secret: CallbackSecret | None = None


class JobBatch(BatchRequest):
    """Many trips to predict later, in the contract of `/v1/trip/predict/batch`."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"trips": [EXAMPLE_TRIP], "callback_url": "https://example.com/hook"}]
        }
    )

    callback_url: CallbackUrl | None = None
    callback_secret: CallbackSecret | None = None


class JobPayload(BaseModel):
    """What a job carries from the API to its worker: the trips to predict, and those refused.

    Stored as JSON in the job's hash (`payload`, core.jobs.store); the pinned model version and
    the callback URL are fields of that hash beside it. Field names are the wire format: jobs
    queued by an older API must still decode.
    """

    columns: TripColumns = Field(description="The valid trips, as a batch task's columns.")
    request_ids: list[str] = Field(description="Each valid trip's request id, in order.")
    refused: dict[int, TripOutcome] = Field(
        default_factory=dict, description="The refusal of each invalid trip, by its position."
    )


class JobState(StrEnum):
    """Where a job is; succeeded, failed, expired and canceled are final."""

    QUEUED = "queued"  # accepted and waiting for a worker
    RUNNING = "running"  # a worker is predicting it
    SUCCEEDED = "succeeded"  # answered: the result is kept until `kept_until`
    FAILED = "failed"  # a worker could not answer it (see `error`)
    EXPIRED = "expired"  # no worker started it within JOB_QUEUE_TIMEOUT_S
    CANCELED = "canceled"  # its client canceled it while it was queued

    @property
    def final(self) -> bool:
        """Tell whether the job has ended: its state changes no more."""
        return self in _FINAL_STATES


_FINAL_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.EXPIRED, JobState.CANCELED}
)


class JobResult(BaseModel):
    """A succeeded job's answers: one reply per trip, in the order they were sent."""

    model_version: str
    replies: list[TripOutcome]


class CallbackStatus(BaseModel):
    """Where a job's webhook stands."""

    url: str
    state: Literal["waiting", "pending", "delivered", "failed"] = Field(
        description="waiting: the job has not ended; pending: being delivered or retried."
    )
    attempts: int
    error: str | None = Field(default=None, description="Why the last attempt failed.")
    secret: str | None = Field(
        default=None,
        description="In the 202 reply only: the secret of the job's own that signs its webhooks "
        "(the `callback_secret` sent, or one made for the job when WEBHOOK_SECRET is not set).",
    )


class JobReply(BaseModel):
    """An async job: where it is, and its result once it has one."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "job_id": "5f0c3b9e2d8a4c41a8f3e1d2c7b6a590",
                    "state": "succeeded",
                    "status_url": "/v1/trip/jobs/5f0c3b9e2d8a4c41a8f3e1d2c7b6a590",
                    "trips": 1,
                    "created_at": "2026-12-01T17:00:00.000+00:00",
                    "started_at": "2026-12-01T17:00:00.004+00:00",
                    "finished_at": "2026-12-01T17:00:00.006+00:00",
                    "kept_until": "2026-12-02T17:00:00.006+00:00",
                    "result": {
                        "model_version": "gbm-2021-01-v2",
                        "replies": [{"reply_code": 0, "request_id": "99999", "duration": 14.64}],
                    },
                }
            ]
        }
    )

    job_id: str
    state: JobState
    status_url: str = Field(description="Where to read this job again (also `Location`).")
    trips: int = Field(description="Trips the job holds, refused ones included.")
    created_at: str | None
    started_at: str | None = None
    finished_at: str | None = None
    expires_at: str | None = Field(
        default=None, description="Until it ends: when it expires unless a worker starts it."
    )
    kept_until: str | None = Field(
        default=None, description="Once it ended: when it is removed (then 404)."
    )
    result: JobResult | None = Field(default=None, description="Once it succeeded.")
    error: str | None = Field(default=None, description="Why it failed.")
    callback: CallbackStatus | None = None
