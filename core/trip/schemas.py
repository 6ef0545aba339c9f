"""The trip's shapes on its way, and the replies.

TripRequest (in) -> TripColumns (task) -> BatchPrediction (task result) -> TripReply (out)
"""

from datetime import datetime
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    WithJsonSchema,
    model_validator,
)

from core.errors import ReplyCode
from core.trip.contract import FIRST_YEAR, LAST_YEAR, MAX_TRIP_MILES, ZONE_MAX, ZONE_MIN
from core.trip.pickup import check_year, new_york_time

EXAMPLE_TRIP: dict[str, JsonValue] = {
    "request_id": "99999",
    "PULocationID": 130,
    "DOLocationID": 250,
    "trip_distance": 3.0,
}


MAX_INTEGER_ID = 10**18 - 1


def _integer_id_as_text(value: object) -> object:
    # The older service accepted integer ids; they are echoed back as strings. JSON Schema counts
    # 7.0 as an integer too.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_INTEGER_ID:
        return str(value)
    return value


def _not_a_boolean(value: object) -> object:
    # JSON true/false would otherwise pass as 1/0.
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    return value


RequestId = Annotated[
    str,
    BeforeValidator(_integer_id_as_text),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "minLength": 1, "maxLength": 128},
                {"type": "integer", "minimum": -MAX_INTEGER_ID, "maximum": MAX_INTEGER_ID},
            ]
        }
    ),
]
Zone = Annotated[int, BeforeValidator(_not_a_boolean)]
Miles = Annotated[float, BeforeValidator(_not_a_boolean)]


def _iso_text(value: object) -> object:
    # pydantic would read a number as seconds since 1970 in UTC; the contract is ISO 8601 text.
    if not isinstance(value, str | datetime):
        raise ValueError("must be an ISO 8601 date and time, e.g. 2021-02-05T08:30:00")
    return value


# The year is checked as written, before any offset moves the time to New York's clock, so the
# schema's pattern says exactly what is accepted.
PickupTime = Annotated[
    datetime,
    BeforeValidator(_iso_text),
    AfterValidator(check_year),
    AfterValidator(new_york_time),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "pattern": r"^(2009|20[1-9][0-9]|2100)-",
            "examples": ["2021-02-05T08:30:00"],
        }
    ),
]


class TripRequest(BaseModel):
    """One trip to predict, in the contract of the older service."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_TRIP]})

    request_id: RequestId = Field(
        min_length=1,
        max_length=128,
        description="The caller's id for this request, echoed in the reply; integers are accepted.",
    )
    PULocationID: Zone = Field(ge=ZONE_MIN, le=ZONE_MAX, description="TLC pickup zone id.")
    DOLocationID: Zone = Field(ge=ZONE_MIN, le=ZONE_MAX, description="TLC drop-off zone id.")
    trip_distance: Miles = Field(
        ge=0.0,
        le=MAX_TRIP_MILES,
        allow_inf_nan=False,
        description="Trip distance in miles, as the taxi meter reports it.",
    )
    pickup_datetime: PickupTime | None = Field(
        default=None,
        description="When the trip starts, ISO 8601 (optional). With an offset it is converted to "
        "New York time; without one it is New York local time, as in TLC records. Years "
        f"{FIRST_YEAR}-{LAST_YEAR}. It sharpens the estimate; without it the model answers "
        "from the three other fields.",
    )


class TripPrediction(BaseModel):
    """What a worker returns for one trip."""

    request_id: str
    duration: float = Field(description="Predicted trip duration in minutes.")
    model_version: str
    inference_ms: float = Field(description="Time the worker spent in the model.")
    queue_ms: float = Field(description="Time from the API's send to the worker's start.")


class TripColumns(BaseModel):
    """Trips laid out as columns: what a batch task carries to a worker."""

    PULocationID: list[Annotated[int, Field(ge=ZONE_MIN, le=ZONE_MAX)]]
    DOLocationID: list[Annotated[int, Field(ge=ZONE_MIN, le=ZONE_MAX)]]
    trip_distance: list[Annotated[float, Field(ge=0.0, le=MAX_TRIP_MILES, allow_inf_nan=False)]]
    # The names are the contract's columns (core.trip.contract). Each trip's pickup time as New York
    # wall-clock seconds (core.trip.pickup), None where it has none; absent when no trip has one.
    pickup_wall_clock_s: list[Annotated[float, Field(allow_inf_nan=False)] | None] | None = None

    @model_validator(mode="after")
    def _same_lengths(self) -> "TripColumns":
        if not len(self.PULocationID) == len(self.DOLocationID) == len(self.trip_distance):
            raise ValueError("columns must have the same length")
        if self.pickup_wall_clock_s is not None and len(self.pickup_wall_clock_s) != len(
            self.trip_distance
        ):
            raise ValueError("columns must have the same length")
        return self


class BatchPrediction(BaseModel):
    """What a worker returns for a batch task: one duration per trip, in order."""

    durations: list[float]
    model_version: str
    inference_ms: float = Field(description="Time the worker spent in the model, for the batch.")
    queue_ms: float = Field(description="Time from the API's send to the worker's start.")


class Timings(BaseModel):
    """Where the time of one request went, in milliseconds."""

    total_ms: float = Field(description="From the request's arrival to its reply, in the API.")
    queue_ms: float = Field(description="From the API's send to a worker's start (clock of both).")
    inference_ms: float = Field(description="Inside the model, in the worker.")


class TripReply(BaseModel):
    """A successful prediction."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "reply_code": 0,
                    "request_id": "99999",
                    "duration": 14.64,
                    "model_version": "gbm-2021-01-v2",
                    "timings": {"total_ms": 2.1, "queue_ms": 0.4, "inference_ms": 0.3},
                }
            ]
        }
    )

    reply_code: ReplyCode = Field(default=ReplyCode.OK, description="0 on success.")
    request_id: str
    duration: float = Field(description="Predicted trip duration in minutes.")
    model_version: str = Field(description="Version of the model that answered.")
    timings: Timings


MAX_BATCH_TRIPS = 10_000


class BatchRequest(BaseModel):
    """Many trips in one request; each gets its own reply, in the same order."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"trips": [EXAMPLE_TRIP]}]})

    trips: list[TripRequest] = Field(min_length=1, max_length=MAX_BATCH_TRIPS)


class TripOutcome(BaseModel):
    """The reply to one trip of a batch: a duration, or why there is none."""

    reply_code: ReplyCode
    request_id: str | None = None
    duration: float | None = Field(
        default=None, description="Minutes; present when reply_code is 0."
    )
    message: str | None = Field(default=None, description="Why there is no duration.")


class BatchReply(BaseModel):
    """The replies to a batch, in the order of its trips."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "reply_code": 0,
                    "model_version": "gbm-2021-01-v2",
                    "replies": [{"reply_code": 0, "request_id": "99999", "duration": 14.64}],
                    "timings": {"total_ms": 3.1, "queue_ms": 0.5, "inference_ms": 0.4},
                }
            ]
        }
    )

    reply_code: ReplyCode = Field(
        description="0 when the batch was answered (see each reply's own code)."
    )
    model_version: str
    replies: list[TripOutcome]
    timings: Timings


class FieldError(BaseModel):
    """One reason a body failed validation."""

    field: str = Field(description="Dotted path of the offending field, e.g. `PULocationID`.")
    message: str


class ErrorReply(BaseModel):
    """Any reply that is not a prediction; `reply_code` says which failure it is."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "reply_code": 1,
                    "request_id": "99999",
                    "message": "PULocationID: Input should be less than or equal to 265",
                    "errors": [
                        {
                            "field": "PULocationID",
                            "message": "Input should be less than or equal to 265",
                        }
                    ],
                }
            ]
        }
    )

    reply_code: ReplyCode
    request_id: str | None = Field(default=None, description="Echoed when the body carried one.")
    message: str = Field(description="What went wrong, for a person; never a traceback.")
    errors: list[FieldError] | None = Field(default=None, description="Validation failures only.")
