"""End to end over HTTP: the real API, a real worker process, a real Redis."""

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from config import PROJECT_ROOT
from core.model.artifact import TripModel, load_model
from core.model.registry import resolve_model_dir
from core.trip.schemas import TripRequest
from tests.support import Service, tripq_env, wait_until

TRIP = {"request_id": "99999", "PULocationID": 130, "DOLocationID": 250, "trip_distance": 3.0}


@pytest.fixture(scope="module")
def model() -> TripModel:
    """The default model, loaded in the test process to compare with the service's answers."""
    return load_model(resolve_model_dir(PROJECT_ROOT / "repo" / "models", None))


def varied_trips(count: int) -> list[dict[str, object]]:
    """Trips whose zones and distances all differ, each with its own request id."""
    return [
        {
            "request_id": f"r{i}",
            "PULocationID": 1 + (i * 7) % 265,
            "DOLocationID": 1 + (i * 13) % 265,
            "trip_distance": round(0.3 + i * 0.01, 2),
        }
        for i in range(count)
    ]


def own_answer(model: TripModel, trip: dict[str, object]) -> float:
    return model.predict_trips([TripRequest.model_validate(trip)])[0]


def test_prediction_equals_the_models_own_answer(platform: str, model: TripModel) -> None:
    reply = httpx.post(f"{platform}/v1/trip/predict", json=TRIP, timeout=10)

    assert reply.status_code == 200
    body = reply.json()
    assert body["reply_code"] == 0
    assert body["request_id"] == "99999"
    assert body["duration"] == pytest.approx(own_answer(model, TRIP), rel=1e-9)
    assert body["model_version"] == model.version
    assert set(body["timings"]) == {"total_ms", "queue_ms", "inference_ms"}


def test_integer_request_id_is_accepted_and_echoed_as_a_string(platform: str) -> None:
    reply = httpx.post(
        f"{platform}/v1/trip/predict", json={**TRIP, "request_id": 12345}, timeout=10
    )

    assert reply.status_code == 200
    assert reply.json()["request_id"] == "12345"


def test_300_varied_trips_at_32_in_flight_all_succeed_with_input_dependent_answers(
    platform: str, model: TripModel
) -> None:
    trips = varied_trips(300)

    async def send_all() -> list[httpx.Response]:
        limit = asyncio.Semaphore(32)
        async with httpx.AsyncClient(
            base_url=platform, timeout=15, limits=httpx.Limits(max_connections=32)
        ) as client:

            async def send(trip: dict[str, object]) -> httpx.Response:
                async with limit:
                    return await client.post("/v1/trip/predict", json=trip)

            return await asyncio.gather(*(send(t) for t in trips))

    replies = asyncio.run(send_all())

    assert [r.status_code for r in replies] == [200] * 300
    bodies = [r.json() for r in replies]
    assert [b["request_id"] for b in bodies] == [t["request_id"] for t in trips]
    for trip, body in zip(trips, bodies, strict=True):
        assert body["duration"] == pytest.approx(own_answer(model, trip), rel=1e-9)
    assert len({b["duration"] for b in bodies}) > 250


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({k: v for k, v in TRIP.items() if k != "request_id"}, "request_id"),
        ({**TRIP, "PULocationID": "abc"}, "PULocationID"),
        ({**TRIP, "PULocationID": 0}, "PULocationID"),
        ({**TRIP, "DOLocationID": 266}, "DOLocationID"),
        ({**TRIP, "trip_distance": -1}, "trip_distance"),
        ({**TRIP, "trip_distance": 1e9}, "trip_distance"),
        ({**TRIP, "request_id": ""}, "request_id"),
        ({**TRIP, "request_id": "x" * 129}, "request_id"),
    ],
)
def test_invalid_body_answers_400_naming_the_field(
    platform: str, body: dict[str, object], field: str
) -> None:
    reply = httpx.post(f"{platform}/v1/trip/predict", json=body, timeout=10)

    assert reply.status_code == 400
    error = reply.json()
    assert error["reply_code"] == 1
    assert field in error["message"]
    assert [e["field"] for e in error["errors"]] == [field]


def test_non_finite_distance_answers_400(platform: str) -> None:
    raw = json.dumps({**TRIP, "trip_distance": float("nan")})  # Python writes the NaN literal

    reply = httpx.post(
        f"{platform}/v1/trip/predict",
        content=raw,
        headers={"content-type": "application/json"},
        timeout=10,
    )

    assert reply.status_code == 400
    assert "trip_distance" in reply.json()["message"]


def test_malformed_json_answers_400_without_a_traceback(platform: str) -> None:
    reply = httpx.post(
        f"{platform}/v1/trip/predict",
        content=b'{"request_id": "1", "PULocationID": ',
        headers={"content-type": "application/json"},
        timeout=10,
    )

    assert reply.status_code == 400
    assert reply.json()["reply_code"] == 1
    assert "Traceback" not in reply.text


def test_health_names_the_service_and_the_model_version(platform: str, model: TripModel) -> None:
    reply = httpx.get(f"{platform}/health", timeout=5)

    assert reply.status_code == 200
    body = reply.json()
    assert body["name"] == "tripq"
    assert body["api_version"]
    assert body["model_version"] == model.version


def test_ready_lists_live_workers_and_their_model_versions(platform: str, model: TripModel) -> None:
    reply = httpx.get(f"{platform}/ready", timeout=5)

    assert reply.status_code == 200
    body = reply.json()
    assert body["ready"] is True
    assert body["redis"] is True
    assert body["model_versions"] == [model.version]
    assert len(body["workers"]) == 1
    assert body["workers"][0]["name"].startswith("trip1@")


def test_docs_document_every_endpoint_with_examples_and_error_replies(platform: str) -> None:
    assert httpx.get(f"{platform}/docs", timeout=5).status_code == 200
    assert httpx.get(f"{platform}/redoc", timeout=5).status_code == 200
    spec = httpx.get(f"{platform}/openapi.json", timeout=5).json()

    predict = spec["paths"]["/v1/trip/predict"]["post"]
    assert predict["description"]
    body = predict["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("/TripRequest")
    batch = spec["paths"]["/v1/trip/predict/batch"]["post"]
    assert batch["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/BatchRequest"
    )
    assert set(batch["responses"]) >= {"200", "400", "500", "503", "504"}
    assert set(predict["responses"]) >= {"200", "400", "429", "500", "503", "504"}
    for status in ("400", "429", "500", "503", "504"):
        schema = predict["responses"][status]["content"]["application/json"]["schema"]
        assert schema["$ref"].endswith("/ErrorReply")
    schemas = spec["components"]["schemas"]
    assert schemas["TripRequest"]["examples"]
    assert schemas["BatchRequest"]["examples"]
    assert schemas["BatchReply"]["examples"]
    assert schemas["TripReply"]["examples"]
    assert schemas["ErrorReply"]["examples"]
    assert schemas["HealthReply"]["examples"]
    assert schemas["ReadyReply"]["examples"]
    for path in ("/health", "/ready"):
        assert spec["paths"][path]["get"]["description"]


def test_cli_predict_goes_through_the_queue(
    platform: str, redis_url: str, log_dir: Path, model: TripModel
) -> None:
    cli = Service(
        "cli-predict",
        ["predict", "--pu", "130", "--do", "250", "--distance", "3.0", "--request-id", "cli-1"],
        tripq_env(redis_url, log_dir),
        log_dir,
    )
    assert cli.finish(30) == 0, cli.log_tail()

    answer = json.loads(cli.log_tail().strip().splitlines()[-1])
    assert answer["request_id"] == "cli-1"
    assert answer["duration"] == pytest.approx(own_answer(model, TRIP), rel=1e-9)


def test_each_request_is_logged_once_with_its_id_and_timings(platform: str, log_dir: Path) -> None:
    httpx.post(f"{platform}/v1/trip/predict", json={**TRIP, "request_id": "log-me"}, timeout=10)

    def logged() -> list[str]:
        api_logs = (log_dir / "apps" / "api").glob("api-*.log")
        return [line for f in api_logs for line in f.read_text().splitlines() if "log-me" in line]

    wait_until(lambda: logged(), 5, "the request's log line")
    [line] = logged()
    assert "'reply_code': 0" in line
    assert "'total_ms'" in line
    assert "'inference_ms'" in line
    worker_logs = list((log_dir / "tasks" / "trip").glob("worker-*.log"))
    assert worker_logs


def test_batch_endpoint_answers_each_trip_in_order_with_the_models_answer(
    platform: str, model: TripModel
) -> None:
    trips = varied_trips(1200)

    reply = httpx.post(f"{platform}/v1/trip/predict/batch", json={"trips": trips}, timeout=30)

    assert reply.status_code == 200
    body = reply.json()
    assert body["reply_code"] == 0
    assert body["model_version"] == model.version
    assert [r["request_id"] for r in body["replies"]] == [t["request_id"] for t in trips]
    assert all(r["reply_code"] == 0 for r in body["replies"])
    expected = model.predict_trips([TripRequest.model_validate(t) for t in trips])
    assert [r["duration"] for r in body["replies"]] == pytest.approx(expected, rel=1e-9)


def test_batch_endpoint_refuses_an_invalid_trip_alone_and_answers_the_rest(platform: str) -> None:
    trips = [TRIP, {**TRIP, "request_id": "bad", "PULocationID": 0}, {**TRIP, "request_id": 7}]

    reply = httpx.post(f"{platform}/v1/trip/predict/batch", json={"trips": trips}, timeout=10)

    assert reply.status_code == 200
    replies = reply.json()["replies"]
    assert [r["reply_code"] for r in replies] == [0, 1, 0]
    assert replies[1]["request_id"] == "bad"
    assert "PULocationID" in replies[1]["message"]
    assert replies[2]["request_id"] == "7"
    assert replies[0]["duration"] == replies[2]["duration"]


def test_batch_endpoint_refuses_more_than_10000_trips_with_400(platform: str) -> None:
    reply = httpx.post(
        f"{platform}/v1/trip/predict/batch", json={"trips": [TRIP] * 10_001}, timeout=30
    )

    assert reply.status_code == 400
    assert reply.json()["reply_code"] == 1
    assert "trips" in reply.json()["message"]
