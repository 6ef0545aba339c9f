"""Importing the worker's modules opens nothing: each resource is made on first use."""

import subprocess
import sys

from config import PROJECT_ROOT

PROBE = """
import tasks.app, tasks.worker, tasks.trip.jobs, tasks.trip.tasks
from core.worker import process
assert process.broker_client.cache_info().currsize == 0, "a Redis client made at import"
assert process.job_execution.cache_info().currsize == 0
assert process.webhook_delivery.cache_info().currsize == 0
"""


def test_importing_the_task_modules_makes_no_redis_client() -> None:
    # A fresh interpreter: another test may already have made the clients in this one.
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=PROJECT_ROOT, capture_output=True, timeout=120
    )

    assert done.returncode == 0, done.stderr.decode()[-2000:]
