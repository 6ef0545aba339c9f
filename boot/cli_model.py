"""`tripq train` and `tripq evaluate`: parse, call core.model.training, print.

core.model.training (scikit-learn, skops: over a second to import) is imported when one of these
commands runs, not when the CLI starts: `tripq workers` is a container healthcheck.
"""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from config import Settings, get_settings
from core.errors import ModelError, TripqError
from core.model.registry import DEFAULT_KIND, MODEL_KINDS, resolve_model_dir, write_current

if TYPE_CHECKING:
    from core.model.training import Progress, Scores

_SOURCE_HELP = "a path, or a TLC month like green:2021-01 (downloaded into DATA_DIR)"


@contextmanager
def _progress(console: Console) -> Iterator["Progress"]:
    """Show a spinner with the current step, and log each step as it starts."""
    with console.status("starting") as status:

        def report(step: str) -> None:
            status.update(escape(step))
            console.print(f"[dim]• {escape(step)}[/]", soft_wrap=True)

        yield report


def _fail(console: Console, exc: TripqError) -> typer.Exit:
    """Print an error as one line and return the exit to raise."""
    console.print(f"[red]error:[/] {escape(exc.message)}", soft_wrap=True)
    return typer.Exit(1)


def _data_files(sources: list[str], settings: Settings, report: "Progress") -> list[Path]:
    """Return the paths of trip files given as paths or month specs, fetching months."""
    from core.model.tlc import is_month_spec, resolve_data_file

    paths = []
    for source in sources:
        if is_month_spec(source):
            report(f"fetching {source}")
        paths.append(
            resolve_data_file(source, data_dir=settings.data_dir, base_url=settings.tlc_base_url)
        )
    return paths


def _model_dir(model: str | None, settings: Settings) -> Path:
    """Return a model directory given as a path, a version, or nothing (the serving model)."""
    if model is None:
        return resolve_model_dir(settings.artifact_dir, settings.serving_version)
    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.name != model:
        raise ModelError(f"{path.resolve()} is not a model directory")
    return resolve_model_dir(settings.artifact_dir, model)


Row = tuple[str, int, "Scores | None"]


def _metrics_table(title: str, rows: list[Row], train_rmse: float | None = None) -> Table:
    """Lay out rmse, mae and r2 per named row of trips."""
    table = Table("data", "rows", "rmse (min)", "mae (min)", "r2", title=title)
    for name, count, scores in rows:
        if scores is None:
            # Training rows: only the fit's rmse is on the card.
            cells = [f"{train_rmse:.4f}" if train_rmse is not None else "", "", ""]
        else:
            cells = [f"{scores['rmse']:.4f}", f"{scores['mae']:.4f}", f"{scores['r2']:.4f}"]
        table.add_row(escape(name), f"{count:,}", *cells)
    return table


def train(
    train_files: Annotated[
        list[str], typer.Option("--train", help=f"Training file, repeatable: {_SOURCE_HELP}.")
    ],
    valid: Annotated[str, typer.Option("--valid", help=f"Validation file: {_SOURCE_HELP}.")],
    output: Annotated[
        Path, typer.Option("--output", help="Model directory to create; its name is the version.")
    ],
    kind: Annotated[
        str, typer.Option(help=f"Model recipe: {' or '.join(MODEL_KINDS)}.")
    ] = DEFAULT_KIND,
    zones: Annotated[
        str | None,
        typer.Option(
            "--zones",
            help="TLC taxi zone lookup CSV; by default the one that ships with tripq.",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace a model already in --output.")
    ] = False,
    current: Annotated[
        bool,
        typer.Option("--current", help="Also make it the default model (CURRENT beside --output)."),
    ] = False,
) -> None:
    """Train a model from NYC TLC trip files."""
    from core.model.tlc import read_zones
    from core.model.training import train_model

    settings = get_settings()
    out, err = Console(), Console(stderr=True)
    output = output.expanduser().resolve()
    try:
        with _progress(err) as report:
            train_paths = _data_files(train_files, settings, report)
            [valid_path] = _data_files([valid], settings, report)
            zones_path = Path(zones).expanduser() if zones else settings.zones_file
            card = train_model(
                train_paths,
                valid_path,
                output,
                kind=kind,
                zones=read_zones(zones_path),
                progress=report,
                overwrite=force,
            )
            if current:
                write_current(output.parent, card.version)
    except TripqError as exc:
        raise _fail(err, exc) from None
    valid_scores: Scores = {
        "rmse": card.metrics["rmse"],
        "mae": card.metrics["mae"],
        "r2": card.metrics["r2"],
    }
    valid_name = "valid: " + ", ".join(f.name for f in card.valid_files)
    rows: list[Row] = [
        ("train: " + ", ".join(f.name for f in card.train_files), card.train_rows, None),
        (valid_name, card.valid_rows, valid_scores),
    ]
    if "pickup_rmse" in card.metrics:
        with_time: Scores = {
            "rmse": card.metrics["pickup_rmse"],
            "mae": card.metrics["pickup_mae"],
            "r2": card.metrics["pickup_r2"],
        }
        rows.append((valid_name + " + pickup time", card.valid_rows, with_time))
    out.print(_metrics_table(f"{card.version} ({card.kind})", rows, card.metrics["train_rmse"]))
    note = " (now the default model)" if current else ""
    out.print(f"wrote {escape(str(output))}{note}", soft_wrap=True)
    out.print(f"report: {escape(str(output / 'report' / 'report.html'))}", soft_wrap=True)


def evaluate(
    files: Annotated[list[str], typer.Argument(help=f"Trip files: {_SOURCE_HELP}.")],
    model: Annotated[
        str | None,
        typer.Option(help="Model directory or version; by default the serving model."),
    ] = None,
) -> None:
    """Print a trained model's metrics on NYC TLC trip files; the last line is JSON."""
    from core.model.training import evaluate_model

    settings = get_settings()
    out, err = Console(), Console(stderr=True)
    try:
        with _progress(err) as report:
            model_dir = _model_dir(model, settings)
            paths = _data_files(files, settings, report)
            result = evaluate_model(model_dir, paths, progress=report)
    except TripqError as exc:
        raise _fail(err, exc) from None
    rows: list[Row] = []
    for scores, suffix in ((result, ""), (result["pickup"], " + pickup time")):
        if scores is None:
            continue
        rows += [(f["name"] + suffix, f["rows"], f) for f in scores["files"]]
        if len(scores["files"]) > 1:
            rows.append(("all" + suffix, scores["rows"], scores))
    out.print(_metrics_table(result["model"], rows))
    # Plain echo, not rich: the JSON must stay one unwrapped line for scripts to parse.
    typer.echo(json.dumps(result))
