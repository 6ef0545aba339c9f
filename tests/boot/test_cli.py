"""The `tripq` command's process management and help, run as real processes."""

import signal
import socket
import time
from pathlib import Path

import psutil
import pytest
import redis

from tests.support import (
    START_TIMEOUT_S,
    Service,
    heartbeat_since,
    start_worker,
    tripq_env,
    wait_until,
)

COMMANDS = [
    "up", "api", "worker", "workers", "predict", "train", "evaluate", "bench", "score"
]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, tmp_path: Path) -> None:
    helper = Service(
        f"help-{command}", [command, "--help"], tripq_env("redis://x", tmp_path), tmp_path
    )

    assert helper.finish(30) == 0
    assert "Usage" in helper.log_tail(chars=50_000)


def test_worker_processes_start_heartbeat_and_stop_together(
    redis_url: str, redis_client: redis.Redis, log_dir: Path
) -> None:
    workers = Service(
        "workers-2",
        ["worker", "--processes", "2", "--concurrency", "2"],
        tripq_env(redis_url, log_dir),
        log_dir,
    )

    def names() -> set[str]:
        members = redis_client.zrange("tripq:workers", 0, -1)
        return {str(n, "utf-8").split("@")[0] for n in members if isinstance(n, bytes)}

    try:
        wait_until(lambda: names() == {"trip1", "trip2"}, START_TIMEOUT_S, "two worker heartbeats")
        children = psutil.Process(workers.process.pid).children(recursive=True)
        lister = Service("workers-list", ["workers"], tripq_env(redis_url, log_dir), log_dir)
        assert lister.finish(30) == 0
        assert "trip1@" in lister.log_tail()
        assert "trip2@" in lister.log_tail()
    finally:
        code = workers.stop(signal.SIGTERM)

    assert code == 0
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []
    # A worker that stops says goodbye: its heartbeat entry is gone at once.
    assert redis_client.zcard("tripq:workers") == 0


def test_worker_processes_end_with_their_supervisor_when_it_is_sigkilled(
    redis_url: str, redis_client: redis.Redis, log_dir: Path
) -> None:
    workers = Service(
        "workers-orphans",
        ["worker", "--processes", "2", "--concurrency", "2"],
        tripq_env(redis_url, log_dir),
        log_dir,
    )
    try:
        wait_until(
            lambda: redis_client.zcard("tripq:workers") == 2, START_TIMEOUT_S, "two heartbeats"
        )
        children = psutil.Process(workers.process.pid).children()
        assert len(children) == 2
    finally:
        workers.process.kill()  # the supervisor only: its children are not signalled
        workers.process.wait()
        workers.stop()  # reaped already: this only closes its log

    # They get SIGTERM from the kernel and stop as on any SIGTERM: their heartbeats go too.
    _, alive = psutil.wait_procs(children, timeout=30)
    assert alive == []
    assert redis_client.zcard("tripq:workers") == 0


def test_a_worker_process_that_dies_is_started_again_while_the_other_serves(
    redis_url: str, redis_client: redis.Redis, log_dir: Path
) -> None:
    workers = Service(
        "workers-restart",
        ["worker", "--processes", "2", "--concurrency", "2"],
        tripq_env(redis_url, log_dir),
        log_dir,
    )
    host = socket.gethostname()
    try:
        wait_until(
            lambda: redis_client.zcard("tripq:workers") == 2, START_TIMEOUT_S, "two heartbeats"
        )
        started = psutil.Process(workers.process.pid).children()
        (first,) = [c for c in started if "trip1@%h" in c.cmdline()]
        (second,) = [c for c in started if c.pid != first.pid]
        first.kill()
        killed_at = time.time()
        first.wait(10)
        wait_until(
            lambda: heartbeat_since(redis_client, f"trip1@{host}", killed_at),
            START_TIMEOUT_S,
            "the killed worker's replacement to beat",
        )
        children = psutil.Process(workers.process.pid).children()
        assert workers.alive()
        assert len(children) == 2
        assert first.pid not in {c.pid for c in children}
        assert second.is_running()
        # The workers write to the same log as their supervisor: look at all of it.
        assert "worker 1 exited with code -9; restarting in 1 s" in workers.log_tail(10**7)
    finally:
        assert workers.stop(signal.SIGTERM) == 0


def test_workers_require_host_fails_when_no_worker_runs_there(
    redis_url: str, log_dir: Path
) -> None:
    check = Service(
        "workers-check",
        ["workers", "--require-host", "no-such-host"],
        tripq_env(redis_url, log_dir),
        log_dir,
    )

    assert check.finish(30) == 1


def require_host(env: dict[str, str], log_dir: Path) -> int:
    """Run the workers healthcheck for this host; return its exit code."""
    host = socket.gethostname()
    return Service("workers-check", ["workers", "--require-host", host], env, log_dir).finish(30)


def test_workers_require_host_passes_only_for_a_worker_that_holds_a_model(
    redis_url: str, redis_client: redis.Redis, log_dir: Path
) -> None:
    env = tripq_env(redis_url, log_dir)
    broken = Service(
        "worker-no-model",
        ["worker", "--processes", "1", "--concurrency", "2"],
        {**env, "SERVING_VERSION": "no-such-version"},
        log_dir,
    )
    try:
        # Alive and beating, but without a model: it must not count as healthy.
        name = f"trip1@{socket.gethostname()}"
        wait_until(
            lambda: redis_client.zscore("tripq:workers", name) is not None,
            START_TIMEOUT_S,
            "the worker without a model to beat",
        )
        assert require_host(env, log_dir) == 1
    finally:
        assert broken.stop(signal.SIGTERM) == 0

    worker = start_worker(env, log_dir)
    try:
        assert require_host(env, log_dir) == 0
    finally:
        worker.stop()
