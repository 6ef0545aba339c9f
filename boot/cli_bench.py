"""`tripq bench`: parse the options and hand them to bench.runner, where the logic lives."""

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from config import PROJECT_ROOT

console = Console(stderr=True)

ALL_SYSTEMS = (
    "noop,inprocess,inprocess-compiled,naive,tripq,tripq-batch,tripq-grpc,tripq-baseline,"
    "tripq-prefork"
)


class Loadgen(StrEnum):
    """Which load generator drives the systems."""

    auto = "auto"  # wrk when it is on PATH, else python
    wrk = "wrk"  # wrk with a Lua script that checks every reply
    python = "python"  # a pure-Python asyncio generator, for machines without wrk


def _ints(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}") from None
    if not levels or min(levels) < 1:
        raise typer.BadParameter("expected one or more positive integers")
    return levels


def bench(
    systems: Annotated[
        str,
        typer.Option(help="Comma-separated systems to run, of: " + ALL_SYSTEMS.replace(",", ", ")),
    ] = ALL_SYSTEMS,
    concurrency: Annotated[
        str, typer.Option(help="Comma-separated numbers of concurrent clients.")
    ] = "1,8,64,256",
    duration: Annotated[float, typer.Option(min=0.1, help="Seconds measured per point.")] = 10.0,
    warmup: Annotated[
        float, typer.Option(min=0.0, help="Seconds of uncounted load before each point.")
    ] = 2.0,
    batch_size: Annotated[int, typer.Option(min=1, help="Trips per tripq-batch request.")] = 10_000,
    loadgen: Annotated[Loadgen, typer.Option(help="Load generator.")] = Loadgen.auto,
    worker_processes: Annotated[int, typer.Option(min=1, help="tripq worker processes.")] = 1,
    worker_concurrency: Annotated[
        int, typer.Option(min=1, help="Greenlets per tripq worker process.")
    ] = 64,
    output: Annotated[
        Path, typer.Option(help="Results JSON; the plot goes beside it as .png.")
    ] = PROJECT_ROOT / "bench" / "results" / "latest.json",
) -> None:
    """Benchmark noop, in-process, naive Celery and tripq (REST and gRPC) side by side, one API
    process each."""
    try:
        # Imported here: bench/ lives in the source tree only (the images leave it out) and
        # needs the dev extras, while every other command must start without either.
        from bench.runner import BenchConfig, BenchError, run_bench
    except ModuleNotFoundError as exc:
        console.print(f"[red]tripq bench needs a source checkout with the dev extras: {exc}[/red]")
        raise typer.Exit(1) from None
    try:
        config = BenchConfig(
            systems=tuple(s.strip() for s in systems.split(",") if s.strip()),
            concurrency=_ints(concurrency),
            duration_s=duration,
            warmup_s=warmup,
            batch_size=batch_size,
            loadgen=loadgen.value,
            worker_processes=worker_processes,
            worker_concurrency=worker_concurrency,
            output=output,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if not console.is_terminal:
        console.width = max(console.width, 150)  # CI logs: the whole table, not an 80-column one
    try:
        report = run_bench(config, console)
    except BenchError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    console.print(f"results: {output}  plot: {output.with_suffix('.png')}")
    if report["failures"]:
        raise typer.Exit(1)
