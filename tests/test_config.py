"""The settings refuse combinations that would break a promise, before any process serves."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from config import Settings
from tests.support import Service, tripq_env


def test_a_default_deadline_beyond_its_cap_is_refused() -> None:
    # Tasks are sized against the cap: a longer default would let a task run twice.
    with pytest.raises(ValidationError, match=r"REQUEST_TIMEOUT_S \(10\) must not exceed"):
        Settings(request_timeout_s=10, request_timeout_max_s=5)

    assert Settings(request_timeout_s=5, request_timeout_max_s=5).request_timeout_s == 5


def test_a_process_given_such_settings_refuses_to_start(tmp_path: Path) -> None:
    env = tripq_env(
        "redis://127.0.0.1:1/0", tmp_path, request_timeout_s=10, request_timeout_max_s=5
    )
    worker = Service("worker-bad-deadline", ["worker", "--processes", "1"], env, tmp_path)

    assert worker.finish(60) != 0
    assert "REQUEST_TIMEOUT_S (10) must not exceed REQUEST_TIMEOUT_MAX_S (5)" in worker.log_tail()


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:3"])
def test_inference_devices_tripq_knows_are_taken(device: str) -> None:
    assert Settings(inference_device=device).inference_device == device


@pytest.mark.parametrize("device", ["gpu", "CUDA", "cuda:", "cuda:x", "mps", "cpu "])
def test_other_inference_devices_are_refused(device: str) -> None:
    with pytest.raises(ValidationError, match="inference_device"):
        Settings(inference_device=device)
