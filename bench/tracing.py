"""What tracing costs: tripq at 64 clients with OpenTelemetry off, and on, side by side.

    .venv/bin/python -m bench.tracing      # writes bench/results/tracing.json

Each round starts tripq three times, as `tripq bench` starts it (a fresh embedded Redis, `tripq
worker --processes 1 --concurrency 64`, `tripq api --workers 1`): with OTEL_EXPORTER_OTLP_ENDPOINT
empty; pointing at `SpanSink`, an OTLP/HTTP receiver in this process that decodes every export
and counts its spans, as a collector on the same host would; and the same keeping one trace in
ten (OTel's OTEL_TRACES_SAMPLER). Rounds alternate the modes, so that a machine's drift falls on
each. The bench's load generators and counting are reused.
"""

import argparse
import dataclasses
import gzip
import http.server
import json
import statistics
import tempfile
import threading
import zlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from rich.console import Console

from bench.loadgen import LoadgenKind
from bench.report import build_report
from bench.runner import (
    BenchConfig,
    Deployment,
    child_env,
    free_port,
    measure,
    resolve_loadgen,
    start_tripq,
    write_bodies,
)
from core.infra.embedded_redis import EmbeddedRedis

OUTPUT = Path(__file__).parent / "results" / "tracing.json"
# Off; on, every request traced; on, one trace in ten kept (OTel's own sampler variables).
MODES = ("off", "on", "on-sampled-10%")
_SAMPLED = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as an exporter sent it, with its ids in W3C's hex."""

    service: str
    name: str
    kind: int  # opentelemetry.proto.trace.v1.Span.SpanKind: 2 server, 4 producer, 5 consumer
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root
    links: tuple[tuple[str, str], ...]  # (trace id, span id) of each linked span
    attributes: dict[str, Any] = field(default_factory=dict)


class SpanSink(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP traces receiver on loopback: decodes each export, keeps (or only counts)
    its spans."""

    def __init__(self, keep: bool = True) -> None:
        super().__init__(("127.0.0.1", 0), _SinkHandler)
        self.keep = keep
        self.spans: list[ReceivedSpan] = []
        self.count = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        """The base URL to give as OTEL_EXPORTER_OTLP_ENDPOINT."""
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> "SpanSink":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join()

    def received(self, request: ExportTraceServiceRequest) -> None:
        """Count the spans of one export, and keep them if asked to."""
        scopes = [(r, scope) for r in request.resource_spans for scope in r.scope_spans]
        # Counting only, the bench's sink spends next to no CPU beside the system it measures.
        count = sum(len(scope.spans) for _, scope in scopes)
        spans = [
            _received_span(_service(resource.resource.attributes), span)
            for resource, scope in (scopes if self.keep else ())
            for span in scope.spans
        ]
        with self._lock:
            self.count += count
            self.spans.extend(spans)


def _value(value: Any) -> Any:
    """Turn an OTLP AnyValue into Python."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


def _service(attributes: Any) -> str:
    return next((str(_value(a.value)) for a in attributes if a.key == "service.name"), "")


def _received_span(service: str, span: Any) -> ReceivedSpan:
    return ReceivedSpan(
        service=service,
        name=span.name,
        kind=span.kind,
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_span_id=span.parent_span_id.hex(),
        links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links),
        attributes={a.key: _value(a.value) for a in span.attributes},
    )


class _SinkHandler(http.server.BaseHTTPRequestHandler):
    server: SpanSink

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        encoding = self.headers.get("content-encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        if self.path != "/v1/traces":
            self.send_error(404)
            return
        self.server.received(ExportTraceServiceRequest.FromString(body))
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep quiet: one line per export would flood the bench's terminal."""


@contextmanager
def traced_tripq(mode: str, sink: SpanSink, cfg: BenchConfig, work: Path) -> Iterator[Deployment]:
    """Run tripq as `tripq bench` does, exporting its spans to `sink` when `mode` is on."""
    with ExitStack() as stack:
        server = EmbeddedRedis(free_port(), work / f"redis-{mode}", appendonly=False).start()
        stack.callback(server.stop)
        env = child_env(server.url, work / "logs")
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = "" if mode == "off" else sink.endpoint
        if mode == "on-sampled-10%":
            env.update(_SAMPLED)
        port = free_port()
        worker = start_tripq(cfg, stack, env, work, port)
        yield Deployment(f"http://127.0.0.1:{port}", server.url, worker)


def cpu_seconds() -> dict[str, float]:
    """Sum the CPU time of this process's children (tripq's processes and Redis), by role."""
    spent = {"api": 0.0, "worker": 0.0, "redis": 0.0}
    for child in psutil.Process().children(recursive=True):
        try:
            line = " ".join(child.cmdline())
            times = child.cpu_times()
        except psutil.Error:
            continue
        # Celery, and `tripq worker` over it; `tripq api` and gunicorn's processes; redis-server.
        if "redis" in line:
            role = "redis"
        elif "celery" in line or "boot.cli worker" in line:
            role = "worker"
        else:
            role = "api"
        spent[role] += times.user + times.system
    return spent


def run(cfg: BenchConfig, rounds: int, console: Console) -> dict[str, Any]:
    """Measure tripq in each mode, `rounds` times, alternating; return the report."""
    kind: LoadgenKind = resolve_loadgen(cfg.loadgen)
    rows: list[dict[str, Any]] = []
    # The warm-up runs apart, so that the CPU time measured is the measured load's alone.
    warmup = dataclasses.replace(cfg, duration_s=cfg.warmup_s, warmup_s=0.0)
    counted = dataclasses.replace(cfg, warmup_s=0.0)
    with tempfile.TemporaryDirectory(prefix="tripq-tracing-") as tmp, SpanSink(keep=False) as sink:
        work = Path(tmp)
        bodies = write_bodies(work, cfg)
        for index in range(rounds):
            for mode in MODES:
                with traced_tripq(mode, sink, cfg, work) as deployment:
                    clients = cfg.concurrency[0]
                    measure("tripq", deployment, clients, warmup, bodies, kind, work)
                    spans, cpu = sink.count, cpu_seconds()
                    row = measure("tripq", deployment, clients, counted, bodies, kind, work)
                    used = {role: s - cpu[role] for role, s in cpu_seconds().items()}
                # Stopped: each process has flushed what it still held.
                ok = max(row["ok"], 1)
                row |= {
                    "tracing": mode,
                    "round": index + 1,
                    "spans_per_ok": round((sink.count - spans) / ok, 3),
                    "cpu_us_per_ok": {r: round(s / ok * 1e6, 1) for r, s in used.items()},
                }
                rows.append(row)
                console.print(
                    f"round {index + 1} tracing {mode}: {row['rps']:.0f} ok/s, "
                    f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, "
                    f"{row['spans_per_ok']} spans and CPU {row['cpu_us_per_ok']} µs an answer"
                )
    report = build_report({"rounds": rounds, "duration_s": cfg.duration_s}, kind, rows, [])
    del report["ratios"], report["targets"]  # `tripq bench`'s, between systems
    report["summary"] = summarize(rows)
    return report


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Give each mode's median figures and what tracing costs against them."""
    medians = {
        mode: {
            metric: statistics.median(r[metric] for r in rows if r["tracing"] == mode)
            for metric in ("rps", "p50_ms", "p99_ms")
        }
        | {
            f"cpu_us_per_ok_{role}": statistics.median(
                r["cpu_us_per_ok"][role] for r in rows if r["tracing"] == mode
            )
            for role in ("api", "worker", "redis")
        }
        for mode in MODES
    }
    off = medians["off"]
    against_off = {
        mode: {
            "rps_over_off": round(m["rps"] / off["rps"], 3) if off["rps"] else None,
            "p50_added_ms": round(m["p50_ms"] - off["p50_ms"], 3),
            "p99_added_ms": round(m["p99_ms"] - off["p99_ms"], 3),
            "api_cpu_added_us_per_ok": round(m["cpu_us_per_ok_api"] - off["cpu_us_per_ok_api"], 1),
            "worker_cpu_added_us_per_ok": round(
                m["cpu_us_per_ok_worker"] - off["cpu_us_per_ok_worker"], 1
            ),
        }
        for mode, m in medians.items()
        if mode != "off"
    }
    return {"median": medians, "against_off": against_off, "errors": sum(r["errors"] for r in rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--loadgen", default="auto", choices=("auto", "wrk", "python"))
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    cfg = BenchConfig(
        systems=("tripq",),
        concurrency=(args.clients,),
        duration_s=args.duration,
        warmup_s=args.warmup,
        loadgen=args.loadgen,
        output=args.output,
    )
    console = Console()
    report = run(cfg, args.rounds, console)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    console.print(json.dumps(report["summary"], indent=2))


if __name__ == "__main__":
    main()
