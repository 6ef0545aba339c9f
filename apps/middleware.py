"""ASGI middleware of the API: trace ids and metrics, and a body size limit.

Plain ASGI rather than Starlette's BaseHTTPMiddleware, which costs a task and a stream per
request on the hot path.
"""

import time

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import ReplyCode
from core.infra import metrics, tracing

# What a refusal's status says; every other status is an answer, a timeout or a failure.
REJECTED_REASONS = {
    400: "invalid",
    401: "unauthorized",
    404: "not_found",
    405: "method",
    409: "conflict",
    413: "too_large",
    415: "media_type",
    429: "overloaded",
    503: "unavailable",
}


def reply_outcome(status: int) -> str | None:
    """Say what a reply of `status` was for the metrics, when it was not an answer."""
    if status == 504:
        return metrics.EXPIRED_REPLY
    if status >= 500 and status != 503:
        return metrics.FAILED_REPLY
    return REJECTED_REASONS.get(status)


class RequestTracking:
    """Give every request a trace id (the client's X-Request-ID, or a new one) that its logs,
    its task and its reply carry; count its reply and time it, by route."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        trace_id = tracing.take_trace_id(_header(scope, b"x-request-id"))
        echoed = (b"x-request-id", trace_id.encode())
        status = 500  # unless a reply starts

        async def tracked(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), echoed]
            await send(message)

        # Every log line written while serving it carries the id (core.infra.logs reads it).
        token = tracing.trace_id.set(trace_id)
        try:
            await self.app(scope, receive, tracked)
        finally:
            tracing.trace_id.reset(token)
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            seconds = time.perf_counter() - started
            metrics.record_reply(endpoint, status, seconds, reply_outcome(status))


class BodySizeLimit:
    """Refuse bodies over `max_bytes` with 413: by Content-Length at once, else while reading.

    Before the 413 goes out, what the client is still sending is read and dropped, up to
    `drain_bytes`: a server that replies and closes with a body unread makes the client's
    kernel see a reset, and clients such as urllib and requests then report "connection reset"
    instead of the 413. Past `drain_bytes` the connection is closed regardless.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, drain_bytes: int = 64 * 1024 * 1024) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.drain_bytes = drain_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            if declared <= self.drain_bytes:
                await _drain(receive, 0)
            await self._refuse(send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                if message.get("more_body", False):
                    await _drain(receive, self.drain_bytes - seen)
                # Raised inside the route's body read, so the app's handler answers it.
                raise HTTPException(413, self._message)
            return message

        await self.app(scope, counted, send)

    @property
    def _message(self) -> str:
        return f"body: larger than the limit of {self.max_bytes} bytes"

    async def _refuse(self, send: Send) -> None:
        body = orjson.dumps(
            {"reply_code": int(ReplyCode.INVALID_REQUEST), "message": self._message}
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def _drain(receive: Receive, budget: int) -> None:
    """Read and drop the rest of a request's body; stop after `budget` bytes (0: no bound)."""
    read = 0
    while True:
        message = await receive()
        read += len(message.get("body", b""))
        if not message.get("more_body", False) or message["type"] != "http.request":
            return
        if budget and read >= budget:
            return


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _content_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    try:
        return None if value is None else int(value)
    except ValueError:
        return None
