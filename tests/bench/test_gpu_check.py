"""bench/gpu_check.sh, the GPU check, runs end to end: here on PyTorch's CPU device (DEVICE=cpu),
so that the script a GPU machine runs is known to work before one is lent."""

import json
import os
import subprocess
from pathlib import Path

from tests.core.conftest import REPO_ROOT


def test_the_gpu_check_runs_its_tests_and_prints_its_table(tmp_path: Path) -> None:
    output = tmp_path / "devices.json"
    env = {**os.environ, "DEVICE": "cpu", "SIZES": "1,64", "OUTPUT": str(output)}

    done = subprocess.run(
        ["bash", "bench/gpu_check.sh"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout
    assert "device/cpu" in done.stdout
    results = json.loads(output.read_text())
    assert [row["trips"] for row in results["rows"]] == [1, 64]
    assert all(row["max_difference_min"] <= 1e-6 for row in results["rows"])
    assert results["machine"]["device"] == "cpu"
