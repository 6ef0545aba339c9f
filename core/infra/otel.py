"""OpenTelemetry traces: one request, one trace, across the API and the worker.

    API process (service <OTEL_SERVICE_NAME>-api)
    POST /v1/trip/predict                                server    (request_span)
     └ tasks.trip.tasks.predict_batch send               producer  (send_span): LPUSH
          │ traceparent in the task message's headers
          v
    worker process (service <OTEL_SERVICE_NAME>-worker)
    tasks.trip.tasks.predict_batch process               consumer  (start_task_span)
     └ tasks.trip.tasks.predict_batch publish            producer  (traced_result_store):
                                                                    SET + PUBLISH of the result

Micro-batching sends one task for many requests, and a span has one parent. The task's spans
take the *first* request of the batch as their parent and link to each of the others, and each
of the others' server spans links back to the send span. So the first request's trace shows the
whole path through both processes, any other request reaches it by one link, and the worker's
spans exist once, not copied into every trace. A lone request (every request at low load, where
a batch is one request) is one trace end to end. The alternative, a trace of its own per batch
linked from each request, would leave the worker out of every request's own trace.

Off unless OTEL_EXPORTER_OTLP_ENDPOINT is set, and then free: no provider is installed and
every function here returns at its first line, making no span, not even the OTel API's no-op
ones. On, each process installs a provider of its own after it forked (`start_tracing`, from the
API's lifespan and the worker's start), whose batch processor exports over OTLP/HTTP from a
thread (a greenlet in a gevent worker), and flushes it when it stops (`stop_tracing`). The
provider is this module's rather than OTel's global one, which can be set once per process only
and would be inherited, dead, across a fork. Log lines written inside a span carry its trace id as
`otel_trace_id` (core.infra.logs asks `log_trace_id`); `trace_id` stays the X-Request-ID
(core.infra.tracing says how the two meet).
"""

import contextlib
import functools
import os
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from loguru import logger
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

from config import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

LOG_FIELD = "otel_trace_id"
# The W3C Trace Context headers: what a client's request and a task message carry.
CARRIER_HEADERS = ("traceparent", "tracestate")
_TRACES_PATH = "v1/traces"  # appended to the endpoint, as OTEL_EXPORTER_OTLP_ENDPOINT specifies
# Bounds an export, and so how long a process that stops waits for an unreachable collector.
_EXPORT_TIMEOUT_S = 5.0

T = TypeVar("T")

_provider: "TracerProvider | None" = None
_tracer: trace.Tracer | None = None
_propagator = TraceContextTextMapPropagator()
# The worker's task spans, by task id, from task_prerun to task_postrun (tasks.worker).
_task_spans: dict[str, tuple[Span, contextlib.ExitStack]] = {}
# What every span function returns when tracing is off: one reusable no-op context.
_OFF: contextlib.nullcontext[None] = contextlib.nullcontext()
_ROOT = otel_context.Context()  # no parent: a new trace


def traces_url(endpoint: str) -> str:
    """Name the OTLP/HTTP traces URL under `endpoint` (an http(s) URL: config checks it)."""
    return f"{endpoint.rstrip('/')}/{_TRACES_PATH}"


def start_tracing(settings: Settings, role: str) -> bool:
    """Install this process's tracer, exporting to OTEL_EXPORTER_OTLP_ENDPOINT as service
    `<OTEL_SERVICE_NAME>-<role>`, unless the endpoint is empty; tell whether tracing is on.

    Call it in each process after it forked (gunicorn's workers fork from their master).
    """
    global _provider, _tracer
    if _provider is not None or not settings.otel_exporter_otlp_endpoint:
        return _provider is not None
    # Imported here: a process that does not trace never loads the SDK and the exporter.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter = OTLPSpanExporter(
        endpoint=traces_url(settings.otel_exporter_otlp_endpoint), timeout=_EXPORT_TIMEOUT_S
    )
    resource = Resource.create(
        {
            SERVICE_NAME: f"{settings.otel_service_name}-{role}",
            SERVICE_INSTANCE_ID: f"{role}-{os.getpid()}@{socket.gethostname()}",
        }
    )
    # What tripq decides comes from config.Settings; the SDK's own knobs (OTEL_TRACES_SAMPLER,
    # OTEL_EXPORTER_OTLP_HEADERS, OTEL_BSP_*, OTEL_RESOURCE_ATTRIBUTES) keep OTel's meaning.
    _provider = TracerProvider(resource=resource)
    _provider.add_span_processor(BatchSpanProcessor(exporter))
    _tracer = _provider.get_tracer("tripq")
    logger.info("tracing on", service=resource.attributes[SERVICE_NAME])
    return True


def stop_tracing() -> None:
    """Export the spans still held and stop tracing in this process (a no-op when off)."""
    global _provider, _tracer
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


def enabled() -> bool:
    """Tell whether this process traces."""
    return _tracer is not None


def trace_id_of(span: Span | None) -> str | None:
    """Give the trace id of `span` as W3C writes it (32 hex digits); None without a span."""
    if span is None:
        return None
    return trace.format_trace_id(span.get_span_context().trace_id)


def log_trace_id() -> str | None:
    """Give the trace id of the span current where a log line is written (None when off or
    outside any span), for core.infra.logs to add as `otel_trace_id`."""
    if _tracer is None:
        return None
    context = trace.get_current_span().get_span_context()
    return trace.format_trace_id(context.trace_id) if context.is_valid else None


def current_span() -> Span | None:
    """Return the span of this context, if tracing is on and there is one (sampled or not: a
    batch sent for a request that was sampled out is sampled out too)."""
    if _tracer is None:
        return None
    span = trace.get_current_span()
    return span if span.get_span_context().is_valid else None


def request_span(
    name: str, attributes: Attributes = None, carrier: Mapping[str, str] | None = None
) -> contextlib.AbstractContextManager[Span | None]:
    """Trace one request this process serves as a server span, current while it runs, that
    continues the client's trace when `carrier` (its W3C headers) holds one; yields None when off.

    For every door: the HTTP middleware, and the gRPC servicer around each call.
    """
    if _tracer is None:
        return _OFF
    return _request_span(_tracer, name, attributes, carrier)


@contextlib.contextmanager
def _request_span(
    tracer: trace.Tracer, name: str, attributes: Attributes, carrier: Mapping[str, str] | None
) -> Iterator[Span | None]:
    # A server span starts a trace unless the client's headers continue one.
    parent = _propagator.extract(carrier) if carrier else _ROOT
    with tracer.start_as_current_span(
        name, context=parent, kind=SpanKind.SERVER, attributes=attributes
    ) as span:
        yield span


def send_span(
    task_name: str, queue: str, task_id: str, trips: int, requests: Sequence[Span] | None = None
) -> contextlib.AbstractContextManager[dict[str, str] | None]:
    """Trace sending one task of `trips` trips; yield the headers that carry its context to the
    worker (None when off).

    `requests`: the spans of the requests the task answers: the first is its parent, the others
    are linked both ways; None: the current span is its parent.
    """
    if _tracer is None:
        return _OFF
    return _send_span(_tracer, task_name, queue, task_id, trips, requests)


@contextlib.contextmanager
def _send_span(
    tracer: trace.Tracer,
    task_name: str,
    queue: str,
    task_id: str,
    trips: int,
    requests: Sequence[Span] | None,
) -> Iterator[dict[str, str] | None]:
    context = None  # None: the current span is the parent
    links: list[Link] = []
    if requests is not None:
        # With no request span, a root: the current context, in a batch's task, is a stale one.
        context = trace.set_span_in_context(requests[0] if requests else trace.INVALID_SPAN)
        links = [Link(r.get_span_context()) for r in requests[1:]]
    with tracer.start_as_current_span(
        f"{task_name} send",
        context=context,
        kind=SpanKind.PRODUCER,
        links=links,
        attributes={
            "messaging.system": "redis",
            "messaging.operation.type": "send",
            "messaging.destination.name": queue,
            "messaging.message.id": task_id,
            "tripq.trips": trips,
        },
    ) as span:
        sent = span.get_span_context()
        for request in requests[1:] if requests else ():
            if request.is_recording():  # a request that timed out has ended its span
                request.add_link(sent, {"tripq.link": "batched into"})
        headers: dict[str, str] = {}
        _propagator.inject(headers)
        yield headers


def start_task_span(task_id: str, task_name: str, request: object) -> None:
    """Start the worker's span of a task, child of the span whose context its message carries,
    and make it current until `end_task_span` (a no-op when off)."""
    if _tracer is None:
        return
    carrier = {k: v for k in CARRIER_HEADERS if isinstance(v := getattr(request, k, None), str)}
    delivery = getattr(request, "delivery_info", None) or {}
    stack = contextlib.ExitStack()
    span = stack.enter_context(
        _tracer.start_as_current_span(
            f"{task_name} process",
            context=_propagator.extract(carrier),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "redis",
                "messaging.operation.type": "process",
                "messaging.destination.name": str(delivery.get("routing_key") or ""),
                "messaging.message.id": task_id,
            },
            # The task's end says how it went: Celery catches the task's own exceptions.
            record_exception=False,
            set_status_on_exception=False,
        )
    )
    _task_spans[task_id] = span, stack


def end_task_span(task_id: str, state: str | None, error: object = None) -> None:
    """End the worker's span of a task, which ended in Celery's `state` (failed by `error`)."""
    started = _task_spans.pop(task_id, None)
    if started is None:
        return
    span, stack = started
    span.set_attribute("tripq.task.state", state or "unknown")
    if isinstance(error, BaseException):
        span.record_exception(error)
    if state not in (None, "SUCCESS"):
        span.set_status(Status(StatusCode.ERROR, state))
    stack.close()


def annotate(**attributes: str | int | float) -> None:
    """Set `tripq.<name>` attributes on the current span (a no-op when off)."""
    if _tracer is None:
        return
    span = trace.get_current_span()
    for name, value in attributes.items():
        span.set_attribute(f"tripq.{name}", value)


def traced_result_store(store: Callable[..., T]) -> Callable[..., T]:
    """Wrap a Celery result backend's `store_result` so that storing a task's result (SET +
    PUBLISH: its delivery to the API) is a span inside the task's own."""

    @functools.wraps(store)
    def traced(task_id: str, result: Any, state: str, *args: Any, **kwargs: Any) -> T:
        # Outside a task span (a revoked task's record) there is no trace to add it to.
        if _tracer is None or not trace.get_current_span().is_recording():
            return store(task_id, result, state, *args, **kwargs)
        task_name = getattr(kwargs.get("request"), "task", None) or "task"
        with _tracer.start_as_current_span(
            f"{task_name} publish",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "redis",
                "messaging.operation.type": "send",
                "messaging.message.id": task_id,
                "tripq.task.state": state,
            },
        ):
            return store(task_id, result, state, *args, **kwargs)

    return traced
