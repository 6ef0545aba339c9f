"""The trace id: the X-Request-ID that follows one HTTP request through its task into both
processes' logs, under one name from header to log line, `trace_id`.

The API takes the client's `X-Request-ID` (or makes one), answers with it, logs with it, and
sends it with the task (`trace_ids`); the worker logs it beside the task's own lines.
Micro-batched requests share a task, which carries the trace ids of all of them.

It is not the body's `request_id`, which names a trip in the public contract. Nor is it, by
itself, the trace id of OpenTelemetry (core.infra.otel), which log lines carry as
`otel_trace_id` when tracing is on. The two meet: with tracing on, the id the API makes for a
request that brought none *is* its OpenTelemetry trace id (both are 32 hex digits), so the
X-Request-ID a client gets back finds its trace; and a client's own X-Request-ID is kept on the
request's server span (`http.request.header.x-request-id`), so it finds the trace too.
"""

import itertools
import os
import re
from contextvars import ContextVar

HEADER = "X-Request-ID"
LOG_FIELD = "trace_id"

_ACCEPTED = re.compile(r"[\x21-\x7e]{1,128}")  # printable ASCII without spaces: safe in a log line

# The trace id of the request being served, in this task's context.
trace_id: ContextVar[str | None] = ContextVar("trace_id", default=None)

# A new id is 32 hex digits: 16 random ones per process, then a counter. Unique across processes
# as uuid4 is, without a system call per request.
_PREFIX = os.urandom(8).hex()
_counter = itertools.count()


def take_trace_id(sent: str | None, traced: str | None = None) -> str:
    """Keep a client's X-Request-ID when it is a sane one; otherwise take the request's
    OpenTelemetry trace id, `traced`, or make a trace id when it is not traced."""
    if sent is not None and _ACCEPTED.fullmatch(sent):
        return sent
    if traced is not None:
        return traced
    return f"{_PREFIX}{next(_counter) & 0xFFFF_FFFF_FFFF_FFFF:016x}"
