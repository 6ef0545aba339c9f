"""The headers a predict request is served under: its timeout and its Prefer, read once."""

import math

import pytest
from starlette.datastructures import Headers

from apps.checks import async_preference, request_timeout
from config import Settings
from core.errors import InvalidTrip

SETTINGS = Settings(request_timeout_s=2.0, request_timeout_max_s=10.0)


@pytest.mark.parametrize(
    ("sent", "seconds"), [(None, 2.0), ("0.5", 0.5), ("60", 10.0)], ids=["default", "asked", "cap"]
)
def test_the_timeout_is_the_clients_capped_by_config_else_the_default(
    sent: str | None, seconds: float
) -> None:
    headers = Headers({} if sent is None else {"X-Request-Timeout": sent})

    assert request_timeout(headers, SETTINGS) == seconds


@pytest.mark.parametrize(
    ("prefer", "wait_s"),
    [(None, None), ("respond-async", math.inf), ("respond-async, wait=0", 0.0), ("wait=3", None)],
)
def test_prefer_respond_async_says_how_long_a_client_waits_before_a_job(
    prefer: str | None, wait_s: float | None
) -> None:
    headers = Headers({} if prefer is None else {"Prefer": prefer})

    assert async_preference(headers) == wait_s


def test_a_prefer_wait_that_is_not_a_number_is_refused_naming_it() -> None:
    with pytest.raises(InvalidTrip, match="Prefer: wait"):
        async_preference(Headers({"Prefer": "respond-async, wait=soon"}))
