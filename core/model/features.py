"""Trip features for the gradient-boosted model: cleaning and zone statistics, learned in training.

    PULocationID, DOLocationID, trip_distance   (as the files or the API give them: int, str, float)
    [pickup time]                               (New York wall-clock seconds; NaN: absent)
      ─ clean ─> zone ids 1..265 (0: unknown), miles in [0, 100] (NaN: unusable; the limits
                 are core.trip.contract's ZONE_MIN..ZONE_MAX and TRAIN_MAX_MILES)
      ─ zone statistics ─> per pickup zone, drop-off zone and zone pair: the mean duration and the
                           mean pace (minutes per mile), each shrunk towards the overall mean by
                           how few trips it rests on
      ─ boroughs ─> the borough of each zone, from the TLC's zone lookup
      ─ pickup time ─> hour of day (fractional), day of week (Monday 0), US federal holiday (0/1);
                       NaN in all three when the trip has no pickup time
      ─> 13 columns (16 with `pickup_time=True`) for the boosted trees (core.model.trees)

The cleaning lives in the fitted transformer, so training and serving cannot clean differently.
The statistics of a training trip come from the other folds of the training set (cross-fitting):
otherwise each trip would see its own duration in its zone pair's mean, and the model would learn
to trust those means more than they deserve on trips it has never seen.
"""

from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from sklearn.base import BaseEstimator, TransformerMixin

from core.trip.contract import TRAIN_MAX_MILES, ZONE_MAX, ZONE_MIN

ZONES = ZONE_MAX  # TLC taxi zones are numbered 1..265 (core.trip.contract)
# Longer distances are odometer glitches; they are capped, not trusted (core.trip.contract says
# why this is below the 200 miles a request may carry).
MAX_MILES = TRAIN_MAX_MILES
MIN_PACE_MILES = 0.5  # pace (minutes per mile) divides by at least this, so short trips stay sane
MAX_PACE = 60.0

COLUMNS = (
    "trip_distance",
    "same_zone",
    "pu_minutes",
    "do_minutes",
    "pair_minutes",
    "pu_pace",
    "do_pace",
    "pair_pace",
    "pair_estimate",
    "PULocationID",
    "DOLocationID",
    "pu_borough",
    "do_borough",
)

TIME_COLUMNS = ("pickup_hour", "pickup_weekday", "pickup_holiday")

_DAY_S = 86_400
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday; Monday is 0
_HOLIDAY_YEARS = ("2009-01-01", "2100-12-31")  # the pickup times the API accepts

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]


def clean_trips(trips: ArrayLike) -> tuple[Ints, Ints, Floats]:
    """Return zone ids (0 where unknown or outside 1..265) and miles (NaN where unusable)."""
    array = np.asarray(trips)
    if array.dtype == object:  # files: zone ids as text or numbers, gaps as None
        frame = pd.DataFrame(array[:, :3])
        columns = [pd.to_numeric(frame[c], errors="coerce").to_numpy(np.float64) for c in range(3)]
    else:  # numbers already, so no pandas on the way (~0.2 ms a call)
        columns = [array[:, c].astype(np.float64) for c in range(3)]
    return clean_columns(*columns)


def clean_columns(pu: Floats, do: Floats, miles: Floats) -> tuple[Ints, Ints, Floats]:
    """Clean trips given as float columns (NaN: missing), as `clean_trips` does its rows."""
    miles = np.where(np.isfinite(miles) & (miles >= 0), np.minimum(miles, MAX_MILES), np.nan)
    return _zone(pu), _zone(do), miles


def pickup_seconds(trips: ArrayLike) -> Floats:
    """Return each trip's pickup time (4th column), NaN where absent or unusable."""
    array = np.asarray(trips)
    if array.ndim != 2 or array.shape[1] < 4:
        return np.full(len(array), np.nan)
    if array.dtype == object:
        seconds: Floats = pd.to_numeric(pd.Series(array[:, 3]), errors="coerce").to_numpy(
            np.float64
        )
        return seconds
    return array[:, 3].astype(np.float64)


def _zone(numbers: Floats) -> Ints:
    with np.errstate(invalid="ignore"):
        known = (
            np.isfinite(numbers) & (numbers >= ZONE_MIN) & (numbers <= ZONES) & (numbers % 1 == 0)
        )
    return np.where(known, numbers, 0).astype(np.int64)


def us_holidays() -> Ints:
    """Number the days (since 1970) of US federal holidays over the years the API accepts."""
    from pandas.tseries.holiday import USFederalHolidayCalendar

    days = USFederalHolidayCalendar().holidays(*_HOLIDAY_YEARS).values.astype("datetime64[D]")
    holidays: Ints = days.astype(np.int64)
    return holidays


def time_features(seconds: Floats, holidays: Ints) -> Floats:
    """Hour of day, day of week and holiday of New York wall-clock times; NaN rows stay NaN."""
    day = np.floor(seconds / _DAY_S)
    hour = (seconds - day * _DAY_S) / 3600
    weekday = (day + _EPOCH_WEEKDAY) % 7
    known = np.isfinite(day)
    days = np.where(known, day, 0).astype(np.int64)
    # `holidays` is sorted: a binary search is ~30x cheaper than np.isin for a few trips.
    found = np.minimum(np.searchsorted(holidays, days), max(len(holidays) - 1, 0))
    is_holiday = (holidays[found] == days) if len(holidays) else np.zeros(len(days), bool)
    return np.column_stack([hour, weekday, np.where(known, is_holiday, np.nan)])


def zone_boroughs(lookup: "pd.DataFrame") -> tuple[int, ...]:
    """Code each zone id 0..265 by its borough in the TLC zone lookup (0: unknown zone)."""
    names = sorted(set(lookup["Borough"].astype(str)))
    codes = [0] * (ZONES + 1)
    for zone, borough in zip(lookup["LocationID"], lookup["Borough"].astype(str), strict=True):
        if 1 <= int(zone) <= ZONES:
            codes[int(zone)] = 1 + names.index(borough)
    return tuple(codes)


class _Means:
    """Shrunk means of one target by pickup zone, drop-off zone and zone pair."""

    def __init__(self, pu: Ints, do: Ints, target: Floats, smoothing: float) -> None:
        usable = np.isfinite(target)
        pu, do, target = pu[usable], do[usable], target[usable]
        self.prior = float(target.mean()) if len(target) else 0.0
        size = ZONES + 1
        self.pu = self._shrunk(pu, target, size, smoothing)
        self.do = self._shrunk(do, target, size, smoothing)
        self.pair = self._shrunk(pu * size + do, target, size * size, smoothing)

    def _shrunk(self, keys: Ints, target: Floats, size: int, smoothing: float) -> Floats:
        sums = np.bincount(keys, weights=target, minlength=size)
        counts = np.bincount(keys, minlength=size)
        means: Floats = (sums + smoothing * self.prior) / (counts + smoothing)
        means[0] = self.prior  # unknown zones know nothing
        return means

    def lookup(self, pu: Ints, do: Ints) -> tuple[Floats, Floats, Floats]:
        pair = self.pair.reshape(ZONES + 1, ZONES + 1)[pu, do]
        pair = np.where((pu == 0) | (do == 0), self.prior, pair)
        return self.pu[pu], self.do[do], pair


class TripFeatures(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Turn raw trip columns into the gradient-boosted model's features (see the module doc)."""

    def __init__(
        self,
        boroughs: tuple[int, ...] = (),
        smoothing: float = 1.0,
        folds: int = 5,
        random_state: int = 0,
        pickup_time: bool = False,
    ) -> None:
        self.boroughs = boroughs  # a code per zone id 0..265 (see zone_boroughs); () for none
        self.pickup_time = pickup_time  # add TIME_COLUMNS, read from a 4th input column
        self.smoothing = smoothing
        self.folds = folds
        self.random_state = random_state

    def fit(self, trips: ArrayLike, minutes: ArrayLike) -> "TripFeatures":
        """Learn the zone statistics of all training trips."""
        pu, do, miles = clean_trips(trips)
        self.minutes_, self.pace_ = self._means(pu, do, miles, np.asarray(minutes, np.float64))
        codes = np.asarray(self.boroughs or (0,) * (ZONES + 1), dtype=np.float64)
        if codes.shape != (ZONES + 1,):
            raise ValueError(f"boroughs needs one code per zone id 0..{ZONES}")
        self.borough_codes_ = codes
        self.holidays_ = us_holidays() if self.pickup_time else np.zeros(0, np.int64)
        self.n_features_in_ = 4 if self.pickup_time else 3
        return self

    def fit_transform(self, trips: ArrayLike, minutes: ArrayLike | None = None, **_: Any) -> Floats:
        """Fit, and give each training trip the statistics of the folds it is not in."""
        if minutes is None:
            raise ValueError("TripFeatures learns from durations: pass them as y")
        target = np.asarray(minutes, dtype=np.float64)
        self.fit(trips, target)
        pu, do, miles = clean_trips(trips)
        fold = np.random.default_rng(self.random_state).integers(0, self.folds, len(target))
        out = np.empty((len(target), len(COLUMNS) - 2))
        for k in range(self.folds):
            held = fold == k
            minutes_k, pace_k = self._means(pu[~held], do[~held], miles[~held], target[~held])
            out[held] = self._features(pu[held], do[held], miles[held], minutes_k, pace_k)
        return self._finish(out, pu, do, self._pickup_seconds(trips))

    def transform(self, trips: ArrayLike) -> Floats:
        """Give trips the statistics learned from all training trips."""
        pu, do, miles = clean_trips(trips)
        features = self._features(pu, do, miles, self.minutes_, self.pace_)
        return self._finish(features, pu, do, self._pickup_seconds(trips))

    def transform_columns(
        self, pu: Floats, do: Floats, miles: Floats, seconds: Floats | None
    ) -> Floats:
        """`transform` for trips given as float columns (`seconds`: pickup times, NaN: none).

        The serving path: the columns a worker receives, with no row matrix laid out between.
        """
        zones_pu, zones_do, distance = clean_columns(pu, do, miles)
        features = self._features(zones_pu, zones_do, distance, self.minutes_, self.pace_)
        if seconds is None and self.pickup_time:
            seconds = np.full(len(distance), np.nan)
        return self._finish(features, zones_pu, zones_do, seconds)

    def get_feature_names_out(self, input_features: Any = None) -> NDArray[np.str_]:
        """Name the output columns."""
        return np.asarray(COLUMNS + TIME_COLUMNS if self.pickup_time else COLUMNS)

    def _pickup_seconds(self, trips: ArrayLike) -> Floats | None:
        return pickup_seconds(trips) if self.pickup_time else None

    def _finish(self, features: Floats, pu: Ints, do: Ints, seconds: Floats | None) -> Floats:
        """Add the boroughs, and the time columns when the model reads pickup times."""
        columns = [features, self.borough_codes_[pu], self.borough_codes_[do]]
        if self.pickup_time and seconds is not None:
            columns.append(time_features(seconds, self.holidays_))
        return np.column_stack(columns)

    def _means(self, pu: Ints, do: Ints, miles: Floats, minutes: Floats) -> tuple[_Means, _Means]:
        pace = np.clip(minutes / np.maximum(miles, MIN_PACE_MILES), 0, MAX_PACE)
        return _Means(pu, do, minutes, self.smoothing), _Means(pu, do, pace, self.smoothing)

    @staticmethod
    def _features(pu: Ints, do: Ints, miles: Floats, minutes: _Means, pace: _Means) -> Floats:
        pu_min, do_min, pair_min = minutes.lookup(pu, do)
        pu_pace, do_pace, pair_pace = pace.lookup(pu, do)
        estimate = np.maximum(miles, MIN_PACE_MILES) * pair_pace
        same = ((pu == do) & (pu > 0)).astype(np.float64)
        return np.column_stack(
            [miles, same, pu_min, do_min, pair_min, pu_pace, do_pace, pair_pace, estimate, pu, do]
        )
