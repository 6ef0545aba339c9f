"""tripq across test hosts: Redis, two API hosts and two worker hosts, each in its own network
namespace (tests.hosts.network), each running tripq's real processes.

    .venv/bin/pytest tests/hosts -q          # as root; elsewhere every test skips, saying why

Every scenario runs under a bounded load sent from this process to the API hosts' addresses only,
and prints what it measured in the "figures" section at the end of the run (FIGURES_FILE=path
keeps them: docs/failure-behaviour.md quotes such a run).
"""

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.infra.embedded_redis import EmbeddedRedis
from tests.hosts.network import Host, Network, prerequisite
from tests.support import (
    DEADLINE_S,
    Service,
    WorkerProcess,
    await_api,
    await_workers,
    tripq_env,
)

API_PORT = 8000
REDIS_PORT = 6379
# Heartbeats each second, forgotten after three missed: a host that is gone leaves /ready fast.
HEARTBEAT_S = 1.0
WORKER_TTL_S = 3.0


def host_env(redis_url: str, log_dir: Path, **settings: object) -> dict[str, str]:
    """The environment of the processes on the hosts: deadlines of DEADLINE_S (so abandoned
    tasks come back, after the visibility timeout, within a test) and quick heartbeats, unless
    `settings` say otherwise."""
    defaults: dict[str, object] = {
        "request_timeout_s": DEADLINE_S,
        "request_timeout_max_s": DEADLINE_S,
        "worker_heartbeat_s": HEARTBEAT_S,
        "worker_ttl_s": WORKER_TTL_S,
    }
    return tripq_env(redis_url, log_dir, **(defaults | settings))


@pytest.fixture(scope="session")
def hosts_allowed() -> None:
    """Skip, saying why, where test hosts cannot be made (not root, no iproute2)."""
    reason = prerequisite()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def network(hosts_allowed: None) -> Iterator[Network]:
    """A switch of this test's own, with this process plugged in as the clients' machine."""
    made = Network()
    try:
        yield made
    finally:
        made.close()


class Fleet:
    """What one test started on its hosts, stopped (SIGTERM, then SIGKILL) when it ends."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._children: list[Service] = []
        self._servers: list[EmbeddedRedis] = []

    def redis(self, host: Host, *options: str) -> EmbeddedRedis:
        """Start a Redis on `host` (append-only, fsync each second, as compose runs it)."""
        server = EmbeddedRedis(
            REDIS_PORT,
            self.log_dir / f"redis-{host.name}",
            host=host.address,
            options=["--appendfsync", "everysec", *options],
            wrap=host.prefix,
        )
        self._servers.append(server.start())
        return server

    def start(
        self, env: dict[str, str], apis: list[Host], workers: list[Host], concurrency: int = 8
    ) -> tuple[list[str], list[WorkerProcess]]:
        """Start one API process on each of `apis` and one worker on each of `workers`, all at
        once; return the APIs' base URLs and the workers, once every one answers."""
        started_apis = [self._start_api(host, env) for host in apis]
        started = self.workers(workers, env, concurrency=concurrency)
        for api, base in started_apis:
            await_api(api, base)
        return [base for _, base in started_apis], started

    def api(self, host: Host, env: dict[str, str]) -> str:
        """Start the API (one uvicorn process) on `host`; its base URL, once it answers."""
        api, base = self._start_api(host, env)
        await_api(api, base)
        return base

    def _start_api(self, host: Host, env: dict[str, str]) -> tuple[Service, str]:
        args = ["api", "--host", host.address, "--port", str(API_PORT), "--workers", "1"]
        api = Service(f"api-{host.name}", args, env, self.log_dir, host.prefix)
        self._children.append(api)
        return api, f"http://{host.address}:{API_PORT}"

    def workers(
        self, hosts: list[Host], env: dict[str, str], index: int = 1, concurrency: int = 8
    ) -> list[WorkerProcess]:
        """Start worker `trip<index>@<host>` on each of `hosts`; return them once they beat."""
        started = [
            WorkerProcess(index, env, self.log_dir, concurrency, node=h.name, wrap=h.prefix)
            for h in hosts
        ]
        self._children.extend(started)
        return await_workers(started, env)

    def stop(self) -> None:
        """Stop every process started, newest first."""
        for child in reversed(self._children):
            child.stop()
        for server in reversed(self._servers):
            server.stop()


@pytest.fixture
def fleet(network: Network, tmp_path: Path) -> Iterator[Fleet]:
    """Start tripq's processes on this test's hosts; all stopped when it ends."""
    started = Fleet(tmp_path)
    try:
        yield started
    finally:
        started.stop()
