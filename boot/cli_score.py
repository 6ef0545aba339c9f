"""`tripq score`: parse, call core.offline.scoring, show progress, print the summary."""

import asyncio
import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from config import get_settings
from core.errors import InvalidTrip, TripqError
from core.offline.plan import ScoringPlan, plan_scoring
from core.offline.scoring import (
    DEFAULT_IN_FLIGHT,
    DEFAULT_RETRIES,
    ChunkDone,
    ScoringResult,
    run_scoring,
)

_INTERRUPTED = 130  # the shell's code for a command stopped by SIGINT


class _Tracker:
    """Advance the progress bar per finished chunk; rows/s counts the rows sent by this run."""

    def __init__(self, progress: Progress, plan: ScoringPlan) -> None:
        self.progress = progress
        self.task = progress.add_task("scoring", total=plan.rows, rate="")
        self.finished = 0
        self.sent_rows = 0
        self.started = time.perf_counter()

    def __call__(self, chunk: ChunkDone) -> None:
        self.finished += 1
        if not chunk.skipped:
            self.sent_rows += chunk.rows
        seconds = time.perf_counter() - self.started
        rate = f"{self.sent_rows / seconds:,.0f} rows/s" if self.sent_rows and seconds > 0 else ""
        self.progress.update(self.task, advance=chunk.rows, rate=rate)


def score(
    input_file: Annotated[
        Path, typer.Argument(metavar="INPUT", help="Trip file, .parquet or .csv, TLC columns.")
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="File to write, .parquet or .csv: the input + predicted_duration.",
        ),
    ],
    chunk_rows: Annotated[
        int | None,
        typer.Option(min=1, help="Rows per task; default: the interrupted run's, else 50,000."),
    ] = None,
    in_flight: Annotated[
        int, typer.Option(min=1, help="Chunks out to the workers at once.")
    ] = DEFAULT_IN_FLIGHT,
    timeout: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            help="Seconds a chunk may take, at most (and by default) REQUEST_TIMEOUT_MAX_S.",
        ),
    ] = None,
    retries: Annotated[
        int, typer.Option(min=0, help="Times a chunk that timed out is sent again.")
    ] = DEFAULT_RETRIES,
    restart: Annotated[
        bool, typer.Option("--restart", help="Discard the chunks an interrupted run finished.")
    ] = False,
) -> None:
    """Score a trip file through the workers; resumable. The last line is JSON."""
    settings = get_settings()
    err = Console(stderr=True)
    plan: ScoringPlan | None = None
    tracker: _Tracker | None = None
    try:
        with err.status("reading and checking the input"):
            plan = plan_scoring(input_file, output, chunk_rows=chunk_rows, restart=restart)
        if plan.notice:
            err.print(f"[yellow]note:[/] {escape(plan.notice)}", soft_wrap=True)
        if plan.done:
            err.print(
                f"resuming: {len(plan.done)} of {plan.chunks} chunks were finished by an "
                "earlier run and are not sent again"
            )
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:,.0f}/{task.total:,.0f} rows"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err,
        ) as progress:
            tracker = _Tracker(progress, plan)
            result = asyncio.run(
                run_scoring(
                    plan,
                    settings,
                    in_flight=in_flight,
                    timeout_s=timeout,
                    retries=retries,
                    on_chunk=tracker,
                )
            )
    except KeyboardInterrupt:
        raise _interrupted(err, plan, tracker) from None
    except TripqError as exc:
        err.print(f"[red]error:[/] {escape(exc.message)}", soft_wrap=True)
        raise typer.Exit(2 if isinstance(exc, InvalidTrip) else 1) from None
    _print_summary(err, result)
    # Plain echo, not rich: the JSON must stay one unwrapped line for scripts to parse.
    typer.echo(json.dumps(result.summary()))


def _interrupted(err: Console, plan: ScoringPlan | None, tracker: _Tracker | None) -> typer.Exit:
    """Say what an interrupted run keeps and how to resume it."""
    if plan is None or tracker is None or not tracker.finished:
        err.print("[yellow]interrupted[/] before any chunk was finished")
    else:
        err.print(
            f"[yellow]interrupted:[/] {tracker.finished} of {plan.chunks} chunks are kept in "
            f"{escape(str(plan.work_dir))}; run the same command again to resume",
            soft_wrap=True,
        )
    return typer.Exit(_INTERRUPTED)


def _print_summary(err: Console, result: ScoringResult) -> None:
    rate = f" ({result.rows / result.seconds:,.0f} rows/s)" if result.seconds > 0 else ""
    versions = ", ".join(result.model_versions) or "none"
    err.print(
        f"[green]scored[/] {result.scored:,} of {result.rows:,} rows in {result.seconds:.2f} s"
        f"{rate} with model {escape(versions)} -> {escape(str(result.output))}",
        soft_wrap=True,
    )
    if result.chunks_skipped:
        err.print(
            f"resumed: {result.chunks_skipped} of {result.chunks} chunks came from an earlier run"
        )
    if result.rejected_file is not None:
        err.print(
            f"[yellow]rejected[/] {result.rejected:,} rows, each with its reason, in "
            f"{escape(str(result.rejected_file))}",
            soft_wrap=True,
        )
