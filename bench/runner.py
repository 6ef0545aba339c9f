"""`tripq bench`: every system side by side on this machine, each with one API process.

    for each deployment (noop, inprocess, inprocess-compiled, naive, tripq, tripq-baseline,
    tripq-prefork; tripq serves tripq, tripq-batch and tripq-grpc with the default model (its
    `tripq grpc` beside its API, the REST and gRPC doors side by side), tripq-baseline serves the
    linear baseline, tripq-prefork is tripq's API with a prefork worker):
        start a fresh embedded Redis on a free port, then the system's processes; wait until ready
        for each client count, each of its systems in turn: warm up (not counted), measure,
            let the queue drain
        stop every process it started, newest first: SIGTERM, then SIGKILL after a bound
    then: a table on the terminal, the results JSON with ratios and targets, a PNG beside it

Every process runs in its own session and is stopped in `finally`, so neither an error nor Ctrl-C
leaves one behind; the bench never talks to a Redis it did not start.
"""

import json
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import redis
from rich.console import Console

from bench.apps import PREDICT_PATH
from bench.loadgen import (
    ID_MARKER,
    LoadgenKind,
    LoadResult,
    reply_is_ok,
    run_loadgen,
    wrk_available,
)
from bench.report import SYSTEMS, build_report, print_report, progress_line, write_report
from config import PROJECT_ROOT, child_environment, get_settings
from core.infra.embedded_redis import EmbeddedRedis
from core.infra.launch import Child, gunicorn_argv, prefork_worker_argv, tripq_argv

BATCH_PATH = "/v1/trip/predict/batch"
GRPC_SYSTEM = "tripq-grpc"  # tripq.v1.TripService/Predict, on the tripq deployment
BASELINE_VERSION = "baseline-2021-01"
DEFAULT_OUTPUT = Path(__file__).parent / "results" / "latest.json"
BENCH_TRIP = {"PULocationID": 130, "DOLocationID": 250, "trip_distance": 3.0}

LOADGEN_CHOICES = ("auto", "wrk", "python")  # auto: wrk when it is on PATH

_START_TIMEOUT_S = 90.0
_APP_STOP_S = 15.0  # gunicorn's graceful timeout is the request deadline + 5 s
# `tripq worker --processes N` stops its own children within request deadline + 15 s; waiting
# longer than that means it never has to be killed with its children still running.
_WORKER_STOP_S = 30.0
_SETTLE_TIMEOUT_S = 30.0
_IDLE_S = 0.5
_KOMBU_UNACKED = "unacked"  # Kombu's Redis transport: delivered, not yet acknowledged tasks
_POLL_S = 0.2
_APP_FACTORIES = {
    "noop": "bench.apps:create_noop_app()",
    "inprocess": "bench.apps:create_inprocess_app()",
    "inprocess-compiled": "bench.apps:create_compiled_app()",
    "naive": "bench.apps:create_naive_app()",
}


class BenchError(Exception):
    """A system could not be started or measured."""


@dataclass(frozen=True)
class BenchConfig:
    """What to run and for how long."""

    systems: tuple[str, ...] = SYSTEMS
    concurrency: tuple[int, ...] = (1, 8, 64, 256)
    duration_s: float = 10.0
    warmup_s: float = 2.0
    batch_size: int = 10_000
    loadgen: str = "auto"
    worker_processes: int = 1
    worker_concurrency: int = 64
    output: Path = DEFAULT_OUTPUT

    def __post_init__(self) -> None:
        unknown = sorted(set(self.systems) - set(SYSTEMS))
        if unknown or not self.systems:
            raise ValueError(f"systems must be among {', '.join(SYSTEMS)}; got {unknown or 'none'}")
        if not self.concurrency or min(self.concurrency) < 1:
            raise ValueError("concurrency levels must be positive integers")
        if self.loadgen not in LOADGEN_CHOICES:
            raise ValueError(f"loadgen must be one of {', '.join(LOADGEN_CHOICES)}")
        if self.duration_s <= 0 or self.warmup_s < 0 or self.batch_size < 1:
            raise ValueError("duration and batch size must be positive, warm-up not negative")


# --- Processes ---


def free_port() -> int:
    """Ask the kernel for a free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _spawn(
    stack: ExitStack, name: str, argv: list[str], env: dict[str, str], work: Path, stop_s: float
) -> Child:
    """Start a child whose stop is registered on `stack`."""
    child = Child(name, argv, env, work, stop_s)
    stack.callback(child.stop)
    return child


def child_env(redis_url: str, log_dir: Path) -> dict[str, str]:
    """The environment of every system's processes: the bench's Redis, quiet logs."""
    # CELERY_* overrides would point a child at another Redis: child_environment drops them.
    return child_environment(
        REDIS_URL=redis_url, LOG_DIR=str(log_dir), LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1"
    )


def _wait_until(check: Callable[[], bool], children: list[Child], what: str) -> None:
    """Poll `check` until it holds; fail if a child exits or `_START_TIMEOUT_S` passes."""
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        for child in children:
            if not child.alive():
                raise BenchError(f"{child.name} exited at start:\n{child.log_tail()}")
        if check():
            return
        time.sleep(_POLL_S)
    tails = "\n".join(f"--- {c.name}\n{c.log_tail(800)}" for c in children)
    raise BenchError(f"{what} did not happen within {_START_TIMEOUT_S:g} s\n{tails}")


def _answers(url: str, body: bytes | None = None) -> bool:
    """Tell whether `url` answers a GET with 200, or a POST of `body` with a correct reply."""
    try:
        if body is None:
            return httpx.get(url, timeout=2.0).status_code == 200
        reply = httpx.post(
            url, content=body, headers={"content-type": "application/json"}, timeout=10.0
        )
    except httpx.HTTPError:
        return False
    return reply_is_ok(reply.status_code, reply.content, 1)


@dataclass(frozen=True)
class Deployment:
    """A running system: where its API listens and which Redis it uses."""

    base_url: str
    redis_url: str
    worker: "Child | None" = None  # tripq's `tripq worker`, whose children do the work
    grpc_target: str | None = None  # host:port of its `tripq grpc`, when tripq-grpc is measured


def worker_rss_mib(worker: Child) -> float | None:
    """Resident memory of the largest process under `tripq worker`: its Celery worker, in MiB."""
    try:
        import psutil  # a dev extra, as the bench is
    except ImportError:
        return None
    try:
        root = psutil.Process(worker.process.pid)  # it may exec Celery itself, or supervise it
        processes = [root, *root.children(recursive=True)]
        largest = max((p.memory_info().rss for p in processes), default=0)
    except psutil.Error:
        return None
    return round(largest / 2**20, 1) if largest else None


def start_deployment(name: str, cfg: BenchConfig, stack: ExitStack, work: Path) -> Deployment:
    """Start a fresh Redis and the processes of deployment `name`; return once it answers."""
    try:
        server = EmbeddedRedis(free_port(), work / f"redis-{name}", appendonly=False).start()
    except RuntimeError as exc:
        raise BenchError(f"embedded Redis: {exc}") from exc
    stack.callback(server.stop)
    env = child_env(server.url, work / "logs")
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    if name == "tripq-baseline":  # tripq itself, serving the linear baseline
        env["SERVING_VERSION"] = BASELINE_VERSION
    if name in ("tripq", "tripq-prefork", "tripq-baseline"):
        worker = start_tripq(cfg, stack, env, work, port, prefork=name == "tripq-prefork")
        grpc_target = None
        if name == "tripq" and GRPC_SYSTEM in cfg.systems:
            grpc_target = _start_grpc(stack, env, work, worker)
        return Deployment(base_url, server.url, worker, grpc_target)
    _start_app(name, stack, env, work, port)
    return Deployment(base_url, server.url)


def start_tripq(
    cfg: BenchConfig,
    stack: ExitStack,
    env: dict[str, str],
    work: Path,
    port: int,
    *,
    prefork: bool = False,
) -> Child:
    """Start tripq's worker (gevent, or prefork) and `tripq api` (one process); wait for /ready;
    return the worker."""
    processes, greenlets = str(cfg.worker_processes), str(cfg.worker_concurrency)
    worker_argv = tripq_argv("worker", "--processes", processes, "--concurrency", greenlets)
    if prefork:  # tripq's worker under Celery's prefork pool instead of gevent: one per core
        worker_argv = prefork_worker_argv(get_settings().queue, os.cpu_count() or 2)
    worker = _spawn(stack, "tripq-worker", worker_argv, env, work, _WORKER_STOP_S)
    api_argv = tripq_argv("api", "--host", "127.0.0.1", "--port", str(port), "--workers", "1")
    api = _spawn(stack, "tripq-api", api_argv, env, work, _APP_STOP_S)
    ready = f"http://127.0.0.1:{port}/ready"
    _wait_until(lambda: _answers(ready), [worker, api], "tripq /ready 200")
    return worker


def _start_grpc(stack: ExitStack, env: dict[str, str], work: Path, worker: Child) -> str:
    """Start `tripq grpc` beside tripq's API, on the same worker; return its host:port once its
    health says SERVING and it has answered a first trip."""
    # Imported here: grpcio is loaded only when a gRPC system is measured.
    from apps.grpc.health import is_serving
    from bench.grpc_loadgen import first_answer

    target = f"127.0.0.1:{free_port()}"
    host, port = target.split(":")
    argv = tripq_argv("grpc", "--host", host, "--port", port)
    grpc = _spawn(stack, "tripq-grpc", argv, env, work, _APP_STOP_S)
    _wait_until(lambda: is_serving(target, 2.0), [worker, grpc], "tripq grpc SERVING")
    _wait_until(lambda: first_answer(target, BENCH_TRIP), [worker, grpc], "a first gRPC answer")
    return target


def _start_app(name: str, stack: ExitStack, env: dict[str, str], work: Path, port: int) -> None:
    """Start a comparison app under gunicorn (and naive's Celery worker); wait for an answer."""
    children = []
    if name == "naive":
        # The older service's worker: Celery's prefork pool, four processes, prefetch of one.
        worker_argv = prefork_worker_argv(get_settings().queue, 4, prefetch_one=True)
        children.append(_spawn(stack, "naive-worker", worker_argv, env, work, _WORKER_STOP_S))
    api_argv = gunicorn_argv(_APP_FACTORIES[name], "127.0.0.1", port, 1)
    children.append(_spawn(stack, f"{name}-api", api_argv, env, work, _APP_STOP_S))
    url = f"http://127.0.0.1:{port}{PREDICT_PATH}"
    first = json.dumps({"request_id": "ready", **BENCH_TRIP}).encode()
    _wait_until(lambda: _answers(url, first), children, f"a first {name} answer")


def _settle(redis_url: str) -> None:
    """Wait, bounded, until the last run's work is done, so its backlog never slows the next."""
    # Work left over from a run sits in the queue, or is being computed: Kombu keeps a delivered
    # task in its `unacked` hash until the worker acknowledges it. Idle means both stay empty for
    # a while, long enough for an API to have sent the requests it still held.
    client = redis.Redis.from_url(redis_url, socket_timeout=2.0)
    queue = get_settings().queue
    idle_since = time.monotonic()
    deadline = idle_since + _SETTLE_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if client.llen(queue) or client.hlen(_KOMBU_UNACKED):
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= _IDLE_S:
                return
            time.sleep(_POLL_S / 4)
    except redis.RedisError as exc:
        raise BenchError(f"the bench's Redis failed: {exc}") from exc
    finally:
        client.close()


# --- Measuring ---


def single_body() -> bytes:
    """The one-trip body every single-request system gets; the load generator fills the id."""
    return json.dumps({"request_id": ID_MARKER, **BENCH_TRIP}, separators=(",", ":")).encode()


def batch_body(size: int) -> bytes:
    """A batch of `size` different trips, the same for every run."""
    trips = [
        {
            "request_id": str(i),
            "PULocationID": 1 + i % 265,
            "DOLocationID": 1 + (7 * i) % 265,
            "trip_distance": round(0.5 + (i % 100) / 10, 1),
        }
        for i in range(size)
    ]
    return json.dumps({"trips": trips}, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Bodies:
    """The request bodies, written once to files the load generators read."""

    single: Path
    batch: Path | None


def write_bodies(work: Path, cfg: BenchConfig) -> Bodies:
    """Write the bodies the selected systems need."""
    single = work / "single.json"
    single.write_bytes(single_body())
    if "tripq-batch" not in cfg.systems:
        return Bodies(single, None)
    batch = work / "batch.json"
    batch.write_bytes(batch_body(cfg.batch_size))
    return Bodies(single, batch)


def resolve_loadgen(choice: str) -> LoadgenKind:
    """Pick the load generator: wrk when asked or, for auto, when it is on PATH."""
    if choice == "python" or (choice == "auto" and not wrk_available()):
        return "python"
    if not wrk_available():
        raise BenchError("--loadgen wrk, but wrk is not on PATH (apt-get install wrk)")
    return "wrk"


def measure(
    system: str,
    deployment: Deployment,
    concurrency: int,
    cfg: BenchConfig,
    bodies: Bodies,
    kind: LoadgenKind,
    work: Path,
) -> dict[str, Any]:
    """Warm up, then measure one system at one client count; return its results row."""
    batch = system == "tripq-batch"
    url = deployment.base_url + (BATCH_PATH if batch else PREDICT_PATH)
    body = bodies.batch if batch and bodies.batch else bodies.single
    expect = cfg.batch_size if batch else 1
    if system == GRPC_SYSTEM:
        kind, url = "grpc", deployment.grpc_target or ""
    with (work / "loadgen.log").open("ab") as log:

        def load(seconds: float) -> LoadResult:
            return run_loadgen(
                kind,
                url,
                body,
                expect=expect,
                concurrency=concurrency,
                duration_s=seconds,
                cwd=PROJECT_ROOT,
                log=log,
            )

        try:
            if cfg.warmup_s > 0:
                load(cfg.warmup_s)
                _settle(deployment.redis_url)
            result = load(cfg.duration_s)
        except RuntimeError as exc:
            raise BenchError(str(exc)) from exc
    _settle(deployment.redis_url)
    return result_row(system, concurrency, result, cfg.batch_size if batch else None)


def result_row(
    system: str, concurrency: int, result: LoadResult, batch_size: int | None
) -> dict[str, Any]:
    """Turn a load result into a row of the results JSON; rps counts correct answers only."""
    rps = result.ok / result.duration_s if result.duration_s > 0 else 0.0
    row: dict[str, Any] = {
        "system": system,
        "concurrency": concurrency,
        "requests": result.requests,
        "ok": result.ok,
        "errors": result.errors,
        "unfinished": result.unfinished,
        "rps": round(rps, 1),
        "p50_ms": round(result.p50_ms, 3),
        "p99_ms": round(result.p99_ms, 3),
        "duration_s": round(result.duration_s, 3),
        "loadgen_cpu_s": round(result.cpu_s, 3),
    }
    if batch_size is not None:
        row["predictions_per_s"] = round(rps * batch_size, 1)
    return row


def _deployments(systems: tuple[str, ...]) -> dict[str, list[str]]:
    """Group the chosen systems by the processes they run on, in the canonical order."""
    groups: dict[str, list[str]] = {}
    for system in SYSTEMS:
        if system in systems:
            deployment = system.removesuffix("-batch").removesuffix("-grpc")
            groups.setdefault(deployment, []).append(system)
    return groups


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """Turn SIGTERM into SystemExit while the bench runs, so `finally` stops every child."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_bench(cfg: BenchConfig, console: Console) -> dict[str, Any]:
    """Run every chosen system at every client count; write the JSON and the plot; return both."""
    kind = resolve_loadgen(cfg.loadgen)
    rows: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    memory: dict[str, float | None] = {}  # worker RSS after its load, by deployment
    with tempfile.TemporaryDirectory(prefix="tripq-bench-") as tmp, _sigterm_unwinds():
        work = Path(tmp)
        bodies = write_bodies(work, cfg)
        for name, systems in _deployments(cfg.systems).items():
            console.print(f"[bold]{name}[/]: starting")
            try:
                with ExitStack() as stack:
                    deployment = start_deployment(name, cfg, stack, work)
                    # Each client count in turn for every system of the deployment, so that
                    # REST and gRPC are measured back to back, under the same conditions.
                    for concurrency in cfg.concurrency:
                        for system in systems:
                            row = measure(system, deployment, concurrency, cfg, bodies, kind, work)
                            rows.append(row)
                            console.print(progress_line(row))
                    if deployment.worker is not None:
                        memory[name] = worker_rss_mib(deployment.worker)
                    console.print(f"[bold]{name}[/]: stopping")
            except BenchError as exc:
                console.print(f"[red]{name} failed: {exc}[/red]")
                failures.append({"deployment": name, "error": str(exc)[-2000:]})
    settings = asdict(cfg) | {
        "output": str(cfg.output),
        "api_processes": 1,
        "request_timeout_s": get_settings().request_timeout_s,
    }
    report = build_report(settings, kind, rows, failures)
    if GRPC_SYSTEM in cfg.systems:
        report["machine"]["grpc_loadgen"] = "python grpc.aio (uvloop)"
    report["worker_rss_mib"] = memory
    write_report(report, cfg.output)
    print_report(report, console)
    return report
