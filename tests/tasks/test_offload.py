"""What runs on a worker process's native threads: one OpenMP thread a call, no logging there.

Each probe runs in a fresh interpreter, since gevent's monkey-patching and OpenMP's settings are
made once per process.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.support import REPO

_OPENMP_PROBE = """
import json
import threading

import tasks.app  # what `celery --app tasks.app worker` imports first
from sklearn.ensemble import HistGradientBoostingRegressor  # loads OpenMP, as a gbm model does
from threadpoolctl import threadpool_info

seen = []


def probe():
    seen.extend(i["num_threads"] for i in threadpool_info() if i["user_api"] == "openmp")


thread = threading.Thread(target=probe)  # inference runs on native threads like this one
thread.start()
thread.join()
print(json.dumps(seen))
"""

_WARNING_PROBE = """
from gevent import monkey

monkey.patch_all()

import json
import time
import warnings

import gevent

from tasks.offload import run_off_hub, show_warnings_on_hub

native_ident = monkey.get_original("_thread", "get_ident")
shown = []
warnings.showwarning = lambda message, *rest: shown.append([str(message), native_ident()])
show_warnings_on_hub()
raised_on = run_off_hub(lambda: (warnings.warn("from a native thread"), native_ident())[1])
deadline = time.monotonic() + 10
while not shown and time.monotonic() < deadline:
    gevent.sleep(0.01)
print(json.dumps({"hub": native_ident(), "raised_on": raised_on, "shown": shown}))
"""


def _probe(code: str, env: dict[str, str] | None = None) -> object:
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="OpenMP uses one thread on one core anyway")
def test_a_worker_process_runs_each_inference_call_on_one_openmp_thread() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}

    assert _probe(_OPENMP_PROBE, env) == [1]


def test_a_warning_raised_on_a_native_thread_is_shown_from_the_hubs_thread() -> None:
    seen = _probe(_WARNING_PROBE)

    assert isinstance(seen, dict)
    assert seen["raised_on"] != seen["hub"]
    assert seen["shown"] == [["from a native thread", seen["hub"]]]
