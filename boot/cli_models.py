"""`tripq models`: list the model versions, and promote, canary or roll back one, live.

Each command checks what it is asked to serve before it writes the routing; the checks, the
writing and the wait for the fleet are core.model.rollout's. Here: parsing and printing.
"""

import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import redis
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from config import Settings, get_settings
from core.errors import TripqError
from core.model.registry import CARD_FILE, read_card, resolve_model_dir
from core.model.rollout import (
    await_followers,
    check_servable,
    live_workers,
    read_routing,
    routing_client,
    write_routing,
)
from core.online.routing import Routing

models_app = typer.Typer(
    help="List model versions; promote, canary or roll back one on the live fleet.",
    no_args_is_help=True,
)


def _apply(console: Console, settings: Settings, change: str, routing: Routing) -> None:
    """Write CURRENT and `routing`, say so, then wait (boundedly) to see the live workers follow."""
    with routing_client(settings) as client:
        write_routing(client, settings, routing)
        console.print(f"{change}: current {routing.current}", end="")
        if routing.canary:
            console.print(f", canary {routing.canary} at {routing.canary_share:.0%}", end="")
        console.print()
        following, workers = await_followers(client, settings, routing)
    console.print(f"{following} of {workers} live workers serve {routing.current}")


@models_app.command("list")
def list_models() -> None:
    """List the model versions in ARTIFACT_DIR, their role and the live workers holding each."""
    settings = get_settings()
    console = Console()
    try:
        with routing_client(settings) as client:
            routing = read_routing(client, settings)
            workers = live_workers(client, settings)
    except redis.RedisError as exc:
        console.print(f"[red]error:[/] Redis does not answer: {escape(str(exc))}")
        raise typer.Exit(1) from None
    except TripqError as exc:
        console.print(f"[red]error:[/] {escape(exc.message)}")
        raise typer.Exit(1) from None
    table = Table("version", "kind", "created", "valid rmse", "role", "held by")
    for model_dir in sorted(p for p in Path(settings.artifact_dir).iterdir() if p.is_dir()):
        if not (model_dir / CARD_FILE).is_file():
            continue
        try:
            card = read_card(model_dir)
        except TripqError:
            table.add_row(escape(model_dir.name), "[red]unreadable card[/]", "", "", "", "")
            continue
        version = card.version
        role = {routing.current: "current", routing.previous: "previous"}.get(version, "")
        if version == routing.canary:
            role = f"canary {routing.canary_share:.0%}"
        holders = sum(version in w.model_versions for w in workers)
        table.add_row(
            escape(version),
            card.kind,
            card.created,
            f"{card.metrics.get('rmse', float('nan')):.4f}",
            role,
            f"{holders} of {len(workers)}",
        )
    console.print(table)


@models_app.command()
def promote(version: Annotated[str, typer.Argument(help="The version to make current.")]) -> None:
    """Make VERSION current for every request that pins none, once it passes its checks."""
    settings = get_settings()
    console = Console()
    try:
        check_servable(settings, version)
        with routing_client(settings) as client:
            routing = read_routing(client, settings).promoted(version)
        _apply(console, settings, "promoted", routing)
    except (TripqError, redis.RedisError) as exc:
        _refuse(console, f"{version} not promoted", exc)


@models_app.command()
def canary(
    version: Annotated[str, typer.Argument(help="The candidate version.")],
    share: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Share of unpinned requests it answers; 0 ends it."),
    ] = 0.1,
) -> None:
    """Send a share of the requests that pin no version to VERSION, once it passes its checks."""
    settings = get_settings()
    console = Console()
    try:
        if share > 0:
            check_servable(settings, version)
        with routing_client(settings) as client:
            routing = read_routing(client, settings).with_canary(
                version if share > 0 else None, share
            )
        _apply(console, settings, "canary set" if share > 0 else "canary ended", routing)
    except (TripqError, redis.RedisError) as exc:
        _refuse(console, f"canary {version} not set", exc)


@models_app.command()
def rollback() -> None:
    """Make the previous version current again, and end any canary."""
    settings = get_settings()
    console = Console()
    try:
        with routing_client(settings) as client:
            current = read_routing(client, settings)
        if current.previous is None:
            console.print("[red]error:[/] there is no previous version to roll back to")
            raise typer.Exit(1)
        check_servable(settings, current.previous)
        _apply(console, settings, "rolled back", current.rolled_back())
    except (TripqError, redis.RedisError) as exc:
        _refuse(console, "not rolled back", exc)


def _refuse(console: Console, what: str, exc: Exception) -> None:
    reason = exc.message if isinstance(exc, TripqError) else f"Redis does not answer: {exc}"
    console.print(f"[red]error:[/] {escape(what)}: {escape(reason)}; nothing changed")
    raise typer.Exit(1)


@models_app.command("compile")
def compile_trees(
    versions: Annotated[
        list[str] | None,
        typer.Argument(help="Versions to compile; by default every gbm in ARTIFACT_DIR."),
    ] = None,
) -> None:
    """Build the compiled trees of gbm versions into TREE_CACHE_DIR, as a worker would."""
    from core.model.trees import compile_in_child

    settings = get_settings()
    out, err = Console(), Console(stderr=True)
    if not settings.tree_compiler:
        err.print("TREE_COMPILER is empty: workers serve with scikit-learn's evaluator")
        raise typer.Exit(1)
    names = versions or sorted(
        p.name
        for p in settings.artifact_dir.iterdir()
        if (p / CARD_FILE).is_file() and read_card(p).kind == "gbm"
    )
    try:
        for name in names:
            model_dir = resolve_model_dir(settings.artifact_dir, name)
            started = time.perf_counter()
            compile_in_child(model_dir, settings.tree_cache_dir, settings.tree_compiler)
            out.print(f"{escape(name)}: compiled in {time.perf_counter() - started:.1f} s")
    except TripqError as exc:
        err.print(f"[red]error:[/red] {escape(exc.message)}")
        raise typer.Exit(1) from None


class ExportFormat(StrEnum):
    """The portable formats a model version can be exported to."""

    onnx = "onnx"


@models_app.command("export")
def export(
    version: Annotated[str, typer.Argument(help="The version to export.")],
    file_format: Annotated[
        ExportFormat, typer.Option("--format", help="The file format.")
    ] = ExportFormat.onnx,
    output: Annotated[
        Path, typer.Option("--output", help="Folder to write VERSION.onnx and its card into.")
    ] = Path("."),
) -> None:
    """Write VERSION's whole pipeline, cleaning to trees, as an ONNX file with a JSON card."""
    from core.model.artifact import load_model

    settings = get_settings()
    out, err = Console(), Console(stderr=True)
    try:
        from core.model.onnx_export import card_path, export_onnx
    except ImportError as exc:  # onnx is an optional extra
        reason = f"export needs the onnx extra (pip install 'tripq[onnx]'): {exc}"
        err.print(f"[red]error:[/red] {escape(reason)}")
        raise typer.Exit(1) from None
    try:
        model = load_model(resolve_model_dir(settings.artifact_dir, version))
        path, card = export_onnx(model, output.expanduser())
    except TripqError as exc:
        err.print(f"[red]error:[/red] {escape(exc.message)}")
        raise typer.Exit(1) from None
    out.print(f"wrote {escape(str(path))} (sha256 {card.sha256})", soft_wrap=True)
    out.print(f"card: {escape(str(card_path(path)))}", soft_wrap=True)
    out.print("inputs: " + ", ".join(f"{t.name} {t.type}[{t.shape[0]}]" for t in card.inputs))
    for step in card.not_expressible:
        out.print(f"not in the file, left to the caller: {escape(step)}", soft_wrap=True)
