"""The optional pickup time, end to end: the real API, a real worker, a real Redis."""

from typing import Any

import httpx
import pytest

from config import PROJECT_ROOT
from core.model.artifact import TripModel, load_model
from core.model.registry import resolve_model_dir
from core.trip.schemas import TripRequest
from tests.support import wait_until

TRIP: dict[str, Any] = {
    "request_id": "t1",
    "PULocationID": 74,
    "DOLocationID": 75,
    "trip_distance": 1.2,
}
RUSH_HOUR = "2021-02-05T08:30:00"  # a Friday, New York time
SAME_MOMENT_UTC = "2021-02-05T13:30:00Z"  # the same instant (EST is UTC-5)
SAME_MOMENT_OFFSET = "2021-02-05T10:30:00-03:00"
SUNDAY_NIGHT = "2021-02-07T23:30:00"


@pytest.fixture(scope="module")
def model() -> TripModel:
    """The default model, in the test process, to compare with the service's answers."""
    return load_model(resolve_model_dir(PROJECT_ROOT / "repo" / "models", None))


def predict(platform: str, trip: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{platform}/v1/trip/predict", json=trip, timeout=10)


def test_a_trip_without_pickup_time_gets_the_same_reply_shape_and_a_three_field_answer(
    platform: str, model: TripModel
) -> None:
    reply = predict(platform, TRIP)

    assert reply.status_code == 200
    body = reply.json()
    assert set(body) == {"reply_code", "request_id", "duration", "model_version", "timings"}
    expected = model.predict_columns([74], [75], [1.2])[0]
    assert body["duration"] == pytest.approx(expected, rel=1e-9)


def test_a_pickup_time_changes_the_answer_to_the_models_timed_one(
    platform: str, model: TripModel
) -> None:
    rush = predict(platform, {**TRIP, "pickup_datetime": RUSH_HOUR}).json()["duration"]
    night = predict(platform, {**TRIP, "pickup_datetime": SUNDAY_NIGHT}).json()["duration"]
    untimed = predict(platform, TRIP).json()["duration"]

    expected = model.predict_trips(
        [TripRequest.model_validate({**TRIP, "pickup_datetime": RUSH_HOUR})]
    )[0]
    assert rush == pytest.approx(expected, rel=1e-9)
    assert rush > night  # a Friday morning crawls, a Sunday night flows
    assert len({rush, night, untimed}) == 3


@pytest.mark.parametrize("moment", [SAME_MOMENT_UTC, SAME_MOMENT_OFFSET])
def test_a_time_with_an_offset_is_read_as_the_same_new_york_moment(
    platform: str, moment: str
) -> None:
    local = predict(platform, {**TRIP, "pickup_datetime": RUSH_HOUR}).json()["duration"]
    offset = predict(platform, {**TRIP, "pickup_datetime": moment}).json()["duration"]

    assert offset == local


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("yesterday", "pickup_datetime"),
        ("2021-02-30T08:00:00", "pickup_datetime"),
        ("2008-12-31T23:59:59", "2009"),
        ("2101-01-01T00:00:00", "2100"),
        (1612513800, "ISO 8601"),
        (True, "ISO 8601"),
    ],
)
def test_a_bad_pickup_time_answers_400_naming_the_field(
    platform: str, value: object, says: str
) -> None:
    reply = predict(platform, {**TRIP, "pickup_datetime": value})

    assert reply.status_code == 400
    body = reply.json()
    assert body["reply_code"] == 1
    assert [e["field"] for e in body["errors"]] == ["pickup_datetime"]
    assert says in body["message"]


def test_a_batch_mixes_trips_with_and_without_pickup_times(platform: str, model: TripModel) -> None:
    trips = [
        {**TRIP, "request_id": "a", "pickup_datetime": RUSH_HOUR},
        {**TRIP, "request_id": "b"},
        {**TRIP, "request_id": "c", "pickup_datetime": "2021-13-01T00:00:00"},
        {**TRIP, "request_id": "d", "pickup_datetime": SAME_MOMENT_UTC},
    ]

    reply = httpx.post(f"{platform}/v1/trip/predict/batch", json={"trips": trips}, timeout=10)

    assert reply.status_code == 200
    replies = reply.json()["replies"]
    assert [r["reply_code"] for r in replies] == [0, 0, 1, 0]
    assert "pickup_datetime" in replies[2]["message"]
    valid = [TripRequest.model_validate(t) for t in (trips[0], trips[1], trips[3])]
    expected = model.predict_trips(valid)
    answered = [replies[0]["duration"], replies[1]["duration"], replies[3]["duration"]]
    assert answered == pytest.approx(expected, rel=1e-9)


def test_a_job_carries_its_trips_pickup_times(platform: str, model: TripModel) -> None:
    timed = {**TRIP, "pickup_datetime": RUSH_HOUR}

    accepted = httpx.post(f"{platform}/v1/trip/jobs", json={"trips": [timed, TRIP]}, timeout=10)
    assert accepted.status_code == 202
    status_url = platform + accepted.headers["location"]

    def finished() -> dict[str, Any] | None:
        job: dict[str, Any] = httpx.get(status_url, timeout=10).json()
        return job if job["state"] == "succeeded" else None

    wait_until(lambda: finished() is not None, 30, "the job to succeed")
    job = finished()
    assert job is not None
    durations = [r["duration"] for r in job["result"]["replies"]]
    expected = model.predict_trips([TripRequest.model_validate(t) for t in (timed, TRIP)])
    assert durations == pytest.approx(expected, rel=1e-9)


def test_the_docs_describe_the_pickup_time(platform: str) -> None:
    schema = httpx.get(f"{platform}/openapi.json", timeout=10).json()

    field = schema["components"]["schemas"]["TripRequest"]["properties"]["pickup_datetime"]
    assert "New York" in field["description"]
    assert "pickup_datetime" not in schema["components"]["schemas"]["TripRequest"]["required"]
