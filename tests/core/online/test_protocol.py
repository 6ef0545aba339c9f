"""The hand-written task message has the shape Celery's own producer writes."""

import base64
import json
from datetime import UTC, datetime, timedelta

import redis
from celery import Celery

from core.online import protocol

TRIP = {"request_id": "1", "PULocationID": 130, "DOLocationID": 250, "trip_distance": 3.0}


def test_task_message_has_the_shape_celery_writes(redis_client: redis.Redis) -> None:
    url = redis_client.connection_pool.connection_kwargs
    broker = f"redis://{url['host']}:{url['port']}/{url['db']}"
    celery = Celery(broker=broker, set_as_current=False)
    celery.conf.task_serializer = "json"
    expires = datetime.now(UTC) + timedelta(seconds=5)
    celery.send_task(
        "tasks.trip.tasks.predict_ride",
        args=[TRIP],
        kwargs={"sent_at": 1.0},
        queue="shape.celery",
        expires=expires,
    )
    raw = redis_client.rpop("shape.celery")
    assert isinstance(raw, bytes)
    theirs = json.loads(raw)

    ours = json.loads(
        protocol.encode_task(
            task_id="abc",
            task_name="tasks.trip.tasks.predict_ride",
            queue="shape.celery",
            args=[TRIP],
            kwargs={"sent_at": 1.0},
            expires=expires,
            origin="test",
        )
    )

    assert set(ours) == set(theirs)
    assert set(ours["headers"]) == set(theirs["headers"])
    assert set(ours["properties"]) - {"expiration"} == set(theirs["properties"]) - {"expiration"}
    assert ours["properties"]["delivery_info"] == theirs["properties"]["delivery_info"]
    assert ours["headers"]["expires"] == theirs["headers"]["expires"]
    assert ours["content-type"] == theirs["content-type"] == "application/json"
    assert json.loads(base64.b64decode(ours["body"])) == json.loads(
        base64.b64decode(theirs["body"])
    )


def test_result_record_decodes_to_its_status_and_value() -> None:
    raw = json.dumps({"status": "SUCCESS", "result": {"duration": 12.5}, "task_id": "t"})

    outcome = protocol.decode_result(raw)

    assert outcome.ready
    assert outcome.status == "SUCCESS"
    assert outcome.result == {"duration": 12.5}
    assert not protocol.decode_result(json.dumps({"status": "STARTED"})).ready
