"""A job's payload: what the API stores is what the worker reads, refusals at their positions."""

from core.errors import ReplyCode
from core.jobs.payload import decode_job_payload, encode_job_payload, refused_replies
from core.trip.batch_request import merge_replies
from core.trip.schemas import TripOutcome

COLUMNS = {"PULocationID": [130], "DOLocationID": [250], "trip_distance": [3.0]}


def test_a_payload_encoded_by_the_api_decodes_on_the_worker_with_its_refusals() -> None:
    outcome = TripOutcome(reply_code=ReplyCode.INVALID_REQUEST, request_id="r0", message="bad")
    encoded = encode_job_payload(COLUMNS, ["r1"], {0: outcome})

    assert set(encoded["refused"]) == {"0"}  # JSON keys, as the job hash has always held them
    job = decode_job_payload(encoded)
    assert job.columns.trip_distance == [3.0]
    assert job.request_ids == ["r1"]
    replies = merge_replies(job.request_ids, [12.5], refused_replies(job))
    assert replies[0] == outcome.model_dump(mode="json", exclude_none=True)
    assert replies[1] == {"reply_code": 0, "request_id": "r1", "duration": 12.5}


def test_a_payload_queued_before_the_schema_still_decodes() -> None:
    job = decode_job_payload({"columns": COLUMNS, "request_ids": ["a"], "refused": {}})

    assert job.refused == {}
