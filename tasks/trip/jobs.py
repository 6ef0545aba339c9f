"""Async jobs on the workers: run a job's trips, record its end, deliver its webhook.

`run_job` comes from the jobs queue (JOB_QUEUE), apart from the online queue, so a backlog of
jobs never delays a synchronous request's micro-batch. Like every tripq task it is acknowledged
after it ran: a worker killed mid-job leaves the message unacknowledged, and it goes back to the
queue (tasks.worker) to run again; a job that already ended is not run twice (core.jobs.store).

Webhooks are delivered by every worker from one shared schedule in Redis: due deliveries are
taken with a lease, POSTed signed (core.jobs.webhooks), and retried with doubling waits until the
receiver answers 2xx or WEBHOOK_MAX_ATTEMPTS is reached. Delivery is at least once: a receiver
dedupes by the X-Tripq-Delivery header's job id.
"""

import threading
from importlib.metadata import version
from typing import Any

import httpx
import orjson
import redis
from celery.exceptions import Reject
from celery.signals import worker_ready
from loguru import logger

from core.errors import TripqError
from core.jobs.schemas import JobState
from core.jobs.store import RUN_JOB_TASK, JobRunner, WebhookQueue
from core.jobs.webhooks import DELIVERY_HEADER, SIGNATURE_HEADER, private_destination, sign
from core.trip.batch_request import merge_replies
from core.trip.schemas import TripColumns
from tasks.app import app, settings
from tasks.worker import broker_client, model_shelf, stopping

_client = broker_client()
_runner = JobRunner(
    _client, result_ttl_s=settings.job_result_ttl_s, run_timeout_s=settings.job_run_timeout_s
)

# Webhook schedule: a look every DELIVERY_POLL_S; waits of 1, 2, 4 ... seconds between
# attempts, at most RETRY_MAX_S; at most DELIVERIES_AT_ONCE in flight per worker process.
DELIVERY_POLL_S = 0.5
RETRY_MAX_S = 300.0
DELIVERIES_AT_ONCE = 16
_USER_AGENT = f"tripq-webhook/{version('tripq')}"


@app.task(name=RUN_JOB_TASK, ignore_result=True)  # type: ignore[untyped-decorator]
def run_job(job_id: str, sent_at: float | None = None) -> None:
    """Predict every trip of a job, and record the replies (or why there are none) on the job.

    `sent_at`: when the API queued it (for the queue-age metric; jobs queued before it was
    sent have none)."""
    try:
        claimed = _runner.claim(job_id)
        if isinstance(claimed, str):
            logger.info("job not run", job_id=job_id, state=claimed)
            return
        payload, pinned = claimed
        state, result, error, answered_by = _predict(payload, pinned)
        _runner.finish(job_id, state, result=result, error=error, model_version=answered_by)
    except redis.RedisError as exc:
        # Back to the queue; if Redis cannot take it now, the message stays unacknowledged and
        # returns after the visibility timeout. A job that ended is never run twice.
        logger.warning("job deferred: Redis failed", job_id=job_id, error=str(exc))
        raise Reject(exc, requeue=True) from exc
    logger.info("job ended", job_id=job_id, state=state, trips=len(payload["request_ids"]))


def _predict(
    payload: dict[str, Any], pinned: str | None
) -> tuple[JobState, dict[str, Any] | None, str, str]:
    """Run a job's payload: (state, result, error, model version that answered)."""
    try:
        trips = TripColumns.model_validate(payload["columns"])
        if trips.trip_distance:
            durations, answered_by = model_shelf.predict_columns(trips, pinned)
        else:  # every trip of the job was refused at submission
            durations, answered_by = [], pinned or ""
    except TripqError as exc:
        return JobState.FAILED, None, exc.message, ""
    except Exception:
        logger.exception("job failed while predicting")
        return JobState.FAILED, None, "the worker failed while predicting", ""
    refused = {int(position): reply for position, reply in payload["refused"].items()}
    replies = merge_replies(payload["request_ids"], durations, refused)
    return JobState.SUCCEEDED, {"model_version": answered_by, "replies": replies}, "", answered_by


def deliver_webhooks(stop: threading.Event) -> None:
    """Deliver due webhooks until `stop` is set (a thread of each worker process)."""
    queue = WebhookQueue(_client, max_attempts=settings.webhook_max_attempts)
    slots = threading.BoundedSemaphore(DELIVERIES_AT_ONCE)
    with httpx.Client(timeout=settings.webhook_timeout_s, follow_redirects=False) as http:
        while not stop.wait(DELIVERY_POLL_S):
            try:
                due = queue.take(lease_s=settings.webhook_timeout_s + 5.0, most=DELIVERIES_AT_ONCE)
            except redis.RedisError as exc:
                logger.warning("could not read the webhook schedule", error=str(exc))
                continue
            for job_id in due:
                slots.acquire()
                threading.Thread(
                    target=_deliver_one, args=(queue, http, slots, job_id), daemon=True
                ).start()


def _deliver_one(
    queue: WebhookQueue, http: httpx.Client, slots: threading.BoundedSemaphore, job_id: str
) -> None:
    try:
        job = queue.job(job_id)
        if job is None:
            return
        callback = job["callback"]
        attempt = callback["attempts"] + 1
        private = None if settings.webhook_allow_private else private_destination(callback["url"])
        if private is not None:  # final: another attempt would resolve the same way
            error = f"{private} is not a public address (WEBHOOK_ALLOW_PRIVATE)"
            queue.record(job_id, attempt, error, 0.0, final=True)
            logger.warning("webhook refused", job_id=job_id, error=error)
            return
        body = orjson.dumps(job)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": _USER_AGENT,
            DELIVERY_HEADER: f"{job_id}.{attempt}",
        }
        secret = settings.webhook_secret.get_secret_value()
        if secret:
            headers[SIGNATURE_HEADER] = sign(secret, body)
        try:
            reply = http.post(callback["url"], content=body, headers=headers)
            error = "" if reply.is_success else f"the receiver answered HTTP {reply.status_code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        state = queue.record(job_id, attempt, error, min(2.0 ** (attempt - 1), RETRY_MAX_S))
        logger.info("webhook", job_id=job_id, attempt=attempt, state=state, error=error)
    except redis.RedisError as exc:
        # The lease runs out and the delivery is taken again.
        logger.warning("webhook delivery not recorded", job_id=job_id, error=str(exc))
    finally:
        slots.release()


@worker_ready.connect  # type: ignore[untyped-decorator]
def _start_deliveries(**_: Any) -> None:
    threading.Thread(
        target=deliver_webhooks, args=(stopping,), name="tripq-webhooks", daemon=True
    ).start()
