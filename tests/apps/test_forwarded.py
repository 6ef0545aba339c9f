"""Behind a proxy the API logs the client's address, from X-Forwarded-For sent by the proxy only."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import Service, start_api, tripq_env, wait_until

PROXY, STRANGER = "127.0.0.1", "127.0.0.2"  # where requests come from
CLIENT = "198.51.100.23"  # the address a proxy says its client has


@pytest.fixture(scope="module")
def api(redis_url: str, log_dir: Path) -> Iterator[tuple[Service, str]]:
    """An API with access logs, believing forwarded headers from PROXY alone."""
    env = tripq_env(redis_url, log_dir, api_access_log=True, forwarded_allow_ips=PROXY)
    service, base = start_api(env, log_dir)
    yield service, base
    service.stop()


def get_from(source: str, base: str, path: str, forwarded_for: str) -> None:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=5) as client:
        reply = client.get(f"{base}{path}", headers={"X-Forwarded-For": forwarded_for})
    assert reply.status_code == 200


def access_line(api: Service, path: str) -> str:
    """Wait for the access log line of `path`; give it."""
    wait_until(lambda: path in api.log_tail(100_000), 10, f"the access line of {path}")
    (line,) = [line for line in api.log_tail(100_000).splitlines() if path in line]
    return line


def test_the_proxys_client_is_logged_not_the_proxy(api: tuple[Service, str]) -> None:
    service, base = api
    get_from(PROXY, base, "/health?via=proxy", CLIENT)

    line = access_line(service, "/health?via=proxy")
    assert CLIENT in line
    assert f"{PROXY}:" not in line


def test_a_forwarded_header_from_anyone_else_is_not_believed(api: tuple[Service, str]) -> None:
    service, base = api
    get_from(STRANGER, base, "/health?via=stranger", CLIENT)

    line = access_line(service, "/health?via=stranger")
    assert STRANGER in line
    assert CLIENT not in line
