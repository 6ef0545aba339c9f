"""Reading a batch body: every trip answered on its own, the envelope checked as a whole."""

import orjson
import pytest

from core.errors import InvalidTrip, ReplyCode
from core.trip.batch_request import parse_trip_batch
from core.trip.schemas import MAX_BATCH_TRIPS

TRIP = {"request_id": "a", "PULocationID": 130, "DOLocationID": 250, "trip_distance": 3.0}


def test_a_valid_batch_parses_to_its_trips_in_order() -> None:
    body = orjson.dumps({"trips": [TRIP, {**TRIP, "request_id": 2}]})

    trips, refused = parse_trip_batch(body)

    assert [t.request_id for t in trips] == ["a", "2"]
    assert refused == {}


def test_an_invalid_trip_is_refused_alone_naming_its_field() -> None:
    body = orjson.dumps({"trips": [TRIP, {**TRIP, "request_id": "b", "DOLocationID": 999}, TRIP]})

    trips, refused = parse_trip_batch(body)

    assert len(trips) == 2
    assert set(refused) == {1}
    assert refused[1].reply_code == ReplyCode.INVALID_REQUEST
    assert refused[1].request_id == "b"
    assert refused[1].message is not None
    assert "DOLocationID" in refused[1].message


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b"{not json", "body"),
        (orjson.dumps({"rides": [TRIP]}), "trips"),
        (orjson.dumps({"trips": "many"}), "trips"),
        (orjson.dumps({"trips": []}), "trips"),
        (orjson.dumps({"trips": [TRIP] * (MAX_BATCH_TRIPS + 1)}), "trips"),
    ],
)
def test_a_body_that_is_not_a_batch_is_refused_naming_the_problem(body: bytes, named: str) -> None:
    with pytest.raises(InvalidTrip, match=named):
        parse_trip_batch(body)
