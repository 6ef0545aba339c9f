"""Benchmark two revisions of tripq side by side, taking turns, on one machine in one run.

    python -m bench.revisions BEFORE [--rounds 3] [--duration 6] [--output FILE]

The revision BEFORE is checked out into a temporary git worktree; each round runs
`tripq bench --systems tripq --concurrency 64` from it and then from this working
tree, so drifts of a shared, noisy machine fall on both alike. Each side runs its own code (its
folder first on PYTHONPATH, in its own working directory). The compiled trees are shared when
both revisions serve the same artifact (they are cached under its sha256).
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from config import child_environment

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "bench" / "results" / "revisions.json"
SYSTEMS = ("tripq",)
CONCURRENCY = 64


def _bench(tree: Path, duration_s: float, output: Path) -> list[dict[str, Any]]:
    """Run `tripq bench` from `tree` and return its result rows."""
    env = child_environment(PYTHONPATH=str(tree))
    command = [
        sys.executable,
        "-m",
        "boot.cli",
        "bench",
        "--systems",
        ",".join(SYSTEMS),
        "--concurrency",
        str(CONCURRENCY),
        "--duration",
        str(duration_s),
        "--output",
        str(output),
    ]
    subprocess.run(command, cwd=tree, env=env, check=True)
    rows: list[dict[str, Any]] = json.loads(output.read_text())["results"]
    return rows


def _summary(runs: list[list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Median ok/s and p99 per system over the runs of one side."""
    summary = {}
    for system in SYSTEMS:
        rows = [row for run in runs for row in run if row["system"] == system]
        summary[system] = {
            "ok_per_s": statistics.median(r["ok"] / r["duration_s"] for r in rows),
            "p99_ms": statistics.median(r["p99_ms"] for r in rows),
            "errors": sum(r["errors"] for r in rows),
        }
    return summary


def compare(before: str, rounds: int, duration_s: float) -> dict[str, Any]:
    """Bench `before` and this working tree, in turns, and return both with their ratios."""
    runs: dict[str, list[list[dict[str, Any]]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="tripq-revisions-") as scratch:
        worktree = Path(scratch) / "before"
        subprocess.run(
            ["git", "worktree", "add", "-q", str(worktree), before], cwd=ROOT, check=True
        )
        try:
            trees = ROOT / "repo" / "cache" / "trees"
            if trees.is_dir():
                shutil.copytree(trees, worktree / "repo" / "cache" / "trees")
            sides = [("before", worktree), ("after", ROOT)]
            for index in range(rounds):
                # ABBA: each side goes first in every other round, so a drift favours neither.
                for side, tree in sides if index % 2 == 0 else sides[::-1]:
                    out = Path(scratch) / f"{side}-{index}.json"
                    runs[side].append(_bench(tree, duration_s, out))
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, check=False
            )
    summaries = {side: _summary(side_runs) for side, side_runs in runs.items()}
    ratios = {
        system: round(
            summaries["after"][system]["ok_per_s"] / summaries["before"][system]["ok_per_s"], 3
        )
        for system in SYSTEMS
    }
    return {
        "before": before,
        "after": "working tree",
        "rounds": rounds,
        "duration_s": duration_s,
        "concurrency": CONCURRENCY,
        "median": summaries,
        "after_over_before_ok_per_s": ratios,
        "runs": runs,
    }


def main() -> None:
    """Parse the command line, compare, write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", help="the git revision to compare this working tree with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    report = compare(args.before, args.rounds, args.duration)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("median", "after_over_before_ok_per_s")}, indent=2))


if __name__ == "__main__":
    main()
