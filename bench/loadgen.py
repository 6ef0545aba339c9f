"""Load generators of `tripq bench`: wrk with a checking Lua script, or a pure-Python fallback.

Both run as a child process, keep one HTTP/1.1 keep-alive connection per simulated client, POST the
same body (a fresh request_id per request where the body holds `ID_MARKER`), check every reply
the same way (`reply_is_ok`) and print one `BENCH_RESULT {json}` line, so the runner reads
either the same way and measures either's CPU time the same way. bench.grpc_loadgen is their
gRPC sibling, of the same design, for tripq.v1.TripService.
"""

import argparse
import asyncio
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Literal, NamedTuple
from urllib.parse import urlsplit

import uvloop

# grpc: bench.grpc_loadgen, which calls tripq.v1.TripService/Predict (the URL is host:port).
LoadgenKind = Literal["wrk", "python", "grpc"]

ID_MARKER = "@ID@"  # replaced by a per-request id in the body of a single-trip request
RESULT_PREFIX = "BENCH_RESULT "
WRK_SCRIPT = Path(__file__).with_name("wrk_check.lua")
# Far beyond any server-side deadline, so a slow reply is measured rather than dropped: wrk keeps
# no latency for a reply slower than its timeout.
REQUEST_TIMEOUT_S = 30.0
_EXIT_GRACE_S = REQUEST_TIMEOUT_S + 10.0  # how long a generator may take past its duration
_RECONNECT_PAUSE_S = 0.01  # so a client of a dead server does not spin


@dataclass
class LoadResult:
    """What one load run saw; requests = ok + errors (errors include lost connections)."""

    requests: int
    ok: int
    errors: int
    unfinished: int  # sent, but still unanswered when the run ended
    p50_ms: float
    p99_ms: float
    duration_s: float
    cpu_s: float = 0.0  # CPU time of the load generator itself, filled in by `run_loadgen`


def reply_is_ok(status: int, body: bytes, expect: int) -> bool:
    """Tell whether a reply answers its request: 200, reply_code 0, `expect` durations."""
    return status == 200 and b'"reply_code":0' in body and body.count(b'"duration":') == expect


def wrk_available() -> bool:
    """Tell whether wrk is on PATH."""
    return shutil.which("wrk") is not None


def wrk_version() -> str:
    """Return wrk's version line (wrk prints it with its usage and exits 1)."""
    done = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).splitlines()[0].split(" Copyright")[0].strip()


def loadgen_argv(
    kind: LoadgenKind, url: str, body_file: Path, expect: int, concurrency: int, duration_s: float
) -> list[str]:
    """Build the command line of one load run."""
    if kind == "wrk":
        return [
            "wrk",
            "-t", str(min(2, concurrency)),  # wrk needs at least one connection per thread
            "-c", str(concurrency),
            "-d", f"{max(1, round(duration_s))}s",  # wrk counts whole seconds
            "--timeout", f"{REQUEST_TIMEOUT_S:g}s",
            "-s", str(WRK_SCRIPT),
            url, "--", str(body_file), str(expect),
        ]  # fmt: skip
    if kind == "grpc":
        return [
            sys.executable, "-m", "bench.grpc_loadgen", url,
            "--body-file", str(body_file),
            "--concurrency", str(concurrency),
            "--duration", f"{duration_s:g}",
        ]  # fmt: skip
    return [
        sys.executable, "-m", "bench.loadgen", url,
        "--body-file", str(body_file),
        "--expect", str(expect),
        "--concurrency", str(concurrency),
        "--duration", f"{duration_s:g}",
    ]  # fmt: skip


def run_loadgen(
    kind: LoadgenKind,
    url: str,
    body_file: Path,
    *,
    expect: int,
    concurrency: int,
    duration_s: float,
    cwd: Path,
    log: IO[bytes],
) -> LoadResult:
    """Run one load generator to its end; return its result and the CPU time it used."""
    argv = loadgen_argv(kind, url, body_file, expect, concurrency, duration_s)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    # Its own session, so a terminal's Ctrl-C reaches the runner, which stops it in `finally`.
    child = subprocess.Popen(
        argv, cwd=cwd, stdout=subprocess.PIPE, stderr=log, start_new_session=True
    )
    try:
        out, _ = child.communicate(timeout=duration_s + _EXIT_GRACE_S)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    # Children's usage counts once they are reaped: the delta is this generator's alone, since
    # nothing else the runner started is reaped while it runs.
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = parse_result(out.decode(errors="replace"), f"{argv[0]} exited {child.returncode}")
    result.cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result


def parse_result(output: str, context: str) -> LoadResult:
    """Read the `BENCH_RESULT` line of a generator's output."""
    for line in output.splitlines():
        if line.startswith(RESULT_PREFIX):
            return LoadResult(**json.loads(line.removeprefix(RESULT_PREFIX)))
    raise RuntimeError(f"no result from the load generator ({context}): {output[-500:]!r}")


# --- The pure-Python generator: asyncio streams on uvloop, one connection per client ---


@dataclass
class Tally:
    """Counters shared by the clients of one run (one event loop, so no locking)."""

    started: int = 0
    settled: int = 0  # started requests that got a reply or were lost
    ok: int = 0
    errors: int = 0
    latencies_s: list[float] = field(default_factory=list)


RequestMaker = Callable[[], bytes]


def post_head(
    target: str, host: str, length: int, headers: Mapping[str, str] | None = None
) -> bytes:
    """Build the head of an HTTP/1.1 POST of a JSON body of `length` bytes to `target`."""
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    return (
        f"POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"{extra}Content-Length: {length}\r\n\r\n"
    ).encode()


def request_maker(url: str, body: bytes) -> RequestMaker:
    """Return a function that builds each request's bytes, with a fresh id where marked."""
    parts = urlsplit(url)
    target = parts.path or "/"
    prefix, marker, suffix = body.partition(ID_MARKER.encode())
    if not marker:
        fixed = post_head(target, parts.netloc, len(body)) + body
        return lambda: fixed
    sent = 0

    def make() -> bytes:
        nonlocal sent
        sent += 1
        payload = b"%s%d%s" % (prefix, sent, suffix)
        return post_head(target, parts.netloc, len(payload)) + payload

    return make


class Reply(NamedTuple):
    """One HTTP/1.1 reply: its status, its headers (names in lower case) and its body."""

    status: int
    headers: dict[bytes, bytes]
    body: bytes

    @property
    def keep_alive(self) -> bool:
        """Tell whether the server keeps the connection open after this reply."""
        return self.headers.get(b"connection", b"").lower() != b"close"


async def read_reply(reader: asyncio.StreamReader) -> Reply:
    """Read one HTTP/1.1 reply, which must carry a Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if b"content-length" not in headers:
        # Every server tested and benched here sends it; anything else is not a reply we check.
        raise ValueError("reply without Content-Length")
    body = await reader.readexactly(int(headers[b"content-length"]))
    return Reply(status, headers, body)


async def _client(
    host: str, port: int, make: RequestMaker, expect: int, tally: Tally, timeout_s: float
) -> None:
    """Send requests back to back on one connection, reconnecting after any failure."""
    while True:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            tally.errors += 1
            await asyncio.sleep(_RECONNECT_PAUSE_S)
            continue
        try:
            keep_alive = True
            while keep_alive:
                payload = make()
                tally.started += 1
                sent_at = time.perf_counter()
                async with asyncio.timeout(timeout_s):
                    writer.write(payload)
                    await writer.drain()
                    reply = await read_reply(reader)
                keep_alive = reply.keep_alive
                tally.latencies_s.append(time.perf_counter() - sent_at)
                tally.settled += 1
                if reply_is_ok(reply.status, reply.body, expect):
                    tally.ok += 1
                else:
                    tally.errors += 1
        except (OSError, TimeoutError, ValueError, IndexError, asyncio.IncompleteReadError):
            # The request in flight is lost; count it, and start over on a new connection.
            tally.settled += 1
            tally.errors += 1
            await asyncio.sleep(_RECONNECT_PAUSE_S)
        finally:
            writer.close()


def _percentile_ms(sorted_s: list[float], percent: float) -> float:
    """Return the nearest-rank percentile of sorted seconds, in milliseconds."""
    if not sorted_s:
        return 0.0
    rank = max(1, math.ceil(percent / 100 * len(sorted_s)))
    return sorted_s[rank - 1] * 1000


async def run_load(
    url: str,
    body: bytes,
    *,
    expect: int,
    concurrency: int,
    duration_s: float,
    timeout_s: float = REQUEST_TIMEOUT_S,
) -> LoadResult:
    """Drive `url` with `concurrency` clients for `duration_s`; requests in flight at the end are
    not counted, as with wrk."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    make = request_maker(url, body)
    tally = Tally()
    started = time.perf_counter()
    clients = [
        asyncio.create_task(_client(host, port, make, expect, tally, timeout_s))
        for _ in range(concurrency)
    ]
    return await finish_load(clients, tally, started, duration_s)


async def finish_load(
    clients: list["asyncio.Task[None]"], tally: Tally, started: float, duration_s: float
) -> LoadResult:
    """Let `clients` run until `duration_s` after `started`, stop them, and sum up `tally`."""
    crashed, _ = await asyncio.wait(clients, timeout=duration_s)
    elapsed = time.perf_counter() - started
    for client in clients:
        client.cancel()
    await asyncio.gather(*clients, return_exceptions=True)
    for client in crashed:
        client.result()  # a client only ends early on a bug: raise it here
    latencies = sorted(tally.latencies_s)
    return LoadResult(
        requests=tally.ok + tally.errors,
        ok=tally.ok,
        errors=tally.errors,
        unfinished=tally.started - tally.settled,
        p50_ms=round(_percentile_ms(latencies, 50), 3),
        p99_ms=round(_percentile_ms(latencies, 99), 3),
        duration_s=round(elapsed, 3),
    )


def main() -> None:
    """Run the Python load generator from the command line; print its `BENCH_RESULT` line."""
    parser = argparse.ArgumentParser(description="POST a JSON body with N keep-alive clients.")
    parser.add_argument("url")
    parser.add_argument("--body-file", type=Path, required=True)
    parser.add_argument("--expect", type=int, default=1, help='"duration": fields per good reply')
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds")
    args = parser.parse_args()
    result = uvloop.run(
        run_load(
            args.url,
            args.body_file.read_bytes(),
            expect=args.expect,
            concurrency=args.concurrency,
            duration_s=args.duration,
        )
    )
    print_result(result)


def print_result(result: LoadResult) -> None:
    """Print a run's `BENCH_RESULT` line, for the runner to read."""
    fields = asdict(result)
    del fields["cpu_s"]  # the parent measures it
    sys.stdout.write(RESULT_PREFIX + json.dumps(fields) + "\n")


if __name__ == "__main__":
    main()
