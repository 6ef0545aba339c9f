"""The gRPC load generator of `tripq bench`: tripq.v1.TripService/Predict, as loadgen.py does HTTP.

The same design as the Python HTTP generator: a child process, one connection per simulated
client (a channel of its own: grpcio shares one connection between channels to the same target
unless told not to), calls back to back, a fresh request_id per call, every reply checked
(`reply_is_ok`), requests still in flight at the end not counted, and one `BENCH_RESULT {json}`
line, so the runner reads and times it as it does the others.
"""

import argparse
import asyncio
import itertools
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import uvloop

from apps.grpc.protos.tripq.v1 import trip_pb2, trip_pb2_grpc
from bench.loadgen import (
    ID_MARKER,
    REQUEST_TIMEOUT_S,
    LoadResult,
    Tally,
    finish_load,
    print_result,
)

_RECONNECT_PAUSE_S = 0.01  # so a client of a dead server does not spin
# Each channel its own connection, as each HTTP client keeps its own.
_CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


def reply_is_ok(reply: trip_pb2.PredictReply, request_id: str) -> bool:
    """Tell whether a reply answers its call: its request_id, and a duration."""
    return reply.request_id == request_id and math.isfinite(reply.duration) and reply.duration > 0


def trip_template(body: bytes) -> dict[str, Any]:
    """Read the trip every call sends from the JSON body HTTP sends (its id is `ID_MARKER`)."""
    trip: dict[str, Any] = json.loads(body)
    if trip.get("request_id") != ID_MARKER:
        raise ValueError(f"the body's request_id must be {ID_MARKER!r}")
    return trip


def first_answer(target: str, trip: dict[str, Any]) -> bool:
    """Tell whether the server at `target` answers one trip correctly (a readiness check)."""
    with grpc.insecure_channel(target) as channel:
        try:
            reply = trip_pb2_grpc.TripServiceStub(channel).Predict(
                trip_pb2.Trip(**trip, request_id="ready"), timeout=10.0
            )
        except grpc.RpcError:
            return False
    return reply_is_ok(reply, "ready")


async def _client(
    target: str, trip: dict[str, Any], ids: Iterator[int], tally: Tally, timeout_s: float
) -> None:
    """Make calls back to back on a channel of its own."""
    async with grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS) as channel:
        predict = trip_pb2_grpc.TripServiceStub(channel).Predict
        while True:
            request_id = str(next(ids))
            message = trip_pb2.Trip(**trip, request_id=request_id)
            tally.started += 1
            sent_at = time.perf_counter()
            try:
                reply = await predict(message, timeout=timeout_s)
            except grpc.aio.AioRpcError as exc:
                # A refusal is a reply, timed as HTTP's are; a server that is not there is
                # retried after a pause, as the HTTP generator reconnects.
                tally.latencies_s.append(time.perf_counter() - sent_at)
                tally.settled += 1
                tally.errors += 1
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    await asyncio.sleep(_RECONNECT_PAUSE_S)
                continue
            tally.latencies_s.append(time.perf_counter() - sent_at)
            tally.settled += 1
            if reply_is_ok(reply, request_id):
                tally.ok += 1
            else:
                tally.errors += 1


async def run_grpc_load(
    target: str,
    trip: dict[str, Any],
    *,
    concurrency: int,
    duration_s: float,
    timeout_s: float = REQUEST_TIMEOUT_S,
) -> LoadResult:
    """Drive `target` (host:port) with `concurrency` clients for `duration_s`; calls in flight
    at the end are not counted."""
    trip = {k: v for k, v in trip.items() if k != "request_id"}
    ids = itertools.count(1)
    tally = Tally()
    started = time.perf_counter()
    clients = [
        asyncio.create_task(_client(target, trip, ids, tally, timeout_s))
        for _ in range(concurrency)
    ]
    return await finish_load(clients, tally, started, duration_s)


def main() -> None:
    """Run the gRPC load generator from the command line; print its `BENCH_RESULT` line."""
    parser = argparse.ArgumentParser(description="Call TripService/Predict with N clients.")
    parser.add_argument("target", help="host:port")
    parser.add_argument("--body-file", type=Path, required=True, help="the trip, as JSON")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds")
    args = parser.parse_args()
    result = uvloop.run(
        run_grpc_load(
            args.target,
            trip_template(args.body_file.read_bytes()),
            concurrency=args.concurrency,
            duration_s=args.duration,
        )
    )
    print_result(result)


if __name__ == "__main__":
    main()
