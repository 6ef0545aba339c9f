"""Starting tripq's processes: their command lines, and one way to start and stop a child.

    api_argv / gunicorn_argv     the API (or any ASGI app) under gunicorn, tripq's gunicorn config
    worker_argv / celery_argv    a Celery worker of tasks.app (tripq's: the gevent pool)
    tripq_argv                   a `tripq` subcommand (python -m boot.cli)
    Child                        a child in a session of its own, its output in a log file
    stop_processes               SIGTERM, then SIGKILL to the whole session after a bound

`tripq` (boot.cli, boot.procs), the bench (bench.runner) and the tests (tests.support) all start
their processes from here, so a worker or an API runs with one command line wherever it starts.
"""

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import IO

from config import PROJECT_ROOT, Settings

GUNICORN_CONF = PROJECT_ROOT / "boot" / "gunicorn_conf.py"
API_APP = "apps.main:app"
STOP_TIMEOUT_S = 20.0  # how long a Child has to exit after its signal, by default
_POLL_S = 0.05
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def gunicorn_argv(app: str, host: str, port: int, workers: int) -> list[str]:
    """Serve the ASGI `app` as tripq's API is served: under gunicorn with its config."""
    return [
        sys.executable, "-m", "gunicorn",
        "--config", str(GUNICORN_CONF),
        "--bind", f"{host}:{port}",
        "--workers", str(workers),
        app,
    ]  # fmt: skip


def api_argv(host: str, port: int, workers: int) -> list[str]:
    """Build the command line of the API under gunicorn."""
    return gunicorn_argv(API_APP, host, port, workers)


def celery_argv(*args: str) -> list[str]:
    """Build the command line of a Celery worker of tasks.app, with `args` after `worker`."""
    return [sys.executable, "-m", "celery", "--app", "tasks.app", "worker", *args]


def worker_argv(settings: Settings, index: int, concurrency: int, host: str = "%h") -> list[str]:
    """Build the command line of one tripq worker process with the gevent pool, named
    `trip<index>@<host>` (Celery reads %h as this machine's hostname, as a container's is)."""
    return celery_argv(
        "--pool", "gevent",
        "--concurrency", str(concurrency),
        "--queues", f"{settings.queue},{settings.job_queue}",
        "--hostname", f"trip{index}@{host}",
        "--loglevel", settings.log_level,
        # No start-up sync or gossip between workers: tripq tracks workers by heartbeat.
        "--without-mingle", "--without-gossip",
    )  # fmt: skip


def prefork_worker_argv(queue: str, processes: int, *, prefetch_one: bool = False) -> list[str]:
    """Build the command line of a Celery worker with the prefork pool (the bench's others)."""
    prefetch = ["--prefetch-multiplier", "1"] if prefetch_one else []
    return celery_argv(
        "--pool", "prefork", "--concurrency", str(processes), *prefetch,
        "--queues", queue, "--without-mingle", "--without-gossip",
        "--loglevel", "WARNING",
    )  # fmt: skip


def tripq_argv(*args: str) -> list[str]:
    """Build the command line of a `tripq` subcommand."""
    return [sys.executable, "-m", "boot.cli", *args]


def start_process(
    argv: Sequence[str],
    env: Mapping[str, str],
    log: IO[bytes] | None = None,
    cwd: Path | None = None,
    *,
    end_with_parent: bool = False,
) -> "subprocess.Popen[bytes]":
    """Start a child in a session of its own (a terminal's Ctrl-C reaches only its parent), in
    `cwd` (None: this one's); its output goes to `log`, or where its parent's goes.

    `end_with_parent`: the child gets SIGTERM when this process dies, even by SIGKILL (Linux),
    so a supervisor's workers never run on as orphans, heartbeating and taking tasks.
    """
    preexec = _parent_death_signal(os.getpid()) if end_with_parent else None
    if log is None:
        return subprocess.Popen(
            list(argv), cwd=cwd, env=dict(env), start_new_session=True, preexec_fn=preexec
        )
    return subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=dict(env),
        start_new_session=True,
        preexec_fn=preexec,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _parent_death_signal(parent: int) -> Callable[[], None] | None:
    """Make the function a child runs before exec to be sent SIGTERM when `parent` dies."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None  # not Linux: children of a killed supervisor must be stopped by hand

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # it died before the signal was armed
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


def stop_processes(
    processes: Sequence["subprocess.Popen[bytes]"], timeout_s: float, sig: int = signal.SIGTERM
) -> None:
    """Send `sig` to each process, newest first; once each exits, or `timeout_s` passes, SIGKILL
    whatever is left of its session, and reap it."""
    for process in reversed(processes):
        if process.returncode is None:
            with suppress(ProcessLookupError):
                os.kill(process.pid, sig)
    deadline = time.monotonic() + timeout_s
    for process in reversed(processes):
        if process.returncode is not None:
            continue
        _wait_exited(process.pid, deadline)
        # The leader is a zombie now or still running: either way its pid, and so its process
        # group, cannot belong to anyone else yet. Whatever of it is left goes.
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _wait_exited(pid: int, deadline: float) -> bool:
    """Wait until a child has exited, without reaping it; False once `deadline` passes."""
    while True:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)


class Child:
    """A process started in a session of its own in the project's root, its output kept in
    `<log_dir>/<name>.log`."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        log_dir: Path,
        stop_timeout_s: float = STOP_TIMEOUT_S,
    ) -> None:
        self.name = name
        self.stop_timeout_s = stop_timeout_s
        self.log_path = log_dir / f"{name}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        try:
            self.process = start_process(argv, env, self._log, PROJECT_ROOT)
        except OSError:
            self._log.close()
            raise

    def alive(self) -> bool:
        """Tell whether the process still runs."""
        return self.process.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        """Return the end of the process's output, for failure messages."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Stop the process (`sig`, then SIGKILL to its session after `stop_timeout_s`) and reap
        it; return its exit code."""
        stop_processes([self.process], self.stop_timeout_s, sig)
        if not self._log.closed:
            self._log.close()
        return self.process.returncode
