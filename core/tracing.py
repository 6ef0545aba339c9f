"""The request id that follows one HTTP request through its task into both processes' logs.

The API takes the client's `X-Request-ID` (or makes one), answers with it, logs with it, and
sends it with the task; the worker logs it beside the task's own lines. Micro-batched requests
share a task, which carries the ids of all of them.
"""

import re
import uuid
from contextvars import ContextVar

HEADER = "X-Request-ID"
LOG_FIELD = "x_request_id"

_ACCEPTED = re.compile(r"[\x21-\x7e]{1,128}")  # printable ASCII without spaces: safe in a log line

current: ContextVar[str | None] = ContextVar("x_request_id", default=None)


def request_id(sent: str | None) -> str:
    """Keep a client's request id when it is a sane one; otherwise make one."""
    if sent is not None and _ACCEPTED.fullmatch(sent):
        return sent
    return uuid.uuid4().hex
