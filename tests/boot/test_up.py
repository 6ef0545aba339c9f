"""`tripq up`, the README's first command: starts Redis, workers, the API and the gRPC server;
Ctrl-C stops all."""

import signal
from pathlib import Path
from typing import Any

import grpc
import httpx
import psutil

from apps.grpc.protos.tripq.v1 import trip_pb2, trip_pb2_grpc
from tests.support import START_TIMEOUT_S, Service, free_port, tripq_env, wait_until

TRIP: dict[str, Any] = {
    "request_id": "up-1",
    "PULocationID": 43,
    "DOLocationID": 151,
    "trip_distance": 1.2,
}


def test_up_serves_predictions_and_ctrl_c_leaves_no_process_behind(tmp_path: Path) -> None:
    # Nothing answers on this port, so `up` starts its embedded Redis there.
    redis_port, api_port, grpc_port = free_port(), free_port(), free_port()
    env = tripq_env(
        f"redis://127.0.0.1:{redis_port}/0",
        tmp_path / "logs",
        embedded_redis_dir=tmp_path / "redis",
        worker_processes=1,
        worker_concurrency=4,
        api_workers=1,
    )
    up = Service(
        "up", ["up", "--port", str(api_port), "--grpc-port", str(grpc_port)], env, tmp_path
    )
    base = f"http://127.0.0.1:{api_port}"
    try:
        wait_until(lambda: "tripq is up" in up.log_tail(), START_TIMEOUT_S, "`tripq up` to be up")
        assert f"{base}/docs" in up.log_tail()
        assert f"gRPC 127.0.0.1:{grpc_port}:" in up.log_tail()
        assert (tmp_path / "redis" / "redis.log").exists()

        reply = httpx.post(f"{base}/v1/trip/predict", json=TRIP, timeout=10)
        assert reply.status_code == 200
        assert reply.json()["reply_code"] == 0
        assert httpx.get(f"{base}/docs", timeout=5).status_code == 200
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            answer = trip_pb2_grpc.TripServiceStub(channel).Predict(
                trip_pb2.Trip(**TRIP), timeout=10
            )
        assert answer.request_id == "up-1"

        family = psutil.Process(up.process.pid).children(recursive=True)
        assert len(family) >= 4  # Redis, a worker, gunicorn and its uvicorn worker, gRPC
    finally:
        code = up.stop(signal.SIGINT)

    assert code == 0, up.log_tail()
    assert "stopped" in up.log_tail()
    _, alive = psutil.wait_procs(family, timeout=10)
    assert alive == []
