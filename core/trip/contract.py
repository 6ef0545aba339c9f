"""The trip contract: the columns a trip is made of, their limits, and one check of them.

    PULocationID          TLC pickup zone id     whole number in ZONE_MIN..ZONE_MAX (1..265)
    DOLocationID          TLC drop-off zone id   whole number in ZONE_MIN..ZONE_MAX
    trip_distance         miles, as metered      finite, 0..MAX_TRIP_MILES (200)
    pickup_wall_clock_s   pickup time            New York wall-clock seconds (core.trip.pickup),
                                                 a year in FIRST_YEAR..LAST_YEAR; optional

The request models (core.trip.schemas) take their field limits from here, the offline scorer
checks a file's columns with `check_columns`, and the model's features (core.model.features)
clean with the same zone range.

Two distance limits, on purpose: serving refuses a trip beyond MAX_TRIP_MILES (200: far beyond
any metered NYC trip, so larger values are data errors the caller should hear about), while the
features cap distances at TRAIN_MAX_MILES (100) in training and serving alike: TLC files hold a
few odometer glitches between the two, and a capped distance keeps them from stretching the
pace statistics. A trip of 150 miles is accepted and read as 100.
"""

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from core.trip.pickup import FIRST_YEAR as FIRST_YEAR
from core.trip.pickup import LAST_YEAR as LAST_YEAR

PICKUP_ZONE = "PULocationID"
DROPOFF_ZONE = "DOLocationID"
DISTANCE = "trip_distance"
PICKUP_TIME = "pickup_wall_clock_s"  # New York wall-clock seconds, as core.trip.pickup counts them

ZONE_COLUMNS = (PICKUP_ZONE, DROPOFF_ZONE)
TRIP_COLUMNS = (PICKUP_ZONE, DROPOFF_ZONE, DISTANCE)  # what every model reads

ZONE_MIN, ZONE_MAX = 1, 265  # TLC taxi zone ids, as in taxi_zone_lookup.csv
MAX_TRIP_MILES = 200.0  # the most a request may carry (see the module doc)
TRAIN_MAX_MILES = 100.0  # where the features cap distance (see the module doc)

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Rejections:
    """The rows that break the contract: their positions and, for each, why."""

    rows: Ints
    reasons: list[str]


def check_columns(
    pickup: Floats,
    dropoff: Floats,
    distance: Floats,
    pickup_time: tuple[str, Floats] | None = None,
) -> tuple[Mask, Rejections]:
    """Check trips given as float columns (NaN: missing); return the valid rows, and why not.

    `pickup_time`: the pickup column's name and its wall-clock seconds, inf where a value is no
    time in FIRST_YEAR..LAST_YEAR (NaN: absent, which is allowed).
    """
    problems: list[tuple[Mask, str]] = []
    with np.errstate(invalid="ignore"):
        for name, zones in zip(ZONE_COLUMNS, (pickup, dropoff), strict=True):
            missing = np.isnan(zones)
            fractional = ~missing & np.isfinite(zones) & (zones != np.floor(zones))
            outside = ~missing & ~fractional & ((zones < ZONE_MIN) | (zones > ZONE_MAX))
            problems += [
                (missing, f"{name} is missing or not a number"),
                (fractional, f"{name} is not a whole number"),
                (outside, f"{name} is outside {ZONE_MIN}..{ZONE_MAX}"),
            ]
        missing = np.isnan(distance)
        infinite = np.isinf(distance)
        outside = np.isfinite(distance) & ((distance < 0.0) | (distance > MAX_TRIP_MILES))
        problems += [
            (missing, f"{DISTANCE} is missing or not a number"),
            (infinite, f"{DISTANCE} is not finite"),
            (outside, f"{DISTANCE} is outside 0..{MAX_TRIP_MILES:g} miles"),
        ]
        if pickup_time is not None:
            name, seconds = pickup_time
            problems.append(
                (np.isinf(seconds), f"{name} is not a date and time in {FIRST_YEAR}-{LAST_YEAR}")
            )
    # One bit per problem: the reasons are joined once per combination, not once per row.
    codes = np.zeros(len(distance), dtype=np.int64)
    for bit, (mask, _) in enumerate(problems):
        codes |= mask.astype(np.int64) << bit
    valid = codes == 0
    rows = np.flatnonzero(~valid)
    combos, which = np.unique(codes[rows], return_inverse=True)
    texts = [
        "; ".join(text for bit, (_, text) in enumerate(problems) if int(combo) >> bit & 1)
        for combo in combos
    ]
    reasons = [texts[i] for i in which.tolist()]
    return valid, Rejections(rows=rows.astype(np.int64), reasons=reasons)
