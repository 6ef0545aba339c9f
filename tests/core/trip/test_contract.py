"""The trip contract: one set of limits for the request models and the column check."""

import math
from collections.abc import Callable

import numpy as np
from pydantic import ValidationError

from core.trip.contract import MAX_TRIP_MILES, TRAIN_MAX_MILES, ZONE_MAX, ZONE_MIN, check_columns
from core.trip.schemas import TripColumns, TripRequest


def _request(pu: int, do: int, miles: float) -> TripRequest:
    return TripRequest(request_id="1", PULocationID=pu, DOLocationID=do, trip_distance=miles)


def _accepted(build: Callable[[], object]) -> bool:
    try:
        build()
    except ValidationError:
        return False
    return True


def test_request_models_and_column_check_accept_and_refuse_the_same_trips() -> None:
    trips = [
        (ZONE_MIN, ZONE_MAX, 0.0),
        (ZONE_MAX, ZONE_MIN, MAX_TRIP_MILES),
        (ZONE_MIN - 1, 1, 1.0),
        (1, ZONE_MAX + 1, 1.0),
        (1, 1, -0.1),
        (1, 1, MAX_TRIP_MILES + 0.1),
        (1, 1, math.inf),
    ]
    pu, do, miles = (np.array(column, dtype=np.float64) for column in zip(*trips, strict=True))
    valid, rejections = check_columns(pu, do, miles)

    for (p, d, m), ok in zip(trips, valid.tolist(), strict=True):
        assert _accepted(lambda: _request(p, d, m)) == ok  # noqa: B023 (called at once)
        columns = {"PULocationID": [p], "DOLocationID": [d], "trip_distance": [m]}
        assert _accepted(lambda: TripColumns.model_validate(columns)) == ok  # noqa: B023
    assert valid.tolist() == [True, True, False, False, False, False, False]
    assert rejections.rows.tolist() == [2, 3, 4, 5, 6]


def test_training_caps_distance_below_what_serving_accepts() -> None:
    assert TRAIN_MAX_MILES < MAX_TRIP_MILES
