"""Helpers that run real tripq processes for the tests: workers, the API, bounded waits."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import httpx
import pytest
import redis

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "nyc-tlc"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


def free_port() -> int:
    """Ask the kernel for a free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(condition: Callable[[], object], timeout_s: float, what: str) -> None:
    """Poll `condition` until it is truthy; fail the test with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")


class Service:
    """A `tripq` subcommand run as a child process, its output kept in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "boot.cli", *args],
            env=env,
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        """Tell whether the process still runs."""
        return self.process.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        """Return the end of the process's output, for failure messages."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def finish(self, timeout_s: float) -> int:
        """Wait for the process to exit by itself; return its exit code."""
        try:
            self.process.wait(timeout_s)
        finally:
            self.stop()
        return self.process.returncode

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Stop the process (and its children) and reap it; return its exit code."""
        if self.alive():
            self.process.send_signal(sig)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if not self._log.closed:
            self._log.close()
        return self.process.returncode


def tripq_env(redis_url: str, log_dir: Path, **settings: object) -> dict[str, str]:
    """Build a child's environment: this Redis, logs under `log_dir`, and any setting overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_")}
    env.update(REDIS_URL=redis_url, LOG_DIR=str(log_dir), PYTHONUNBUFFERED="1")
    env.update({name.upper(): str(value) for name, value in settings.items()})
    return env


def start_worker(env: dict[str, str], log_dir: Path, concurrency: int = 8) -> Service:
    """Start one worker process and wait until its heartbeat says it holds a model."""
    worker = Service(
        f"worker-{time.monotonic_ns()}",
        ["worker", "--processes", "1", "--concurrency", str(concurrency)],
        env,
        log_dir,
    )
    client = redis.Redis.from_url(env["REDIS_URL"])
    try:

        def holds_model() -> bool:
            if not worker.alive():
                pytest.fail(f"worker exited at start:\n{worker.log_tail()}")
            return any(b'"model_version": "' in v for v in client.hvals("tripq:workers:info"))

        wait_until(holds_model, START_TIMEOUT_S, "a worker to load its model")
    finally:
        client.close()
    return worker


def start_api(env: dict[str, str], log_dir: Path) -> tuple[Service, str]:
    """Start the API (gunicorn, one uvicorn worker) on a free port; return it and its base URL."""
    port = free_port()
    api = Service(
        f"api-{port}",
        ["api", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env,
        log_dir,
    )
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if not api.alive():
            pytest.fail(f"API exited at start:\n{api.log_tail()}")
        try:
            return httpx.get(f"{base}/health", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(answers, START_TIMEOUT_S, "the API to answer /health")
    return api, base
