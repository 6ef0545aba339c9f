"""gunicorn settings of the API; `tripq api` flags override bind and workers."""

import shutil
import tempfile
from pathlib import Path
from typing import Any

from config import get_settings, prometheus_multiproc_dir, set_prometheus_multiproc_dir
from core.infra.logs import configure_logging

_settings = get_settings()

# Metrics of all the API processes, summed by whichever one a scrape reaches (core.infra.metrics): a
# folder of their own for this gunicorn (or the operator's), set before any worker forks and
# imports prometheus_client, which reads it once at import; so nothing here may import it.
# prometheus_client reads only the environment, hence config's setter of PROMETHEUS_MULTIPROC_DIR.
_own_metrics_dir = prometheus_multiproc_dir() is None

bind = f"{_settings.api_host}:{_settings.api_port}"
workers = _settings.api_workers
worker_class = "boot.uvicorn_worker.TripqUvicornWorker"
# A stopping worker finishes the requests already waiting, the most patient of which may wait
# REQUEST_TIMEOUT_MAX_S (a client's X-Request-Timeout).
graceful_timeout = int(_settings.request_timeout_max_s) + 5
timeout = 30
keepalive = 5
# Behind a proxy (compose's nginx), the client's address is the one the proxy saw, taken from its
# X-Forwarded-For only when the connection comes from one of these: anyone else could forge it.
forwarded_allow_ips = _settings.forwarded_allow_ips
accesslog = None
proc_name = "tripq-api"


def on_starting(server: Any) -> None:
    """Route gunicorn's own logging into loguru, and start the metrics afresh, before any
    worker forks."""
    if _own_metrics_dir:
        set_prometheus_multiproc_dir(tempfile.mkdtemp(prefix="tripq-api-metrics-"))
    for stale in Path(str(prometheus_multiproc_dir())).glob("*.db"):
        stale.unlink()
    configure_logging(
        "gunicorn",
        _settings.log_dir / "apps" / "api",
        level=_settings.log_level,
        json_lines=_settings.log_json,
    )


def child_exit(server: Any, worker: Any) -> None:
    """Drop a dead API process's live gauges; its counters stay in the sums."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_exit(server: Any) -> None:
    """Remove the metrics folder this gunicorn made."""
    if _own_metrics_dir:
        shutil.rmtree(str(prometheus_multiproc_dir()), ignore_errors=True)
