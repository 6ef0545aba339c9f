"""Ask a gRPC server whether it serves (grpc.health.v1): `tripq grpc-health`, a healthcheck."""

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]


def is_serving(target: str, timeout_s: float, service: str = "") -> bool:
    """Tell whether the server at `target` (host:port) says SERVING for `service` ("": all)."""
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError:
            return False
    serving: bool = reply.status == health_pb2.HealthCheckResponse.SERVING
    return serving
