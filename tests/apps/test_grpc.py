"""tripq.v1.TripService over the network: the real `tripq grpc` process, a real worker, Redis.

Three servers share the module's Redis and its one worker: `served` (API keys on), `stalled`
(its queue has no worker, its deadlines are short and its queue bound small) and `cut_off` (its
Redis is a port where nothing listens).
"""

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import grpc
import orjson
import pytest
import redis
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]
from grpc_reflection.v1alpha import (  # type: ignore[import-untyped]
    reflection_pb2,
    reflection_pb2_grpc,
)
from grpc_status import rpc_status  # type: ignore[import-untyped]

from apps.grpc.health import is_serving
from apps.grpc.protos.tripq.v1 import trip_pb2, trip_pb2_grpc
from apps.grpc.stubs import PROTO_ROOT, generate_stubs, stub_paths
from bench.tracing import SpanSink
from config import PROJECT_ROOT
from core.model.artifact import TripModel, load_model
from core.model.registry import resolve_model_dir
from core.trip.schemas import TripRequest
from tests.apps.test_predict import own_answer, varied_trips
from tests.support import (
    START_TIMEOUT_S,
    Service,
    free_port,
    start_worker,
    tripq_env,
    wait_until,
)

KEY = "grpc-test-key"
AUTH = (("x-api-key", KEY),)
TRIP: dict[str, Any] = {
    "request_id": "99999",
    "PULocationID": 130,
    "DOLocationID": 250,
    "trip_distance": 3.0,
}
STALLED_QUEUE = "tasks.grpc-stalled"
STALLED_TIMEOUT_S = 1.0  # REQUEST_TIMEOUT_S of the stalled server
STALLED_MAX_S = 1.5  # its REQUEST_TIMEOUT_MAX_S
STALLED_MAX_DEPTH = 3  # its QUEUE_MAX_DEPTH
CALL_TIMEOUT_S = 15.0


SERVICE = "tripq.v1.TripService"


def start_grpc(
    name: str, env: dict[str, str], log_dir: Path, serving: bool = True
) -> tuple[Service, str]:
    """Start `tripq grpc` on a free port; return it, and its address, once its health says
    SERVING: the TripService's (Redis answers), or unless `serving` the process's own."""
    port = free_port()
    server = Service(
        f"grpc-{name}-{port}", ["grpc", "--host", "127.0.0.1", "--port", str(port)], env, log_dir
    )
    target = f"127.0.0.1:{port}"

    def ready() -> bool:
        if not server.alive():
            pytest.fail(f"tripq grpc exited at start:\n{server.log_tail()}")
        return is_serving(target, 1.0, SERVICE if serving else "")

    try:
        wait_until(ready, START_TIMEOUT_S, f"tripq grpc ({name}) to answer health checks")
    except BaseException:
        server.stop()
        raise
    return server, target


def health_status(target: str, service: str) -> int | None:
    """Ask the server's grpc.health.v1 for a service's status ("": the server's own); None when
    it does not answer."""
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=1.0
            )
        except grpc.RpcError:
            return None
    status: int = reply.status
    return status


@pytest.fixture(scope="module")
def model() -> TripModel:
    """The default model, loaded in the test process to compare with the service's answers."""
    return load_model(resolve_model_dir(PROJECT_ROOT / "repo" / "models", None))


@pytest.fixture(scope="module")
def worker(redis_url: str, log_dir: Path) -> Iterator[None]:
    """One worker on the default queue, for every server of the module."""
    process = start_worker(tripq_env(redis_url, log_dir), log_dir)
    yield
    process.stop()


def _server(name: str, env: dict[str, str], log_dir: Path, serving: bool = True) -> Iterator[str]:
    server, target = start_grpc(name, env, log_dir, serving)
    yield target
    # SIGTERM drains and stops it, its connections to Redis closed: exit code 0.
    assert server.stop() == 0, server.log_tail()


@pytest.fixture(scope="module")
def served(worker: None, redis_url: str, log_dir: Path) -> Iterator[str]:
    """The address of a server that takes API keys, its tasks read by the module's worker."""
    yield from _server("served", tripq_env(redis_url, log_dir, api_keys=f"{KEY},other"), log_dir)


@pytest.fixture(scope="module")
def stalled(worker: None, redis_url: str, log_dir: Path) -> Iterator[str]:
    """The address of a server whose queue no worker reads."""
    env = tripq_env(
        redis_url,
        log_dir,
        queue=STALLED_QUEUE,
        request_timeout_s=STALLED_TIMEOUT_S,
        request_timeout_max_s=STALLED_MAX_S,
        queue_max_depth=STALLED_MAX_DEPTH,
    )
    yield from _server("stalled", env, log_dir)


@pytest.fixture
def stalled_queue(redis_client: redis.Redis) -> Iterator[redis.Redis]:
    """The stalled server's queue, emptied after the test."""
    yield redis_client
    redis_client.delete(STALLED_QUEUE)


@pytest.fixture(scope="module")
def cut_off(log_dir: Path) -> Iterator[str]:
    """The address of a server whose Redis does not answer."""
    env = tripq_env(f"redis://127.0.0.1:{free_port()}/0", log_dir)
    yield from _server("cut-off", env, log_dir, serving=False)


@pytest.fixture(scope="module")
def channel(served: str) -> Iterator[grpc.Channel]:
    """A channel to the served server."""
    with grpc.insecure_channel(served) as opened:
        yield opened


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> trip_pb2_grpc.TripServiceStub:
    """A TripService client of the served server."""
    return trip_pb2_grpc.TripServiceStub(channel)


@dataclass(frozen=True)
class Refused:
    """How a call failed: its status code and message, trailing metadata and rich status."""

    code: grpc.StatusCode
    details: str
    metadata: dict[str, Any]
    status: Any  # google.rpc.Status, or None when the server sent none


def refused(error: grpc.RpcError) -> Refused:
    """Read what a failed call says."""
    metadata = {item.key: item.value for item in error.trailing_metadata() or ()}
    return Refused(error.code(), error.details() or "", metadata, rpc_status.from_call(error))


def refusal_of(call: Callable[..., object], *args: Any, **kwargs: Any) -> Refused:
    """Make a call that must fail; say how it failed."""
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, **kwargs)
    return refused(caught.value)


def detail_of(status: Any, kind: Any) -> Any:
    """Unpack the one detail of `kind` that a rich status carries."""
    found = [d for d in status.details if d.Is(kind.DESCRIPTOR)]
    assert len(found) == 1, status
    detail = kind()
    found[0].Unpack(detail)
    return detail


def test_committed_stubs_are_those_the_proto_generates(tmp_path: Path) -> None:
    generate_stubs(tmp_path)

    stale = [
        str(committed.relative_to(PROJECT_ROOT))
        for committed, fresh in zip(stub_paths(PROTO_ROOT), stub_paths(tmp_path), strict=True)
        if not committed.exists() or committed.read_bytes() != fresh.read_bytes()
    ]
    assert not stale, f"regenerate the stubs with `tripq grpc-stubs`: {stale} differ"


def test_predict_equals_the_models_own_answer(
    stub: trip_pb2_grpc.TripServiceStub, model: TripModel
) -> None:
    reply = stub.Predict(trip_pb2.Trip(**TRIP), metadata=AUTH, timeout=CALL_TIMEOUT_S)

    assert reply.request_id == "99999"
    assert reply.duration == pytest.approx(own_answer(model, TRIP), rel=1e-9)
    assert reply.model_version == model.version
    assert reply.timings.total_ms > 0


def test_predict_with_a_pickup_time_equals_the_models_own_answer(
    stub: trip_pb2_grpc.TripServiceStub, model: TripModel
) -> None:
    trip = {**TRIP, "pickup_datetime": "2021-02-05T08:30:00"}

    reply = stub.Predict(trip_pb2.Trip(**trip), metadata=AUTH, timeout=CALL_TIMEOUT_S)

    assert reply.duration == pytest.approx(own_answer(model, trip), rel=1e-9)


@pytest.mark.parametrize(
    ("trip", "field", "why"),
    [
        ({k: v for k, v in TRIP.items() if k != "request_id"}, "request_id", "Field required"),
        ({**TRIP, "PULocationID": 0}, "PULocationID", "greater than or equal to 1"),
        ({**TRIP, "DOLocationID": 266}, "DOLocationID", "less than or equal to 265"),
        ({**TRIP, "trip_distance": -1.0}, "trip_distance", "greater than or equal to 0"),
        ({**TRIP, "trip_distance": math.nan}, "trip_distance", "finite number"),
        ({**TRIP, "pickup_datetime": "yesterday"}, "pickup_datetime", "datetime"),
    ],
)
def test_invalid_trip_is_refused_with_invalid_argument_naming_the_field(
    stub: trip_pb2_grpc.TripServiceStub, trip: dict[str, Any], field: str, why: str
) -> None:
    error = refusal_of(stub.Predict, trip_pb2.Trip(**trip), metadata=AUTH, timeout=CALL_TIMEOUT_S)

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details.startswith(f"{field}: ")
    assert why in error.details
    assert error.metadata["reply-code"] == "1"
    violations = detail_of(error.status, error_details_pb2.BadRequest).field_violations
    assert [v.field for v in violations] == [field]


@pytest.mark.parametrize("metadata", [(), (("x-api-key", "wrong"),)], ids=["missing", "wrong"])
def test_call_without_a_valid_key_is_refused_with_unauthenticated(
    stub: trip_pb2_grpc.TripServiceStub, metadata: tuple[tuple[str, str], ...]
) -> None:
    error = refusal_of(
        stub.Predict, trip_pb2.Trip(**TRIP), metadata=metadata, timeout=CALL_TIMEOUT_S
    )

    assert error.code == grpc.StatusCode.UNAUTHENTICATED
    assert error.details == "x-api-key: missing or not valid"
    assert error.metadata["reply-code"] == "6"


def test_pin_to_a_version_no_worker_holds_fails_its_precondition(
    stub: trip_pb2_grpc.TripServiceStub,
) -> None:
    pinned = (*AUTH, ("x-model-version", "gbm-1999-01-nowhere"))

    error = refusal_of(stub.Predict, trip_pb2.Trip(**TRIP), metadata=pinned, timeout=CALL_TIMEOUT_S)

    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "gbm-1999-01-nowhere" in error.details
    assert error.metadata["reply-code"] == "1"


def test_pin_to_the_version_a_worker_holds_is_answered_by_it(
    stub: trip_pb2_grpc.TripServiceStub, model: TripModel
) -> None:
    pinned = (*AUTH, ("x-model-version", model.version))

    reply = stub.Predict(trip_pb2.Trip(**TRIP), metadata=pinned, timeout=CALL_TIMEOUT_S)

    assert reply.model_version == model.version


def test_batch_answers_each_trip_in_order_and_refuses_an_invalid_one_alone(
    stub: trip_pb2_grpc.TripServiceStub, model: TripModel
) -> None:
    trips = cast(list[dict[str, Any]], varied_trips(5))
    trips[2] = {**trips[2], "PULocationID": 999}
    request = trip_pb2.PredictBatchRequest(trips=[trip_pb2.Trip(**t) for t in trips])

    reply = stub.PredictBatch(request, metadata=AUTH, timeout=CALL_TIMEOUT_S)

    assert [r.request_id for r in reply.replies] == [t["request_id"] for t in trips]
    assert [r.reply_code for r in reply.replies] == [0, 0, 1, 0, 0]
    refused = reply.replies[2]
    assert refused.message.startswith("PULocationID: ")
    assert not refused.HasField("duration")
    for trip, outcome in zip(trips, reply.replies, strict=True):
        if outcome.reply_code == 0:
            assert outcome.duration == pytest.approx(own_answer(model, trip), rel=1e-9)
    assert reply.model_version == model.version


def test_empty_batch_is_refused_naming_trips(stub: trip_pb2_grpc.TripServiceStub) -> None:
    error = refusal_of(
        stub.PredictBatch, trip_pb2.PredictBatchRequest(), metadata=AUTH, timeout=CALL_TIMEOUT_S
    )

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details.startswith("trips: ")


def test_stream_answers_every_trip_with_its_request_id(
    stub: trip_pb2_grpc.TripServiceStub, model: TripModel
) -> None:
    trips = cast(list[dict[str, Any]], varied_trips(300))
    invalid = {"request_id": "bad", "PULocationID": 1, "DOLocationID": 1, "trip_distance": -5.0}
    sent = [*trips[:150], invalid, *trips[150:]]

    outcomes = list(
        stub.PredictStream(
            iter(trip_pb2.Trip(**t) for t in sent), metadata=AUTH, timeout=CALL_TIMEOUT_S
        )
    )

    by_id = {o.request_id: o for o in outcomes}
    assert len(outcomes) == len(sent) == len(by_id)
    assert by_id["bad"].reply_code == trip_pb2.REPLY_CODE_INVALID_REQUEST
    assert by_id["bad"].message.startswith("trip_distance: ")
    expected = model.predict_trips([TripRequest.model_validate(t) for t in trips])
    for trip, duration in zip(trips, expected, strict=True):
        outcome = by_id[trip["request_id"]]
        assert outcome.reply_code == trip_pb2.REPLY_CODE_OK
        assert outcome.duration == pytest.approx(duration, rel=1e-9)
        assert outcome.model_version == model.version


def test_stream_without_a_valid_key_is_refused_with_unauthenticated(
    stub: trip_pb2_grpc.TripServiceStub,
) -> None:
    error = refusal_of(
        lambda: list(stub.PredictStream(iter([trip_pb2.Trip(**TRIP)]), timeout=CALL_TIMEOUT_S))
    )

    assert error.code == grpc.StatusCode.UNAUTHENTICATED


def test_health_says_serving_while_redis_answers(served: str) -> None:
    assert health_status(served, SERVICE) == health_pb2.HealthCheckResponse.SERVING
    assert health_status(served, "") == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_trip_service(channel: grpc.Channel) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")

    replies = list(reflection.ServerReflectionInfo(iter([request]), timeout=CALL_TIMEOUT_S))

    names = {s.name for s in replies[0].list_services_response.service}
    assert {"tripq.v1.TripService", "grpc.health.v1.Health"} <= names


def test_call_without_a_deadline_times_out_at_request_timeout(
    stalled: str, stalled_queue: redis.Redis
) -> None:
    with grpc.insecure_channel(stalled) as opened:
        error = refusal_of(trip_pb2_grpc.TripServiceStub(opened).Predict, trip_pb2.Trip(**TRIP))

    assert error.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert error.details == f"no worker answered within {STALLED_TIMEOUT_S:g} s"
    assert error.metadata["reply-code"] == "2"


def test_a_long_deadline_is_capped_by_request_timeout_max(
    stalled: str, stalled_queue: redis.Redis
) -> None:
    with grpc.insecure_channel(stalled) as opened:
        error = refusal_of(
            trip_pb2_grpc.TripServiceStub(opened).Predict,
            trip_pb2.Trip(**TRIP),
            timeout=CALL_TIMEOUT_S,
        )

    assert error.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert error.details == f"no worker answered within {STALLED_MAX_S:g} s"


def test_call_deadline_is_its_tasks_expiry(stalled: str, stalled_queue: redis.Redis) -> None:
    deadline_s = 0.5
    before = time.time()
    with grpc.insecure_channel(stalled) as opened:
        error = refusal_of(
            trip_pb2_grpc.TripServiceStub(opened).Predict, trip_pb2.Trip(**TRIP), timeout=deadline_s
        )
    after = time.time()

    assert error.code == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_until(lambda: stalled_queue.llen(STALLED_QUEUE), 5, "the call's task on the queue")
    (message,) = stalled_queue.lrange(STALLED_QUEUE, 0, -1)
    expires = _expiry(message)
    # It expires with the call's deadline, before the server's own default would have it.
    assert before < expires <= after + deadline_s
    assert expires < before + STALLED_TIMEOUT_S


def test_full_queue_is_refused_with_resource_exhausted_and_a_retry_hint(
    stalled: str, stalled_queue: redis.Redis
) -> None:
    stalled_queue.lpush(STALLED_QUEUE, *[b"{}"] * STALLED_MAX_DEPTH)
    with grpc.insecure_channel(stalled) as opened:
        predict = trip_pb2_grpc.TripServiceStub(opened).Predict
        refusals: list[grpc.RpcError] = []

        def is_refused() -> bool:
            try:
                predict(trip_pb2.Trip(**TRIP), timeout=0.3)
            except grpc.RpcError as exc:
                refusals.append(exc)
                return exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            return False

        wait_until(is_refused, 10, "the server to see the full queue")

    error = refused(refusals[-1])
    assert "retry shortly" in error.details
    assert error.metadata["retry-after"] == "1"
    assert error.metadata["reply-code"] == "4"
    assert detail_of(error.status, error_details_pb2.RetryInfo).retry_delay.seconds == 1


def test_health_says_the_service_is_not_serving_while_redis_does_not_answer(
    cut_off: str,
) -> None:
    assert health_status(cut_off, SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING
    # The process itself serves: it answers each call at once (UNAVAILABLE, a retry hint).
    assert health_status(cut_off, "") == health_pb2.HealthCheckResponse.SERVING


def test_call_while_redis_does_not_answer_is_refused_with_unavailable_and_a_retry_hint(
    cut_off: str,
) -> None:
    with grpc.insecure_channel(cut_off) as opened:
        error = refusal_of(
            trip_pb2_grpc.TripServiceStub(opened).Predict,
            trip_pb2.Trip(**TRIP),
            timeout=CALL_TIMEOUT_S,
        )

    assert error.code == grpc.StatusCode.UNAVAILABLE
    assert "Redis" in error.details
    assert error.metadata["retry-after"] == "1"
    assert error.metadata["reply-code"] == "5"
    assert detail_of(error.status, error_details_pb2.RetryInfo).retry_delay.seconds == 1


def _expiry(message: bytes | str) -> float:
    """Read the wall-clock expiry (epoch seconds) of a task message on a queue."""
    expires = orjson.loads(message)["headers"]["expires"]
    return datetime.fromisoformat(expires).timestamp()


def test_traced_call_continues_the_clients_trace_into_the_task_it_sends(
    worker: None, redis_url: str, log_dir: Path
) -> None:
    client_trace, client_span = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    traceparent = f"00-{client_trace}-{client_span}-01"
    with SpanSink() as sink:
        env = tripq_env(redis_url, log_dir, otel_exporter_otlp_endpoint=sink.endpoint)
        server, target = start_grpc("traced", env, log_dir)
        try:
            with grpc.insecure_channel(target) as opened:
                trip_pb2_grpc.TripServiceStub(opened).Predict(
                    trip_pb2.Trip(**TRIP),
                    metadata=(("traceparent", traceparent),),
                    timeout=CALL_TIMEOUT_S,
                )
        finally:
            assert server.stop() == 0, server.log_tail()  # which flushes its spans

        def exported() -> bool:
            return sum(s.trace_id == client_trace for s in sink.spans) >= 2

        wait_until(exported, 10, "the gRPC process to export the call's spans")
    spans = {s.name: s for s in sink.spans if s.trace_id == client_trace}

    call = spans["tripq.v1.TripService/Predict"]
    send = spans["tasks.trip.tasks.predict_batch send"]
    assert (call.kind, call.parent_span_id) == (2, client_span)  # a server span, the client's child
    assert call.attributes["rpc.system"] == "grpc"
    assert send.parent_span_id == call.span_id
