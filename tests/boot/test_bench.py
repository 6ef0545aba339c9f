"""`tripq bench`: its load generators' reply checks, and a short real run (that it works, not
speed), REST and gRPC side by side.

The run uses the Python load generator, so it needs no wrk; the bench starts its own Redis on a
free port for each system and stops every process it started.
"""

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import typer
from typer.testing import CliRunner

from apps.grpc.protos.tripq.v1 import trip_pb2, trip_pb2_grpc
from bench.grpc_loadgen import run_grpc_load
from bench.loadgen import ID_MARKER, reply_is_ok, run_load
from boot.cli_bench import bench

OK_BODY = b'{"reply_code":0,"request_id":"1","duration":12.5,"model_version":"m"}'
WRONG_BODY = b'{"reply_code":3,"request_id":"1","message":"failed"}'
TIMEOUT_BODY = b'{"reply_code":2,"request_id":"1","message":"no answer"}'


@pytest.mark.parametrize(
    ("status", "body", "expect", "ok"),
    [
        (200, OK_BODY, 1, True),
        (200, WRONG_BODY, 1, False),
        (504, TIMEOUT_BODY, 1, False),
        (500, OK_BODY, 1, False),
        (200, b'{"reply_code":0,"request_id":"1"}', 1, False),
        (200, b'{"reply_code":0,"replies":[{"duration":1.0},{"duration":2.0}]}', 2, True),
        (200, b'{"reply_code":0,"replies":[{"duration":1.0},{"reply_code":1}]}', 2, False),
    ],
)
def test_reply_counts_as_ok_only_with_status_200_code_0_and_every_duration(
    status: int, body: bytes, expect: int, ok: bool
) -> None:
    assert reply_is_ok(status, body, expect) is ok


class CyclingServer:
    """A tiny HTTP/1.1 server that answers ok, a wrong reply, a 504, or hangs up, in turn."""

    KINDS = ("ok", "wrong", "ok", "timeout", "hangup")

    def __init__(self) -> None:
        self.sent = {kind: 0 for kind in self.KINDS}
        self.request_ids: list[str] = []
        self._turn = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection until the client or the cycle ends it."""
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"Content-Length: (\d+)", head)
                assert length is not None, head
                body = json.loads(await reader.readexactly(int(length[1])))
                self.request_ids.append(body["request_id"])
                kind = self.KINDS[self._turn % len(self.KINDS)]
                self._turn += 1
                self.sent[kind] += 1
                if kind == "hangup":
                    return
                status, reply = {
                    "ok": (200, OK_BODY),
                    "wrong": (200, WRONG_BODY),
                    "timeout": (504, TIMEOUT_BODY),
                }[kind]
                writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n" % (status, len(reply)))
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


def test_python_loadgen_counts_ok_and_error_replies_and_survives_hangups() -> None:
    server = CyclingServer()

    async def drive() -> tuple[int, int, int, int]:
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        body = json.dumps({"request_id": ID_MARKER, "PULocationID": 1}).encode()
        async with listener:
            result = await run_load(
                f"http://127.0.0.1:{port}/v1/trip/predict",
                body,
                expect=1,
                concurrency=2,
                duration_s=0.5,
            )
        return result.requests, result.ok, result.errors, result.unfinished

    requests, ok, errors, unfinished = asyncio.run(drive())

    sent_ok = server.sent["ok"]
    sent_bad = sum(server.sent.values()) - sent_ok
    assert ok > 10
    assert errors > 10
    assert requests == ok + errors
    # Requests in flight when the run ends are not counted, only reported: at most one per client.
    assert 0 <= unfinished <= 2
    assert sent_ok - 2 <= ok <= sent_ok
    assert sent_bad - 2 <= errors <= sent_bad
    assert len(set(server.request_ids)) == len(server.request_ids), "request ids repeat"


class CyclingServicer(trip_pb2_grpc.TripServiceServicer):
    """Answers ok, a reply for another trip, or a refusal, in turn."""

    KINDS = ("ok", "wrong", "ok", "refused")

    def __init__(self) -> None:
        self.sent = dict.fromkeys(self.KINDS, 0)
        self.request_ids: list[str] = []
        self._turn = 0

    async def Predict(
        self, request: trip_pb2.Trip, context: "grpc.aio.ServicerContext[Any, Any]"
    ) -> trip_pb2.PredictReply:
        """Answer in the turn's way."""
        self.request_ids.append(request.request_id)
        kind = self.KINDS[self._turn % len(self.KINDS)]
        self._turn += 1
        self.sent[kind] += 1
        if kind == "refused":
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "retry shortly")
        request_id = request.request_id if kind == "ok" else "someone else's"
        return trip_pb2.PredictReply(request_id=request_id, duration=12.5, model_version="m")

    async def PredictBatch(
        self, request: trip_pb2.PredictBatchRequest, context: "grpc.aio.ServicerContext[Any, Any]"
    ) -> trip_pb2.PredictBatchReply:
        """Not called by the load generator."""
        raise NotImplementedError

    async def PredictStream(
        self,
        request_iterator: AsyncIterator[trip_pb2.Trip],
        context: "grpc.aio.ServicerContext[Any, Any]",
    ) -> AsyncIterator[trip_pb2.TripOutcome]:
        """Not called by the load generator."""
        raise NotImplementedError
        yield  # an async generator, as the servicer's signature says


def test_grpc_loadgen_counts_correct_answers_and_every_other_reply_as_an_error() -> None:
    servicer = CyclingServicer()

    async def drive() -> tuple[int, int, int, int]:
        server = grpc.aio.server()
        trip_pb2_grpc.add_TripServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            result = await run_grpc_load(
                f"127.0.0.1:{port}",
                {"PULocationID": 1, "DOLocationID": 2, "trip_distance": 3.0},
                concurrency=2,
                duration_s=0.5,
            )
        finally:
            await server.stop(None)
        return result.requests, result.ok, result.errors, result.unfinished

    requests, ok, errors, unfinished = asyncio.run(drive())

    assert ok > 10
    assert errors > 10
    assert requests == ok + errors
    # Calls in flight when the run ends are not counted, only reported: at most one per client.
    assert 0 <= unfinished <= 2
    assert servicer.sent["ok"] - 2 <= ok <= servicer.sent["ok"]
    assert len(set(servicer.request_ids)) == len(servicer.request_ids), "request ids repeat"


def test_bench_runs_every_system_and_writes_results_and_plot(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(bench)
    output = tmp_path / "bench.json"
    systems = ["noop", "inprocess", "tripq", "tripq-grpc"]

    outcome = CliRunner().invoke(
        app,
        [
            "--systems", ",".join(systems),
            "--concurrency", "1,4",
            "--duration", "1",
            "--warmup", "0.3",
            "--loadgen", "python",
            "--worker-concurrency", "8",
            "--output", str(output),
        ],
    )  # fmt: skip

    assert outcome.exit_code == 0, outcome.output
    report = json.loads(output.read_text())
    rows = {(r["system"], r["concurrency"]): r for r in report["results"]}
    assert set(rows) == {(s, c) for s in systems for c in (1, 4)}
    for point, row in rows.items():
        assert row["ok"] > 0, point
        assert row["errors"] == 0, point
        assert row["requests"] == row["ok"] + row["errors"]
        assert 0 <= row["unfinished"] <= row["concurrency"]
        assert row["p99_ms"] >= row["p50_ms"] > 0
        assert row["loadgen_cpu_s"] > 0
    assert report["ratios"]["at_concurrency"] == 4
    assert report["ratios"]["tripq_over_inprocess"] is not None
    assert {"tripq_over_noop", "tripq_over_naive"} <= set(report["ratios"])
    assert report["machine"]["cpu_count"] >= 1
    assert report["failures"] == []
    assert output.with_suffix(".png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    # REST and gRPC, side by side on the same tripq deployment.
    assert [p["concurrency"] for p in report["rest_vs_grpc"]] == [1, 4]
    for pair in report["rest_vs_grpc"]:
        assert pair["rest_rps"] == rows[("tripq", pair["concurrency"])]["rps"]
        assert pair["grpc_rps"] == rows[("tripq-grpc", pair["concurrency"])]["rps"]
