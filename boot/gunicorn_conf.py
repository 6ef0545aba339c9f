"""gunicorn settings of the API; `tripq api` flags override bind and workers."""

from typing import Any

from config import get_settings
from core.logs import configure_logging

_settings = get_settings()

bind = f"{_settings.api_host}:{_settings.api_port}"
workers = _settings.api_workers
worker_class = "boot.uvicorn_worker.TripqUvicornWorker"
# A stopping worker finishes the requests already waiting, the most patient of which may wait
# REQUEST_TIMEOUT_MAX_S (a client's X-Request-Timeout).
graceful_timeout = int(_settings.request_timeout_max_s) + 5
timeout = 30
keepalive = 5
accesslog = None
proc_name = "tripq-api"


def on_starting(server: Any) -> None:
    """Route gunicorn's own logging into loguru before any worker forks."""
    configure_logging(
        "gunicorn",
        _settings.log_dir / "apps" / "api",
        level=_settings.log_level,
        json_lines=_settings.log_json,
    )
