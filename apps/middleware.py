"""ASGI middleware of the API: trace ids, OpenTelemetry server spans and metrics, and a body
size limit.

Plain ASGI rather than Starlette's BaseHTTPMiddleware, which costs a task and a stream per
request on the hot path.
"""

import contextlib
import time

import orjson
from opentelemetry.trace import Span, Status, StatusCode
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import ReplyCode
from core.infra import metrics, otel, tracing

_UNTRACED: contextlib.nullcontext[None] = contextlib.nullcontext()  # reused: free when off
# Probes and scrapes, every few seconds from every orchestrator and Prometheus: no spans, which
# would bury the requests' traces.
_UNTRACED_PATHS = frozenset({"/health", "/ready", "/metrics"})

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
    its task and its reply carry, and a server span when tracing is on; count its reply and time
    it, by route."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        with _server_span(scope) as span:
            sent = _header(scope, b"x-request-id")
            trace_id = tracing.take_trace_id(sent, otel.trace_id_of(span))
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
                if span is not None:
                    _describe_reply(span, scope["method"], getattr(route, "path", None), status)
                    if trace_id == sent:  # the client's own id finds the trace too
                        span.set_attribute("http.request.header.x-request-id", (trace_id,))


def _server_span(scope: Scope) -> contextlib.AbstractContextManager[Span | None]:
    """Trace an HTTP request as a server span that continues the client's trace, if it sent
    one (a no-op when tracing is off)."""
    if not otel.enabled() or scope["path"] in _UNTRACED_PATHS:
        return _UNTRACED
    carrier = {}
    for name in otel.CARRIER_HEADERS:
        value = _header(scope, name.encode())
        if value is not None:
            carrier[name] = value
    attributes = {
        "http.request.method": scope["method"],
        "url.path": scope["path"],
        "url.scheme": scope.get("scheme", "http"),
    }
    return otel.request_span(scope["method"], attributes, carrier)


def _describe_reply(span: Span, method: str, route: str | None, status: int) -> None:
    """Name a server span after its route and give it the reply's status, as OTel's HTTP
    conventions say: only a server's own failure (5xx) is an error."""
    if route is not None:
        span.update_name(f"{method} {route}")
        span.set_attribute("http.route", route)
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))


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
