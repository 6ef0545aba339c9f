"""One launcher for boot, bench and tests: command lines, and a stop that is always bounded."""

import signal
import sys
import time
from pathlib import Path

from config import Settings
from core.infra.launch import Child, api_argv, worker_argv


def test_the_worker_command_line_takes_both_queues_with_the_gevent_pool() -> None:
    settings = Settings()

    argv = worker_argv(settings, 2, 16)

    assert argv[:6] == [sys.executable, "-m", "celery", "--app", "tasks.app", "worker"]
    assert argv[argv.index("--pool") + 1] == "gevent"
    assert argv[argv.index("--queues") + 1] == f"{settings.queue},{settings.job_queue}"
    assert argv[argv.index("--hostname") + 1] == "trip2@%h"


def test_the_api_command_line_serves_the_app_with_tripqs_gunicorn_config() -> None:
    argv = api_argv("127.0.0.1", 8123, 3)

    assert argv[-1] == "apps.main:app"
    assert argv[argv.index("--config") + 1].endswith("boot/gunicorn_conf.py")
    assert argv[argv.index("--bind") + 1] == "127.0.0.1:8123"


def test_a_child_that_ignores_sigterm_is_killed_after_its_bound(tmp_path: Path) -> None:
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    child = Child("stubborn", [sys.executable, "-c", stubborn], {}, tmp_path, stop_timeout_s=0.5)
    time.sleep(0.3)  # let it install its handler

    started = time.monotonic()
    code = child.stop()

    assert code == -signal.SIGKILL
    assert time.monotonic() - started < 5.0
    assert not child.alive()
