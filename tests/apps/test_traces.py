"""OpenTelemetry traces: one request, one trace across the real API and worker processes.

The spans go over OTLP/HTTP to a receiver the test starts (bench.tracing.SpanSink), which decodes
each export. Each process flushes its spans when it stops, so the traced platform is stopped before
its spans are read.
"""

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from bench.tracing import ReceivedSpan, SpanSink
from config import Settings
from core.infra import otel
from core.online import protocol
from tests.support import REPO, running_platform, tripq_env, wait_until

TRIP = {"request_id": "t1", "PULocationID": 130, "DOLocationID": 250, "trip_distance": 3.0}
PREDICT = "/v1/trip/predict"
TASK = "tasks.trip.tasks.predict_batch"
SERVER, PRODUCER, CONSUMER = 2, 4, 5  # OTLP's span kinds
# A client's own trace: its W3C traceparent, trace id and span id.
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
CLIENT_TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


@dataclass(frozen=True)
class TracedRun:
    """What a traced platform answered and exported, once stopped."""

    made_id: str  # the X-Request-ID the API made for a request that sent none
    spans: list[ReceivedSpan]
    log_dir: Path

    def trace(self, trace_id: str) -> dict[str, ReceivedSpan]:
        """The spans of one trace, by name."""
        return {s.name: s for s in self.spans if s.trace_id == trace_id}


@pytest.fixture(scope="module")
def traced(redis_url: str, log_dir: Path) -> Iterator[TracedRun]:
    """Run the API and a worker that export to a receiver; send two predictions; stop both."""
    with SpanSink() as sink:
        env = tripq_env(redis_url, log_dir, otel_exporter_otlp_endpoint=sink.endpoint)
        with running_platform(env, log_dir) as base:
            plain = httpx.post(f"{base}{PREDICT}", json=TRIP, timeout=10)
            continued = httpx.post(
                f"{base}{PREDICT}",
                json=TRIP,
                headers={"traceparent": CLIENT_TRACEPARENT, "X-Request-ID": "mine-1"},
                timeout=10,
            )
        assert plain.status_code == continued.status_code == 200

        made_id = plain.headers["x-request-id"]

        def exported() -> bool:
            # Four spans a request: two in each process.
            traces = [s.trace_id for s in sink.spans]
            return traces.count(made_id) == traces.count(CLIENT_TRACE) == 4

        wait_until(exported, 10, "both processes to export the spans of two requests")
        yield TracedRun(made_id, list(sink.spans), log_dir)


def test_one_request_is_one_trace_from_the_api_through_the_worker(traced: TracedRun) -> None:
    spans = traced.trace(traced.made_id)
    server = spans[f"POST {PREDICT}"]
    send, process, publish = (
        spans[f"{TASK} send"],
        spans[f"{TASK} process"],
        spans[f"{TASK} publish"],
    )

    assert (server.service, server.kind, server.parent_span_id) == ("tripq-api", SERVER, "")
    assert (send.service, send.kind, send.parent_span_id) == ("tripq-api", PRODUCER, server.span_id)
    # Across the queue: the worker's span is a child of the API's send, by the task's headers.
    assert (process.service, process.kind) == ("tripq-worker", CONSUMER)
    assert process.parent_span_id == send.span_id
    assert (publish.service, publish.kind) == ("tripq-worker", PRODUCER)
    assert publish.parent_span_id == process.span_id
    assert server.attributes["http.route"] == PREDICT
    assert server.attributes["http.response.status_code"] == 200
    assert process.attributes["messaging.message.id"] == send.attributes["messaging.message.id"]
    assert process.attributes["tripq.trips"] == 1


def test_the_made_request_id_is_the_trace_id_and_logs_carry_it_as_otel_trace_id(
    traced: TracedRun,
) -> None:
    assert re.fullmatch(r"[0-9a-f]{32}", traced.made_id)
    worker_lines = [
        line
        for path in (traced.log_dir / "tasks" / "trip").glob("*.log")
        for line in path.read_text().splitlines()
        if "predicted batch" in line and traced.made_id in line
    ]

    # The worker's line names the request under both names: its X-Request-ID, its trace.
    assert any(
        f"'trace_id': ['{traced.made_id}']" in line
        and f"'otel_trace_id': '{traced.made_id}'" in line
        for line in worker_lines
    )


def test_a_request_continues_its_clients_trace_and_keeps_its_own_request_id(
    traced: TracedRun,
) -> None:
    spans = traced.trace(CLIENT_TRACE)
    server = spans[f"POST {PREDICT}"]

    assert server.parent_span_id == CLIENT_SPAN
    assert server.attributes["http.request.header.x-request-id"] == ["mine-1"]
    assert {f"{TASK} send", f"{TASK} process", f"{TASK} publish"} <= set(spans)


def test_with_tracing_off_requests_work_and_nothing_is_exported(
    redis_url: str, tmp_path: Path
) -> None:
    with SpanSink() as sink:
        # Only OTEL_EXPORTER_OTLP_ENDPOINT turns tracing on: OTel's own variables do not.
        env = tripq_env(
            redis_url,
            tmp_path,
            otel_exporter_otlp_endpoint="",
            otel_exporter_otlp_traces_endpoint=f"{sink.endpoint}/v1/traces",
        )
        with running_platform(env, tmp_path) as base:
            reply = httpx.post(f"{base}{PREDICT}", json=TRIP, timeout=10)

        assert reply.status_code == 200
        assert reply.json()["reply_code"] == 0
        assert re.fullmatch(r"[0-9a-f]{32}", reply.headers["x-request-id"])
        assert sink.count == 0


def test_an_untraced_api_process_loads_no_tracing_sdk_nor_exporter(tmp_path: Path) -> None:
    # (redis-py loads OTel's metrics SDK itself; the tracing side must stay out.)
    probe = (
        "import sys, apps.main; "
        "print(any(m.startswith(('opentelemetry.sdk.trace', 'opentelemetry.exporter')) "
        "for m in sys.modules))"
    )
    env = tripq_env("redis://127.0.0.1:1/0", tmp_path, otel_exporter_otlp_endpoint="")
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )

    assert loaded.stdout.strip() == "False"


def test_untraced_spans_are_no_ops_and_task_messages_carry_no_trace() -> None:
    assert not otel.start_tracing(Settings(otel_exporter_otlp_endpoint=""), "api")
    with (
        otel.request_span("GET /health") as span,
        otel.send_span(TASK, "tasks.trip", "t-1", 1, []) as headers,
    ):
        assert span is None
        assert headers is None
    message = protocol.encode_task(
        task_id="t-1",
        task_name=TASK,
        queue="tasks.trip",
        args=[],
        kwargs={},
        expires=None,
        origin="test",
        trace_headers=headers,
    )

    assert b"traceparent" not in message


def test_a_batch_hangs_under_its_first_request_and_links_both_ways_to_the_others() -> None:
    with SpanSink() as sink:
        assert otel.start_tracing(Settings(otel_exporter_otlp_endpoint=sink.endpoint), "test")
        try:
            with otel.request_span("first") as first, otel.request_span("second") as second:
                assert first is not None
                assert second is not None
                with otel.send_span(TASK, "tasks.trip", "t-2", 2, [first, second]) as headers:
                    assert headers is not None
        finally:
            otel.stop_tracing()  # exports what it holds
        spans = {s.name: s for s in sink.spans}

    send = spans[f"{TASK} send"]
    first_span, second_span = spans["first"], spans["second"]
    assert (send.trace_id, send.parent_span_id) == (first_span.trace_id, first_span.span_id)
    assert send.links == ((second_span.trace_id, second_span.span_id),)
    assert second_span.links == ((send.trace_id, send.span_id),)
    assert second_span.trace_id != first_span.trace_id  # each request its own trace
    assert headers["traceparent"].startswith(f"00-{send.trace_id}-{send.span_id}-")


def test_an_endpoint_that_is_no_url_is_refused_naming_the_setting() -> None:
    with pytest.raises(ValidationError, match="otel_exporter_otlp_endpoint"):
        Settings(otel_exporter_otlp_endpoint="jaeger:4318")


def test_probes_and_scrapes_make_no_spans(traced: TracedRun) -> None:
    # The platform was awaited by polling /health; none of those polls is a span.
    assert not [s for s in traced.spans if s.attributes.get("url.path") == "/health"]
