"""Logging for every tripq process: loguru, with libraries' standard `logging` routed into it."""

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

from core.infra import otel, tracing

if TYPE_CHECKING:
    from loguru import Record

# Libraries whose standard loggers are routed into loguru (their own handlers are dropped).
ROUTED_LOGGERS = (
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "gunicorn",
    "gunicorn.error",
    "gunicorn.access",
    "celery",
    "celery.app.trace",
    "celery.worker",
    "kombu",
    "fastapi",
)

_TEXT_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>{extra[process]}</cyan> {message} <dim>{extra}</dim>"
)


class InterceptHandler(logging.Handler):
    """Send standard `logging` records to loguru, keeping their level and origin."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).bind(logger_name=record.name).log(
            level, record.getMessage()
        )


def _add_trace_id(record: "Record") -> None:
    # Read only when a line is written: the trace id of the request served (core.infra.tracing).
    trace_id = tracing.trace_id.get()
    if trace_id is not None:
        record["extra"].setdefault(tracing.LOG_FIELD, trace_id)
    traced = otel.log_trace_id()  # None unless tracing is on, inside a span
    if traced is not None:
        record["extra"].setdefault(otel.LOG_FIELD, traced)


def configure_logging(
    process: str,
    log_dir: Path,
    *,
    level: str = "INFO",
    json_lines: bool = False,
    access_log: bool = False,
) -> None:
    """Log to stderr and to `log_dir`, one file per OS process, as text or JSON lines."""
    logger.remove()
    logger.configure(extra={"process": process}, patcher=_add_trace_id)
    stderr_format = "{message}" if json_lines else _TEXT_FORMAT
    logger.add(sys.stderr, level=level, format=stderr_format, serialize=json_lines)
    log_dir.mkdir(parents=True, exist_ok=True)
    # One file per OS process: several processes rotating one file would corrupt it.
    logger.add(
        log_dir / f"{process}-{os.getpid()}.log",
        level=level,
        format="{time:YYYY-MM-DD HH:mm:ss.SSS} {level: <7} {message} {extra}",
        serialize=json_lines,
        rotation="20 MB",
        retention=5,
        enqueue=False,
    )
    route_standard_logging(level, access_log=access_log)


def route_standard_logging(level: str, *, access_log: bool) -> None:
    """Replace the handlers of the standard root and library loggers with one into loguru."""
    handler = InterceptHandler()
    logging.basicConfig(handlers=[handler], level=level, force=True)
    for name in ROUTED_LOGGERS:
        std_logger = logging.getLogger(name)
        # uvicorn writes access lines only when its access logger has a handler.
        wanted = access_log or not name.endswith(".access")
        std_logger.handlers = [handler] if wanted else []
        std_logger.propagate = False
