"""Celery's task protocol (v2) on kombu's Redis transport, spoken directly.

The API writes task messages itself with one async LPUSH instead of calling Celery's producer, for
two reasons: Celery's producer is synchronous (it would block the event loop, or park a thread per
send), and it would subscribe to every task's result channel on send. The message has the
shape `Celery.send_task` puts on a Redis list (a test compares the two), so any Celery worker
consumes it.

Results travel the other way through Celery's Redis result backend, which stores each result under
`celery-task-meta-<task_id>` and publishes the same bytes on a channel of that name.
"""

import base64
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

RESULT_KEY_PREFIX = "celery-task-meta-"

# Celery's states that end a task; other states are progress reports and are not awaited.
SUCCESS, FAILURE, REVOKED = "SUCCESS", "FAILURE", "REVOKED"
READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})

_NO_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def result_key(task_id: str) -> str:
    """Name the Redis key (and pub/sub channel) that carries a task's result."""
    return RESULT_KEY_PREFIX + task_id


def encode_task(
    *,
    task_id: str,
    task_name: str,
    queue: str,
    args: list[Any],
    kwargs: dict[str, Any],
    expires: datetime | None,
    origin: str,
    ignore_result: bool = False,
    trace_headers: Mapping[str, str] | None = None,
) -> bytes:
    """Encode a task as the JSON envelope a Celery worker pops from the Redis list `queue`.

    `expires` None: the task never expires; `ignore_result`: the worker stores no result;
    `trace_headers`: the W3C Trace Context of the span that sends it (core.infra.otel), carried
    among the message's headers, where a Celery worker finds them on the task's request.
    """
    # Arguments may hold numpy arrays (whole columns, from `tripq score`): written as JSON lists.
    body = orjson.dumps([args, kwargs, _NO_EMBED], option=orjson.OPT_SERIALIZE_NUMPY)
    headers: dict[str, Any] = {
        "lang": "py",
        "task": task_name,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": expires.isoformat() if expires is not None else None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        # The payload is logged by workers at DEBUG only; never put trip data in reprs.
        "argsrepr": "(...)",
        "kwargsrepr": "{...}",
        "origin": origin,
        "ignore_result": ignore_result,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    if trace_headers:
        headers.update(trace_headers)
    properties: dict[str, Any] = {
        "correlation_id": task_id,
        "reply_to": "",
        "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": queue},
        "priority": 0,
        "body_encoding": "base64",
        "delivery_tag": str(uuid.uuid4()),
    }
    envelope: dict[str, Any] = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": properties,
    }
    return orjson.dumps(envelope)


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    """A decoded result-backend record."""

    status: str
    result: Any

    @property
    def ready(self) -> bool:
        """Tell whether the task has ended (succeeded, failed or was revoked)."""
        return self.status in READY_STATES


def decode_result(raw: bytes | str) -> TaskOutcome:
    """Decode the JSON a Celery result backend stores for a task."""
    meta = orjson.loads(raw)
    return TaskOutcome(status=meta.get("status", ""), result=meta.get("result"))


def sent_at(message: bytes) -> float | None:
    """Read when the API sent a task message (its `sent_at` argument), if it says."""
    try:
        envelope = orjson.loads(message)
        _, kwargs, _ = orjson.loads(base64.b64decode(envelope["body"]))
        value = kwargs.get("sent_at")
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    return float(value) if isinstance(value, int | float) else None


def task_of(message: bytes | str) -> tuple[str | None, str | None]:
    """Read which task a message carries: (task name, task id), each None if it does not say."""
    try:
        headers = orjson.loads(message)["headers"]
        return headers.get("task"), headers.get("id")
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return None, None
