"""`tripq models export`, run as a real process: the files it writes and what it says."""

import hashlib
import json
from pathlib import Path

from core.trip.contract import PICKUP_TIME
from tests.support import REPO, Service, tripq_env

MODELS = REPO / "repo" / "models"
TIMEOUT_S = 60


def export(tmp_path: Path, *args: str) -> tuple[int, str]:
    """Run `tripq models export ARGS`; return its exit code and output."""
    env = tripq_env("redis://unused", tmp_path, artifact_dir=MODELS)
    command = Service(
        f"export-{len(list(tmp_path.iterdir()))}", ["models", "export", *args], env, tmp_path
    )
    code = command.finish(TIMEOUT_S)
    return code, command.log_tail(chars=20_000)


def test_export_writes_the_onnx_file_and_its_card_and_names_what_the_caller_computes(
    tmp_path: Path,
) -> None:
    out = tmp_path / "onnx"

    code, said = export(tmp_path, "gbm-2021-01-v2", "--format", "onnx", "--output", str(out))

    assert code == 0, said
    onnx_file, card_file = out / "gbm-2021-01-v2.onnx", out / "gbm-2021-01-v2.onnx.json"
    card = json.loads(card_file.read_text())
    assert card["sha256"] == hashlib.sha256(onnx_file.read_bytes()).hexdigest()
    assert card["sha256"] in said
    assert "not in the file, left to the caller: pickup_datetime" in said
    assert PICKUP_TIME in said


def test_export_of_an_unknown_version_fails_naming_it(tmp_path: Path) -> None:
    code, said = export(tmp_path, "no-such-model", "--output", str(tmp_path / "onnx"))

    assert code == 1
    assert "'no-such-model' not found" in said
    assert not (tmp_path / "onnx").exists()


def test_export_to_an_unknown_format_is_refused_naming_the_option(tmp_path: Path) -> None:
    code, said = export(tmp_path, "gbm-2021-01-v2", "--format", "pmml")

    assert code == 2
    assert "--format" in said
