"""The `tripq` command: run the platform or its parts, train and evaluate models, predict."""

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from boot.cli_bench import bench
from boot.cli_model import evaluate, train
from boot.cli_models import models_app
from boot.cli_score import score
from boot.procs import ProcessGroup
from config import Settings, get_settings, inherited_environment
from core.errors import TripqError
from core.infra.embedded_redis import EmbeddedRedis, redis_answers
from core.infra.launch import api_argv, tripq_argv, worker_argv
from core.infra.redis_clients import sync_client
from core.model.registry import read_card, resolve_model_dir
from core.online.client import PredictionClient, TripAnswer
from core.online.deadline import Deadline
from core.online.schemas import WorkerInfo
from core.trip.schemas import TripRequest

app = typer.Typer(
    help="tripq: NYC taxi trip durations, served through a Redis queue by Celery workers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command(help="Train a model from NYC TLC trip files.")(train)
app.command(help="Print a trained model's metrics on NYC TLC trip files.")(evaluate)
app.command(help="Benchmark tripq beside the alternatives; writes bench/results/.")(bench)
app.command(help="Score a trip file through the workers (resumable); the last line is JSON.")(score)
app.add_typer(models_app, name="models")

console = Console(stderr=True)
_READY_TIMEOUT_S = 90.0
_STOP_TIMEOUT_S = 15.0
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}

Processes = Annotated[int | None, typer.Option(min=1, help="Worker processes [WORKER_PROCESSES].")]
Concurrency = Annotated[
    int | None, typer.Option(min=1, help="Greenlets per worker process [WORKER_CONCURRENCY].")
]
Host = Annotated[str | None, typer.Option(help="Address the API binds [API_HOST].")]
Port = Annotated[int | None, typer.Option(min=1, max=65535, help="API port [API_PORT].")]
ApiWorkers = Annotated[int | None, typer.Option(min=1, help="API processes [API_WORKERS].")]
GrpcHost = Annotated[str | None, typer.Option(help="Address the gRPC server binds [GRPC_HOST].")]
GrpcPort = Annotated[
    int | None, typer.Option(min=1, max=65535, help="gRPC server port [GRPC_PORT].")
]
_GRPC_HEALTH_TIMEOUT_S = 2.0


@app.command()
def api(host: Host = None, port: Port = None, workers: ApiWorkers = None) -> None:
    """Serve the HTTP API with gunicorn and uvicorn workers."""
    settings = get_settings()
    argv = api_argv(
        host or settings.api_host, port or settings.api_port, workers or settings.api_workers
    )
    os.execv(sys.executable, argv)


@app.command()
def grpc(host: GrpcHost = None, port: GrpcPort = None) -> None:
    """Serve tripq.v1.TripService over gRPC, with grpc.health.v1 and server reflection."""
    # Imported here: grpcio loads only in the process that serves it.
    from apps.grpc.server import serve

    settings = get_settings()
    asyncio.run(serve(settings, host or settings.grpc_host, port or settings.grpc_port))


@app.command("grpc-health")
def grpc_health(
    address: Annotated[
        str | None, typer.Argument(help="host:port of the gRPC server [GRPC_HOST:GRPC_PORT].")
    ] = None,
    service: Annotated[
        str,
        typer.Option(
            help='The service asked about: "" the server itself (it serves), '
            "tripq.v1.TripService (Redis answers too)."
        ),
    ] = "",
) -> None:
    """Exit 0 when the gRPC server says SERVING (grpc.health.v1), 1 otherwise: a healthcheck."""
    from apps.grpc.health import is_serving

    settings = get_settings()
    target = address or f"{_connectable(settings.grpc_host)}:{settings.grpc_port}"
    raise typer.Exit(0 if is_serving(target, _GRPC_HEALTH_TIMEOUT_S, service) else 1)


@app.command("grpc-stubs")
def grpc_stubs(
    out: Annotated[
        Path | None, typer.Option(help="Where to write them; default: beside the protos.")
    ] = None,
) -> None:
    """Generate the Python stubs of tripq's protos (needs the dev extras)."""
    from apps.grpc.stubs import PROTO_ROOT, StubsError, generate_stubs

    try:
        for path in generate_stubs(out or PROTO_ROOT):
            typer.echo(str(path))
    except StubsError as exc:
        console.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(1) from None


@app.command()
def worker(processes: Processes = None, concurrency: Concurrency = None) -> None:
    """Run Celery worker processes (gevent pool) on the tasks.trip queue."""
    settings = get_settings()
    count = processes or settings.worker_processes
    greenlets = concurrency or settings.worker_concurrency
    if count == 1:
        # One process replaces this one, so container signals reach Celery directly.
        os.execv(sys.executable, worker_argv(settings, 1, greenlets))
    group = ProcessGroup()
    group.handle_signals()
    for index in range(1, count + 1):
        argv = worker_argv(settings, index, greenlets)
        group.start(f"worker {index}", argv, inherited_environment())
    group.supervise(console.print)
    group.stop(settings.request_timeout_max_s + _STOP_TIMEOUT_S)


@app.command()
def up(
    host: Host = None,
    port: Port = None,
    api_workers: ApiWorkers = None,
    processes: Processes = None,
    concurrency: Concurrency = None,
    grpc_port: GrpcPort = None,
) -> None:
    """Start everything: Redis (embedded if none answers), workers, the API and the gRPC server;
    Ctrl-C stops all."""
    settings = get_settings()
    host, port = host or settings.api_host, port or settings.api_port
    grpc_port = grpc_port or settings.grpc_port
    redis_server = _ensure_redis(settings)
    _compile_default_trees(settings)
    group = ProcessGroup()
    group.handle_signals()
    try:
        env = inherited_environment(REDIS_URL=settings.redis_url)
        greenlets = concurrency or settings.worker_concurrency
        for index in range(1, (processes or settings.worker_processes) + 1):
            group.start(f"worker {index}", worker_argv(settings, index, greenlets), env)
        group.start("api", api_argv(host, port, api_workers or settings.api_workers), env)
        # gRPC beside HTTP, on the API's address.
        group.start("grpc", tripq_argv("grpc", "--host", host, "--port", str(grpc_port)), env)
        base = f"http://{_connectable(host)}:{port}"
        grpc_target = f"{_connectable(host)}:{grpc_port}"
        if _wait_ready(base, grpc_target, group):
            console.print(f"gRPC {grpc_target}: tripq.v1.TripService, health, reflection")
            console.print(
                f"[bold green]tripq is up[/]: API {base}  docs {base}/docs  (Ctrl-C stops)"
            )
            group.supervise(console.print)
    finally:
        console.print("stopping tripq ...")
        group.stop(settings.request_timeout_max_s + _STOP_TIMEOUT_S)
        if redis_server is not None:
            redis_server.stop()
        console.print("stopped")


@app.command()
def workers(
    require_host: Annotated[
        str | None,
        typer.Option(
            help="Exit 1 unless a live worker on this host holds a model (a healthcheck)."
        ),
    ] = None,
) -> None:
    """List the live workers and the model versions they hold."""
    settings = get_settings()
    try:
        live = asyncio.run(_live_workers(settings))
    except TripqError as exc:
        console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(1) from None
    if require_host is not None:
        # A worker whose model failed to load stays up to say so, but serves nothing.
        serving = [w for w in live if w.name.endswith(f"@{require_host}") and w.model_version]
        raise typer.Exit(0 if serving else 1)
    table = Table("worker", "model version", "evaluator", "device", "concurrency", "last seen (s)")
    for w in live:
        evaluator = w.evaluators.get(w.model_version or "", "")
        table.add_row(
            w.name,
            w.model_version or "loading",
            evaluator,
            w.devices.get(w.model_version or "", ""),
            str(w.concurrency),
            f"{w.seen_s_ago:.1f}",
        )
    Console().print(table)


@app.command()
def predict(
    pu: Annotated[int, typer.Option("--pu", help="Pickup zone id (1-265).")],
    do: Annotated[int, typer.Option("--do", help="Drop-off zone id (1-265).")],
    distance: Annotated[float, typer.Option(help="Trip distance in miles.")],
    request_id: Annotated[str, typer.Option(help="Id echoed in the answer.")] = "cli",
) -> None:
    """Predict one trip through the queue, as the API would, and print the answer as JSON."""
    settings = get_settings()
    try:
        trip = TripRequest(
            request_id=request_id, PULocationID=pu, DOLocationID=do, trip_distance=distance
        )
        answer = asyncio.run(_predict_once(settings, trip))
    except TripqError as exc:
        console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(1) from None
    except ValueError as exc:
        console.print(f"[red]invalid trip: {exc}[/red]")
        raise typer.Exit(2) from None
    reply = {
        "request_id": trip.request_id,
        "duration": answer.duration,
        "model_version": answer.batch.model_version,
        "queue_ms": answer.batch.queue_ms,
        "inference_ms": answer.batch.inference_ms,
    }
    typer.echo(json.dumps(reply))


async def _predict_once(settings: Settings, trip: TripRequest) -> TripAnswer:
    predictor = PredictionClient.from_settings(settings)
    await predictor.start(wait_s=settings.redis_connect_timeout_s + 1)
    try:
        return await predictor.predict(trip, Deadline.after(settings.request_timeout_s))
    finally:
        await predictor.close()


async def _live_workers(settings: Settings) -> list[WorkerInfo]:
    predictor = PredictionClient.from_settings(settings)
    try:
        return await predictor.workers(settings.worker_ttl_s)
    finally:
        await predictor.close()


def _ensure_redis(settings: Settings) -> EmbeddedRedis | None:
    """Use the Redis at REDIS_URL if it answers; else start the embedded one in its place."""
    if redis_answers(sync_client(settings, settings.redis_url, socket_timeout=0.5)):
        console.print(f"using Redis at {_without_password(settings.redis_url)}")
        return None
    parts = urlsplit(settings.redis_url)
    if parts.scheme != "redis" or parts.hostname not in _LOCAL_HOSTS:
        console.print(f"[red]no Redis answers at {_without_password(settings.redis_url)}[/red]")
        raise typer.Exit(1)
    server = EmbeddedRedis(parts.port or 6379, settings.embedded_redis_dir, password=parts.password)
    server.start()
    console.print(f"started embedded Redis on port {server.port} (data in {server.data_dir})")
    return server


def _compile_default_trees(settings: Settings) -> None:
    """Build the serving gbm's compiled trees before the workers start, once per artifact.

    Otherwise every worker of a fresh clone would wait for that build (about 40 s) inside the
    start-up bound below. Where it cannot be built, the workers serve on scikit-learn's trees.
    """
    try:
        model_dir = resolve_model_dir(settings.artifact_dir, settings.serving_version)
        card = read_card(model_dir)
        if card.kind != "gbm" or not settings.tree_compiler:
            return
        # Imported here: it loads scikit-learn, which no other command of `up` needs.
        from core.model.trees import cached_libraries, compile_in_child

        if cached_libraries(settings.tree_cache_dir, card.artifact_sha256, settings.tree_compiler):
            return
        console.print(f"compiling the trees of {model_dir.name} (once, about 40 s) ...")
        compile_in_child(model_dir, settings.tree_cache_dir, settings.tree_compiler)
    except TripqError as exc:
        console.print(f"[yellow]{escape(exc.message)}: workers use scikit-learn's trees[/yellow]")


def _wait_ready(base: str, grpc_target: str, group: ProcessGroup) -> bool:
    """Wait until the API says it is ready and the gRPC server that it serves; False if a child
    died or a stop was requested."""
    from apps.grpc.health import is_serving

    deadline = time.monotonic() + _READY_TIMEOUT_S
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline and not group.stop_requested:
            gone = group.exited()
            if gone is not None:
                console.print(f"[red]{gone[0]} exited with code {gone[1]} during start-up[/red]")
                return False
            try:
                if client.get(f"{base}/ready").status_code == 200 and is_serving(grpc_target, 2.0):
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
    if not group.stop_requested:
        console.print(f"[red]tripq was not ready within {_READY_TIMEOUT_S:g} s[/red]")
    return False


def _connectable(host: str) -> str:
    """Name an address a client on this machine reaches a server bound to `host` at."""
    return "127.0.0.1" if host in ("0.0.0.0", "::") else host


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def main() -> None:
    """Run the `tripq` command."""
    app()


if __name__ == "__main__":
    main()
