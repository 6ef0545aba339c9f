"""Pickup times: what clients send, what the model reads.

    "2021-02-05T08:30:00"         no offset: New York local time, as TLC records are
    "2021-02-05T13:30:00Z"        an offset: converted to New York time (here 08:30, EST)
      ─> 1612513800.0             New York wall-clock seconds since 1970-01-01 00:00 (naive)

The model learns hour of day and day of week, which are properties of the local wall clock, so
it reads the wall clock itself, as a number that JSON carries and numpy computes with.
"""

from datetime import datetime
from zoneinfo import ZoneInfo

NEW_YORK = ZoneInfo("America/New_York")
FIRST_YEAR, LAST_YEAR = 2009, 2100  # TLC records begin in 2009
_EPOCH = datetime(1970, 1, 1)  # the naive origin of wall-clock seconds


def new_york_time(moment: datetime) -> datetime:
    """Return `moment` as naive New York wall-clock time (naive input already is)."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(NEW_YORK).replace(tzinfo=None)


def check_year(moment: datetime) -> datetime:
    """Return `moment` if its year is within 2009-2100, else raise ValueError."""
    if not FIRST_YEAR <= moment.year <= LAST_YEAR:
        raise ValueError(f"must be between {FIRST_YEAR} and {LAST_YEAR}, got year {moment.year}")
    return moment


def wall_clock_seconds(local: datetime) -> float:
    """Return naive New York time as seconds since 1970-01-01 00:00 on the same wall clock."""
    return (local.replace(tzinfo=None) - _EPOCH).total_seconds()
