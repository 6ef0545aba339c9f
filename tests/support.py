"""Helpers that run real tripq processes for the tests: workers, the API, bounded waits."""

import asyncio
import contextlib
import http.server
import itertools
import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis
import uvloop

from bench.loadgen import post_head, read_reply
from config import Settings, child_environment
from core.infra.embedded_redis import EmbeddedRedis, redis_server_binary
from core.infra.launch import Child, tripq_argv, worker_argv
from core.infra.redis_clients import is_sentinel, sync_client

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "nyc-tlc"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


# REQUEST_TIMEOUT_S and REQUEST_TIMEOUT_MAX_S of the tests that kill or stop things: short, so that
# deadlines pass and abandoned tasks come back (after the visibility timeout) within a test.
DEADLINE_S = 2.0


def short_deadline_env(redis_url: str, log_dir: Path) -> dict[str, str]:
    """The environment of processes whose deadlines, all of them, are DEADLINE_S."""
    return tripq_env(
        redis_url, log_dir, request_timeout_s=DEADLINE_S, request_timeout_max_s=DEADLINE_S
    )


def free_port() -> int:
    """Ask the kernel for a free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(condition: Callable[[], object], timeout_s: float, what: str) -> None:
    """Poll `condition` until it is truthy; fail the test with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")


class Service(Child):
    """A `tripq` subcommand run as a child process, its output kept in a log file.

    `wrap`: a command to run it under (a test host's `ip netns exec ...`).
    """

    def __init__(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        log_dir: Path,
        wrap: Sequence[str] = (),
    ) -> None:
        super().__init__(name, [*wrap, *tripq_argv(*args)], env, log_dir, STOP_TIMEOUT_S)

    def finish(self, timeout_s: float) -> int:
        """Wait for the process to exit by itself; return its exit code."""
        try:
            self.process.wait(timeout_s)
        finally:
            self.stop()
        return self.process.returncode


def tripq_env(redis_url: str, log_dir: Path, **settings: object) -> dict[str, str]:
    """Build a child's environment: this Redis, logs under `log_dir`, and any setting overrides."""
    env = child_environment(REDIS_URL=redis_url, LOG_DIR=str(log_dir), PYTHONUNBUFFERED="1")
    # Workers serve no metrics port unless a test asks: many run on this one host at once.
    env.setdefault("WORKER_METRICS_PORT", "0")
    # Tests read the fleet from /ready; tests of what it hides by default turn this off.
    env.setdefault("STATUS_DETAIL", "true")
    env.update({name.upper(): str(value) for name, value in settings.items()})
    return env


def start_worker(
    env: dict[str, str], log_dir: Path, concurrency: int = 8, tls: dict[str, Any] | None = None
) -> Service:
    """Start one worker process and wait until its heartbeat says it holds a model.

    `tls`: the options of a client of a rediss:// REDIS_URL, to read the heartbeat with.
    """
    worker = Service(
        f"worker-{time.monotonic_ns()}",
        ["worker", "--processes", "1", "--concurrency", str(concurrency)],
        env,
        log_dir,
    )
    client = _redis_of(env, tls)
    try:

        def holds_model() -> bool:
            if not worker.alive():
                pytest.fail(f"worker exited at start:\n{worker.log_tail()}")
            return any(b'"model_version": "' in v for v in client.hvals("tripq:workers:info"))

        wait_until(holds_model, START_TIMEOUT_S, "a worker to load its model")
    finally:
        client.close()
    return worker


def _redis_of(env: dict[str, str], tls: dict[str, Any] | None) -> redis.Redis:
    """A client of the Redis a child's environment names (a sentinel:// URL too)."""
    url = env["REDIS_URL"]
    if is_sentinel(url):
        master = env.get("REDIS_SENTINEL_MASTER", "mymaster")
        return sync_client(Settings(redis_url=url, redis_sentinel_master=master), url)
    return redis.Redis.from_url(url, **(tls or {}))


def start_api(env: dict[str, str], log_dir: Path) -> tuple[Service, str]:
    """Start the API (gunicorn, one uvicorn worker) on a free port; return it and its base URL."""
    return start_api_processes(env, log_dir, 1)


@contextlib.contextmanager
def running_platform(env: dict[str, str], log_dir: Path) -> Iterator[str]:
    """Run one worker and the API with `env`; yield the API's base URL, and stop both."""
    worker = start_worker(env, log_dir)
    api: Service | None = None
    try:
        api, base = start_api(env, log_dir)
        yield base
    finally:
        if api is not None:
            api.stop()
        worker.stop()


class WorkerProcess(Service):
    """One Celery worker process, run with the command line `tripq worker` gives its child `index`.

    `tripq worker --processes N` supervises its children and stops them all when one exits, and
    `--processes 1` names every worker `trip1@<host>`. A test that kills one of several workers
    runs them as containers do: each process on its own, each with a name of its own, named
    after its machine (`node`; this one's by default), run under `wrap` (a test host's).
    """

    def __init__(
        self,
        index: int,
        env: dict[str, str],
        log_dir: Path,
        concurrency: int,
        *,
        node: str | None = None,
        wrap: Sequence[str] = (),
    ) -> None:
        settings = Settings.model_validate({"log_level": env.get("LOG_LEVEL", "INFO")})
        node = node or socket.gethostname()
        self.hostname = f"trip{index}@{node}"
        self.started_at = time.time()
        name = f"worker-trip{index}-{node}-{time.monotonic_ns()}"
        argv = [*wrap, *worker_argv(settings, index, concurrency, node)]
        Child.__init__(self, name, argv, env, log_dir, STOP_TIMEOUT_S)


def heartbeat_since(client: redis.Redis, hostname: str, since: float) -> bool:
    """Tell whether worker `hostname` has beaten since `since` (epoch s) and holds a model."""
    seen = client.zscore("tripq:workers", hostname)
    info = client.hget("tripq:workers:info", hostname)
    return seen is not None and seen >= since and info is not None and b'"model_version": "' in info


def start_workers(
    env: dict[str, str], log_dir: Path, indices: list[int], concurrency: int = 8
) -> list[WorkerProcess]:
    """Start one worker process per index at once; wait until each holds a model and beats."""
    workers = [WorkerProcess(index, env, log_dir, concurrency) for index in indices]
    return await_workers(workers, env)


def await_workers(workers: list[WorkerProcess], env: dict[str, str]) -> list[WorkerProcess]:
    """Wait until each of `workers`, started with `env`, holds a model and beats (stop them all
    if one cannot)."""
    names = [w.hostname for w in workers]
    client = _redis_of(env, None)
    try:

        def all_ready() -> bool:
            for worker in workers:
                if not worker.alive():
                    pytest.fail(f"worker exited at start:\n{worker.log_tail()}")
            return all(heartbeat_since(client, w.hostname, w.started_at) for w in workers)

        wait_until(all_ready, START_TIMEOUT_S, f"workers {names} to load their model")
    except BaseException:
        for worker in workers:
            worker.stop()
        raise
    finally:
        client.close()
    return workers


def start_api_processes(
    env: dict[str, str],
    log_dir: Path,
    processes: int,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    wrap: Sequence[str] = (),
) -> tuple[Service, str]:
    """Start the API under gunicorn with `processes` uvicorn workers, listening on `host` (a free
    port unless `port`), run under `wrap`; return it, once it answers, and its base URL."""
    port = port or free_port()
    api = Service(
        f"api-{host}-{port}",
        ["api", "--host", host, "--port", str(port), "--workers", str(processes)],
        env,
        log_dir,
        wrap,
    )
    base = f"http://{host}:{port}"
    try:
        await_api(api, base)
    except BaseException:
        api.stop()
        raise
    return api, base


def await_api(api: Service, base: str) -> None:
    """Wait until the API at `base` answers /health (fail the test if it exits first)."""

    def answers() -> bool:
        if not api.alive():
            pytest.fail(f"API exited at start:\n{api.log_tail()}")
        try:
            return httpx.get(f"{base}/health", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(answers, START_TIMEOUT_S, "the API to answer /health")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one request of a load got, and when."""

    trip: dict[str, Any]
    sent_at: float  # time.monotonic() when it was sent
    latency_s: float
    status: int | None  # None: no HTTP reply at all (the connection failed)
    body: dict[str, Any] | None
    retry_after: str | None
    error: str | None  # the transport error's class, when status is None

    @property
    def kind(self) -> str:
        """Classify the reply: ok, timeout, unavailable, overloaded; others describe themselves."""
        code = self.body.get("reply_code") if self.body else None
        if self.status == 200 and code == 0:
            return "ok"
        if self.status == 504 and code == 2:
            return "timeout"
        if self.status == 503 and code == 5 and self.retry_after:
            return "unavailable"
        if self.status == 429 and code == 4 and self.retry_after:
            return "overloaded"
        if self.status is None:
            return f"connection error ({self.error})"
        return f"HTTP {self.status} {self.body}"


class Load:
    """POST trips to /v1/trip/predict from `concurrency` clients on a thread of their own.

    Each client keeps one keep-alive connection, as real clients do (a new one after a failure or
    a `Connection: close`), and the clients take the trips in turn, each pausing `pause_s` after
    its reply, until every trip is sent, or forever when `repeat`, until `stop()`. Every outcome is
    kept, in the order the replies came. The clients speak HTTP/1.1 on bare asyncio streams (the
    benchmark's): a general-purpose client costs more CPU per request than the service under test.
    """

    def __init__(
        self,
        base: str,
        trips: list[dict[str, Any]],
        *,
        concurrency: int,
        timeout_s: float,
        pause_s: float = 0.0,
        repeat: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.outcomes: list[Outcome] = []
        parts = urlsplit(base)
        self._address = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._netloc = parts.netloc
        self._trips = itertools.cycle(trips) if repeat else iter(trips)
        self._concurrency = concurrency
        self._timeout_s = timeout_s
        self._pause_s = pause_s
        self._headers = headers or {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: uvloop.run(self._run()), daemon=True)

    def __enter__(self) -> "Load":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._thread.join(self._timeout_s + STOP_TIMEOUT_S)

    def stop(self) -> None:
        """Send no more requests; those in flight still get their outcome."""
        self._stop.set()

    def wait(self, timeout_s: float) -> list[Outcome]:
        """Wait until every trip is answered (fail the test after `timeout_s`); the outcomes."""
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            pytest.fail(f"the load did not finish within {timeout_s:g} s")
        return self.outcomes

    def sent_since(self, since: float) -> list[Outcome]:
        """The outcomes of the requests sent at or after `since` (time.monotonic())."""
        return [o for o in self.outcomes if o.sent_at >= since]

    async def _run(self) -> None:
        await asyncio.gather(*(self._client() for _ in range(self._concurrency)))

    async def _client(self) -> None:
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while not self._stop.is_set():
                trip = next(self._trips, None)
                if trip is None:
                    return
                outcome, connection = await self._send(connection, trip)
                self.outcomes.append(outcome)
                if self._pause_s:
                    await asyncio.sleep(self._pause_s)
        finally:
            if connection is not None:
                connection[1].close()

    async def _send(
        self,
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None,
        trip: dict[str, Any],
    ) -> tuple[Outcome, tuple[asyncio.StreamReader, asyncio.StreamWriter] | None]:
        """Send one trip; its outcome, and the connection to send the next one on (if any)."""
        payload = json.dumps(trip).encode()
        request = post_head("/v1/trip/predict", self._netloc, len(payload), self._headers)
        sent_at = time.monotonic()
        try:
            async with asyncio.timeout(self._timeout_s):
                if connection is None:
                    connection = await asyncio.open_connection(*self._address)
                reader, writer = connection
                writer.write(request + payload)
                await writer.drain()
                reply = await read_reply(reader)
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
            if connection is not None:
                connection[1].close()
            latency = time.monotonic() - sent_at
            return Outcome(trip, sent_at, latency, None, None, None, type(exc).__name__), None
        latency = time.monotonic() - sent_at
        try:
            body = json.loads(reply.body)
        except ValueError:
            body = None
        retry_after = reply.headers.get(b"retry-after")
        outcome = Outcome(
            trip,
            sent_at,
            latency,
            reply.status,
            body,
            retry_after.decode() if retry_after is not None else None,
            None,
        )
        if not reply.keep_alive:
            connection[1].close()
            connection = None
        return outcome, connection


def varied_trips(count: int, prefix: str = "r") -> list[dict[str, Any]]:
    """Trips whose zones and distances all differ, each with its own request id."""
    return [
        {
            "request_id": f"{prefix}{i}",
            "PULocationID": 1 + (i * 7) % 265,
            "DOLocationID": 1 + (i * 13) % 265,
            "trip_distance": round(0.3 + (i % 5000) * 0.01, 2),
        }
        for i in range(count)
    ]


def latency_summary(outcomes: list[Outcome]) -> str:
    """Describe the latencies of `outcomes`: p50, p99 and max, in milliseconds."""
    if not outcomes:
        return "no requests"
    ordered = sorted(o.latency_s for o in outcomes)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return f"p50 {at(0.5):.1f} ms, p99 {at(0.99):.1f} ms, max {ordered[-1] * 1000:.1f} ms"


class SentinelProcess:
    """A real Redis Sentinel (the embedded redis-server binary in sentinel mode) watching
    `master` as `name`, on `host` (run under `wrap`, a test host's), one of `quorum`.

    It calls the master down after a second without an answer, as a production Sentinel does
    after its `down-after-milliseconds`; the default, 30 s, would make a test wait.
    """

    def __init__(
        self,
        port: int,
        name: str,
        master: EmbeddedRedis,
        folder: Path,
        *,
        host: str = "127.0.0.1",
        quorum: int = 1,
        wrap: Sequence[str] = (),
    ) -> None:
        self.port = port
        self.host = host
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "sentinel.conf"
        config.write_text(
            f"port {port}\nbind {host}\ndir {folder}\n"
            f"sentinel monitor {name} {master.host} {master.port} {quorum}\n"
            f"sentinel down-after-milliseconds {name} 1000\n"
            f"sentinel failover-timeout {name} 10000\n"
        )
        with (folder / "sentinel.log").open("ab") as log:
            self.process = subprocess.Popen(
                [*wrap, redis_server_binary(), str(config), "--sentinel"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def url(self) -> str:
        """Its address as one part of a sentinel:// REDIS_URL."""
        return f"sentinel://{self.host}:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class Receiver(http.server.ThreadingHTTPServer):
    """A webhook receiver that fails the first `failures` deliveries (HTTP 500)."""

    def __init__(self, failures: int) -> None:
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)
        self.failures = failures
        self.deliveries: list[tuple[dict[str, str], bytes]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class _ReceiverHandler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.server.deliveries.append((dict(self.headers), body))
        failed = len(self.server.deliveries) <= self.server.failures
        self.send_response(500 if failed else 204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass
