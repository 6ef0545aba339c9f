"""`tripq bench`: its load generator's reply check, and a short real run (that it works, not speed).

The run uses the Python load generator, so it needs no wrk; the bench starts its own Redis on a
free port for each system and stops every process it started.
"""

import asyncio
import json
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

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


def test_bench_runs_every_system_and_writes_results_and_plot(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(bench)
    output = tmp_path / "bench.json"
    systems = ["noop", "inprocess", "tripq"]

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
