"""A trained model's report: its errors overall and by borough, three plots, and one HTML page.

<model dir>/report/
    report.html               the page: what was trained on what, the tables, the plots
    report.json               the same figures, for scripts
    predicted_vs_actual.png   where the predictions fall against the true durations
    residuals_vs_distance.png how the error depends on the trip's distance
    error_by_borough.png      RMSE by pickup borough, with the trips behind each bar
"""

import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from numpy.typing import NDArray

from core.model.registry import ModelCard
from core.trip.contract import DISTANCE

_DISTANCE_BINS = (0, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, math.inf)
_SAMPLE = 5000  # points drawn in the residual scatter
_MAX_PLOT_MILES = 100.0
_UNKNOWN = "Unknown zone"


def _scores(actual: NDArray[np.float64], predicted: NDArray[np.float64]) -> dict[str, float]:
    errors = predicted - actual
    total = float(np.sum((actual - actual.mean()) ** 2))
    r2 = 1.0 - float(np.sum(errors**2)) / total if total > 0 else 0.0
    return {
        "rows": len(actual),
        "rmse": math.sqrt(float(np.mean(errors**2))),
        "mae": float(np.mean(np.abs(errors))),
        "r2": r2,
    }


def pickup_boroughs(trips: pd.DataFrame, zones: pd.DataFrame | None) -> "pd.Series[str]":
    """Name each trip's pickup borough from the zone lookup ("Unknown zone" without one)."""
    if zones is None:
        return pd.Series(_UNKNOWN, index=trips.index)
    names = dict(zip(zones["LocationID"].astype(str), zones["Borough"].astype(str), strict=True))
    ids = pd.to_numeric(trips["PULocationID"], errors="coerce").astype("Int64").astype(str)
    return ids.map(names).fillna(_UNKNOWN)


def write_report(
    folder: Path,
    card: ModelCard,
    valid: pd.DataFrame,
    predicted: NDArray[np.float64],
    zones: pd.DataFrame | None,
) -> dict[str, Any]:
    """Write the report of a model validated on `valid` (read_trips) into `folder`; its figures."""
    folder.mkdir(parents=True, exist_ok=True)
    actual = valid["duration"].to_numpy(dtype=np.float64)
    boroughs = pickup_boroughs(valid, zones)
    by_borough = {
        name: _scores(actual[mask], predicted[mask])
        for name in sorted(boroughs.unique())
        if (mask := (boroughs == name).to_numpy()).any()
    }
    figures = {
        "model": card.version,
        "kind": card.kind,
        "valid_files": [f.name for f in card.valid_files],
        "overall": _scores(actual, predicted),
        "train_rmse": card.metrics.get("train_rmse"),
        "by_pickup_borough": by_borough,
    }
    _plot_predicted_vs_actual(folder / "predicted_vs_actual.png", actual, predicted)
    distance = valid[DISTANCE].to_numpy(dtype=np.float64)
    _plot_residuals(folder / "residuals_vs_distance.png", distance, predicted - actual)
    _plot_boroughs(folder / "error_by_borough.png", by_borough)
    (folder / "report.json").write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    (folder / "report.html").write_text(_page(card, figures), encoding="utf-8")
    return figures


def _plot_predicted_vs_actual(
    path: Path, actual: NDArray[np.float64], predicted: NDArray[np.float64]
) -> None:
    figure = Figure(figsize=(6, 5.5), layout="constrained")
    axes = figure.subplots()
    cells = axes.hexbin(actual, predicted, gridsize=60, bins="log", cmap="viridis", mincnt=1)
    axes.plot([0, 60], [0, 60], color="tab:red", linewidth=1, label="perfect")
    axes.set(xlabel="actual minutes", ylabel="predicted minutes", title="Predicted vs actual")
    axes.legend(loc="upper left")
    figure.colorbar(cells, ax=axes, label="trips (log)")
    figure.savefig(path, dpi=100)


def _plot_residuals(path: Path, distance: NDArray[np.float64], error: NDArray[np.float64]) -> None:
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.subplots()
    # Odometer glitches (thousands of miles) would squash the plot: show them at its right edge.
    distance = np.minimum(distance, _MAX_PLOT_MILES)
    sample = np.random.default_rng(0).permutation(len(error))[:_SAMPLE]
    axes.scatter(distance[sample], error[sample], s=3, alpha=0.25, color="tab:gray")
    edges = np.asarray(_DISTANCE_BINS)
    bins = np.digitize(distance, edges[1:-1])
    centers, means, rmses = [], [], []
    for b in range(len(edges) - 1):
        in_bin = error[bins == b]
        if len(in_bin):
            upper = edges[b + 1] if math.isfinite(edges[b + 1]) else edges[b] * 1.5
            centers.append((edges[b] + upper) / 2)
            means.append(float(in_bin.mean()))
            rmses.append(math.sqrt(float(np.mean(in_bin**2))))
    axes.plot(centers, means, marker="o", color="tab:blue", label="mean error")
    axes.plot(centers, rmses, marker="s", color="tab:orange", label="RMSE")
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set_xscale("symlog", linthresh=1)
    axes.set(
        xlabel="trip distance (miles)",
        ylabel="predicted - actual (minutes)",
        title="Residuals vs distance",
        xlim=(0, _MAX_PLOT_MILES),
        ylim=(-60, 60),
    )
    axes.legend(loc="lower right")
    figure.savefig(path, dpi=100)


def _plot_boroughs(path: Path, by_borough: dict[str, dict[str, float]]) -> None:
    figure = Figure(figsize=(7, 4), layout="constrained")
    axes = figure.subplots()
    names = list(by_borough)
    bars = axes.bar(names, [by_borough[n]["rmse"] for n in names], color="tab:blue")
    for bar, name in zip(bars, names, strict=True):
        axes.annotate(
            f"{int(by_borough[name]['rows']):,} trips",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    axes.set(ylabel="RMSE (minutes)", title="Error by pickup borough")
    axes.tick_params(axis="x", labelrotation=20)
    figure.savefig(path, dpi=100)


def _row(name: str, scores: dict[str, float]) -> str:
    return (
        f"<tr><td>{html.escape(name)}</td><td>{int(scores['rows']):,}</td>"
        f"<td>{scores['rmse']:.3f}</td><td>{scores['mae']:.3f}</td><td>{scores['r2']:.3f}</td></tr>"
    )


def _page(card: ModelCard, figures: dict[str, Any]) -> str:
    header = "<tr><th>trips</th><th>rows</th><th>RMSE</th><th>MAE</th><th>R²</th></tr>"
    overall = _row(", ".join(figures["valid_files"]), figures["overall"])
    boroughs = "".join(_row(n, s) for n, s in figures["by_pickup_borough"].items())
    train = ", ".join(f"{f.name} ({f.rows:,} trips)" for f in card.train_files)
    plots = "".join(
        f'<figure><img src="{name}.png" alt="{html.escape(title)}"></figure>'
        for name, title in (
            ("predicted_vs_actual", "predicted against actual minutes"),
            ("residuals_vs_distance", "residuals against trip distance"),
            ("error_by_borough", "RMSE by pickup borough"),
        )
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>tripq model {html.escape(card.version)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; }}
table {{ border-collapse: collapse; margin-bottom: 1.5rem; }}
td, th {{ border: 1px solid #ccc; padding: 0.3rem 0.7rem; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>Model {html.escape(card.version)} <small>({html.escape(card.kind)})</small></h1>
<p>Trained {html.escape(card.created)} on {html.escape(train)}; training RMSE
{card.metrics.get("train_rmse", math.nan):.3f} minutes. Durations are in minutes; trips of 1 to 60
minutes count.</p>
<h2>Validation</h2>
<table>{header}{overall}</table>
<h2>By pickup borough</h2>
<table>{header}{boroughs}</table>
<h2>Plots</h2>
{plots}
</body></html>
"""
