"""Deliver due webhooks from a worker process: take them from the schedule, POST them signed.

    every DELIVERY_POLL_S: schedule.take(lease) ─> job ids due
        each on its own thread (at most DELIVERIES_AT_ONCE): read the job's view,
        refuse a private destination (final), POST it signed (core.jobs.webhooks),
        record delivered | pending (retry after 1, 2, 4 ... s, at most RETRY_MAX_S) | failed

Delivery is at least once: a receiver dedupes by the X-Tripq-Delivery header's job id.
"""

import threading
from importlib.metadata import version

import httpx
import orjson
import redis
from loguru import logger

from config import Settings
from core.jobs.schedule import WebhookQueue
from core.jobs.webhooks import DELIVERY_HEADER, SIGNATURE_HEADER, private_destination, sign

# Webhook schedule: a look every DELIVERY_POLL_S; waits of 1, 2, 4 ... seconds between
# attempts, at most RETRY_MAX_S; at most DELIVERIES_AT_ONCE in flight per worker process.
DELIVERY_POLL_S = 0.5
RETRY_MAX_S = 300.0
DELIVERIES_AT_ONCE = 16
_USER_AGENT = f"tripq-webhook/{version('tripq')}"


class WebhookDelivery:
    """A worker process's webhook deliverer: `run` is the loop of one of its threads."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self._settings = settings
        self._queue = WebhookQueue(client, max_attempts=settings.webhook_max_attempts)

    def run(self, stop: threading.Event) -> None:
        """Deliver due webhooks until `stop` is set."""
        timeout_s = self._settings.webhook_timeout_s
        slots = threading.BoundedSemaphore(DELIVERIES_AT_ONCE)
        with httpx.Client(timeout=timeout_s, follow_redirects=False) as http:
            while not stop.wait(DELIVERY_POLL_S):
                try:
                    due = self._queue.take(lease_s=timeout_s + 5.0, most=DELIVERIES_AT_ONCE)
                except redis.RedisError as exc:
                    logger.warning("could not read the webhook schedule", error=str(exc))
                    continue
                for job_id in due:
                    slots.acquire()
                    threading.Thread(
                        target=self._deliver_one, args=(http, slots, job_id), daemon=True
                    ).start()

    def _deliver_one(
        self, http: httpx.Client, slots: threading.BoundedSemaphore, job_id: str
    ) -> None:
        queue, settings = self._queue, self._settings
        try:
            job = queue.job(job_id)
            if job is None:
                return
            callback = job["callback"]
            attempt = callback["attempts"] + 1
            allow_private = settings.webhook_allow_private
            private = None if allow_private else private_destination(callback["url"])
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
                error = (
                    "" if reply.is_success else f"the receiver answered HTTP {reply.status_code}"
                )
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"[:500]
            state = queue.record(job_id, attempt, error, min(2.0 ** (attempt - 1), RETRY_MAX_S))
            logger.info("webhook", job_id=job_id, attempt=attempt, state=state, error=error)
        except redis.RedisError as exc:
            # The lease runs out and the delivery is taken again.
            logger.warning("webhook delivery not recorded", job_id=job_id, error=str(exc))
        finally:
            slots.release()
