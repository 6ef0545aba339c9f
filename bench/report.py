"""What a bench run reports: the results JSON with ratios and targets, a plot, a terminal table."""

import json
import os
import platform
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench.loadgen import LoadgenKind, wrk_version

SYSTEMS = (
    "noop",
    "inprocess",
    "inprocess-compiled",
    "naive",
    "tripq",
    "tripq-batch",
    "tripq-grpc",
    "tripq-baseline",
    "tripq-prefork",
)
RATIO_CONCURRENCY = 64  # the client count the ratios and targets compare at
NUMBER_COLUMNS = (
    "clients", "requests", "ok", "errors", "in flight", "ok/s", "predictions/s",
    "p50 ms", "p99 ms", "loadgen cpu s",
)  # fmt: skip


def build_report(
    settings: dict[str, Any],
    kind: LoadgenKind,
    rows: list[dict[str, Any]],
    failures: list[dict[str, str]],
) -> dict[str, Any]:
    """Assemble the results JSON: machine, settings, rows, ratios and targets."""
    ratios, targets = judge(rows)
    report = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadgen": wrk_version() if kind == "wrk" else "python asyncio (uvloop)",
        },
        "settings": settings,
        "results": rows,
        "ratios": ratios,
        "targets": targets,
        "failures": failures,
    }
    doors = rest_and_grpc(rows)
    if doors:
        report["rest_vs_grpc"] = doors
    return report


def rest_and_grpc(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Put tripq's REST and gRPC doors side by side at each client count both were run at."""
    by_point = {(r["system"], r["concurrency"]): r for r in rows}
    pairs = []
    for level in sorted({r["concurrency"] for r in rows}):
        rest, grpc = by_point.get(("tripq", level)), by_point.get(("tripq-grpc", level))
        if rest is None or grpc is None:
            continue
        pairs.append(
            {
                "concurrency": level,
                "rest_rps": rest["rps"],
                "grpc_rps": grpc["rps"],
                "grpc_over_rest": _ratio(grpc["rps"], rest["rps"]),
                "rest_p50_ms": rest["p50_ms"],
                "grpc_p50_ms": grpc["p50_ms"],
                "rest_p99_ms": rest["p99_ms"],
                "grpc_p99_ms": grpc["p99_ms"],
                "rest_errors": rest["errors"],
                "grpc_errors": grpc["errors"],
            }
        )
    return pairs


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 2)


def judge(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Compute the ratios at RATIO_CONCURRENCY (else the highest level run) and the targets."""
    by_point = {(r["system"], r["concurrency"]): r for r in rows}
    levels = sorted({r["concurrency"] for r in rows})
    at = RATIO_CONCURRENCY if RATIO_CONCURRENCY in levels or not levels else levels[-1]

    def rps(system: str) -> float | None:
        row = by_point.get((system, at))
        return None if row is None else float(row["rps"])

    tripq, inprocess, noop, naive = rps("tripq"), rps("inprocess"), rps("noop"), rps("naive")
    ratios = {
        "at_concurrency": at,
        "tripq_over_inprocess": _ratio(tripq, inprocess),
        "tripq_over_noop": _ratio(tripq, noop),
        "tripq_over_naive": _ratio(tripq, naive),
    }
    ratios["tripq_over_tripq_baseline"] = _ratio(tripq, rps("tripq-baseline"))
    ratios["tripq_over_inprocess_compiled"] = _ratio(tripq, rps("inprocess-compiled"))
    tripq_row = by_point.get(("tripq", at))
    single = by_point.get(("tripq", 1))
    batch = [r["predictions_per_s"] for r in rows if r["system"] == "tripq-batch"]
    vs_inprocess = ratios["tripq_over_inprocess"]
    targets = {
        "tripq_vs_inprocess": {
            "target": f"tripq >= 1.5x inprocess, zero errors, p99 <= 50 ms at {at} clients",
            "figure": vs_inprocess,
            "errors": None if tripq_row is None else tripq_row["errors"],
            "p99_ms": None if tripq_row is None else tripq_row["p99_ms"],
            "holds": None
            if vs_inprocess is None or tripq_row is None
            else vs_inprocess >= 1.5 and tripq_row["errors"] == 0 and tripq_row["p99_ms"] <= 50,
        },
        "tripq_vs_noop": {
            "target": f"tripq >= 0.7x noop at {at} clients",
            "figure": ratios["tripq_over_noop"],
            "holds": _at_least(ratios["tripq_over_noop"], 0.7),
        },
        "tripq_vs_naive": {
            "target": f"tripq >= 25x naive at {at} clients (correct answers only)",
            "figure": ratios["tripq_over_naive"],
            # A naive system with no correct answer at all is beaten by any tripq that answers.
            "holds": None if tripq is None or naive is None else tripq > 0 and tripq >= 25 * naive,
        },
        "tripq_vs_tripq_baseline": {
            "target": f"tripq (default model) >= 0.9x tripq serving the baseline, zero errors, "
            f"p99 <= 50 ms at {at} clients",
            "figure": ratios["tripq_over_tripq_baseline"],
            "errors": None if tripq_row is None else tripq_row["errors"],
            "p99_ms": None if tripq_row is None else tripq_row["p99_ms"],
            "holds": None
            if ratios["tripq_over_tripq_baseline"] is None or tripq_row is None
            else ratios["tripq_over_tripq_baseline"] >= 0.9
            and tripq_row["errors"] == 0
            and tripq_row["p99_ms"] <= 50,
        },
        "tripq_p50_one_client": {
            "target": "tripq p50 <= 2 ms at 1 client",
            "figure": None if single is None else single["p50_ms"],
            "holds": None if single is None else single["ok"] > 0 and single["p50_ms"] <= 2,
        },
        "batch_predictions_per_s": {
            "target": "tripq-batch >= 150,000 predictions/s (best client count)",
            "figure": max(batch) if batch else None,
            "holds": _at_least(max(batch) if batch else None, 150_000),
        },
    }
    return ratios, targets


def _at_least(figure: float | None, threshold: float) -> bool | None:
    return None if figure is None else figure >= threshold


def write_report(report: dict[str, Any], output: Path) -> None:
    """Write the JSON, and the plot beside it with the suffix .png."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    plot_results(report["results"], output.with_suffix(".png"))


def plot_results(rows: list[dict[str, Any]], path: Path) -> None:
    """Plot throughput and p99 latency against client count, one line per system."""
    # matplotlib is a dev extra: imported here so the tripq CLI starts without it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    throughput, latency = figure.subplots(1, 2)
    for system in SYSTEMS:
        points = sorted((r for r in rows if r["system"] == system), key=lambda r: r["concurrency"])
        batch = system == "tripq-batch"
        label = f"{system} (predictions/s)" if batch else system
        served = [
            (r["concurrency"], r["predictions_per_s"] if batch else r["rps"])
            for r in points
            if r["ok"] > 0
        ]
        timed = [(r["concurrency"], r["p99_ms"]) for r in points if r["p99_ms"] > 0]
        # Log axes cannot show zero: a point with no correct answer is left out of the line.
        if served:
            throughput.plot(*zip(*served, strict=True), marker="o", label=label)
        if timed:
            latency.plot(*zip(*timed, strict=True), marker="o", label=system)
    throughput.set(title="Throughput (correct answers/s)", ylabel="per second")
    latency.set(title="p99 latency (all replies)", ylabel="ms")
    levels = sorted({r["concurrency"] for r in rows})
    for axes in (throughput, latency):
        axes.set_xscale("log", base=2)
        if levels:
            axes.set_xticks(levels, labels=[str(level) for level in levels])
        axes.set_yscale("log")
        axes.set_xlabel("concurrent clients")
        axes.grid(True, which="both", alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize="small")
    figure.savefig(path, dpi=110)


def progress_line(row: dict[str, Any]) -> str:
    """Sum up one row in a line, printed as soon as its point is measured."""
    extra = f"  {row['predictions_per_s']:,.0f} predictions/s" if "predictions_per_s" in row else ""
    return (
        f"  {row['system']:<11} c={row['concurrency']:<4} {row['rps']:>10,.1f} ok/s{extra}"
        f"  errors {row['errors']:,}  in flight {row['unfinished']:,}"
        f"  p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms"
        f"  loadgen cpu {row['loadgen_cpu_s']:.1f} s"
    )


def print_report(report: dict[str, Any], console: Console) -> None:
    """Print the results table, the ratios and the targets."""
    table = Table(title=escape(f"tripq bench ({report['machine']['loadgen']})"))
    table.add_column("system")
    for column in NUMBER_COLUMNS:
        table.add_column(column, justify="right")
    for r in report["results"]:
        predictions = f"{r['predictions_per_s']:,.0f}" if "predictions_per_s" in r else ""
        table.add_row(
            r["system"],
            str(r["concurrency"]),
            f"{r['requests']:,}",
            f"{r['ok']:,}",
            f"{r['errors']:,}",
            f"{r['unfinished']:,}",
            f"{r['rps']:,.1f}",
            predictions,
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{r['loadgen_cpu_s']:.1f}",
        )
    console.print(table)
    ratios = report["ratios"]
    console.print(
        f"at {ratios['at_concurrency']} clients: tripq/inprocess {ratios['tripq_over_inprocess']}"
        f"  tripq/noop {ratios['tripq_over_noop']}  tripq/naive {ratios['tripq_over_naive']}"
    )
    for target in report["targets"].values():
        verdict = {True: "[green]holds[/]", False: "[red]misses[/]", None: "not measured"}
        console.print(f"  {verdict[target['holds']]}  {target['target']}: {target['figure']}")
    for pair in report.get("rest_vs_grpc", []):
        console.print(
            f"  {pair['concurrency']} clients: REST {pair['rest_rps']:,.1f}/s "
            f"p99 {pair['rest_p99_ms']:.2f} ms, gRPC {pair['grpc_rps']:,.1f}/s "
            f"p99 {pair['grpc_p99_ms']:.2f} ms (gRPC/REST {pair['grpc_over_rest']})"
        )
    for failure in report["failures"]:
        console.print(f"[red]{failure['deployment']} failed[/red]")
