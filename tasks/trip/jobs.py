"""Async jobs on the workers: the task that runs a job, and the thread that delivers webhooks.

`run_job` comes from the jobs queue (JOB_QUEUE), apart from the online queue, so a backlog of
jobs never delays a synchronous request's micro-batch. Like every tripq task it is acknowledged
after it ran: a worker killed mid-job leaves the message unacknowledged, and it goes back to the
queue (core.worker.restorer) to run again; a job that already ended is not run twice
(core.jobs.store). The work itself is core.jobs.execution's; the webhook deliveries, from one
schedule shared by every worker, are core.jobs.delivery's.
"""

from typing import Any

import redis
from celery.exceptions import Reject
from celery.signals import worker_ready
from loguru import logger

from core.jobs.store import RUN_JOB_TASK
from core.worker.process import job_execution, webhook_delivery
from tasks.app import app
from tasks.worker import model_shelf, start_service


@app.task(name=RUN_JOB_TASK, ignore_result=True)  # type: ignore[untyped-decorator]
def run_job(job_id: str, sent_at: float | None = None) -> None:
    """Predict every trip of a job, and record the replies (or why there are none) on the job.

    `sent_at`: when the API queued it (for the queue-age metric; jobs queued before it was
    sent have none)."""
    try:
        job_execution(model_shelf).run(job_id)
    except redis.RedisError as exc:
        # Back to the queue; if Redis cannot take it now, the message stays unacknowledged and
        # returns after the visibility timeout. A job that ended is never run twice.
        logger.warning("job deferred: Redis failed", job_id=job_id, error=str(exc))
        raise Reject(exc, requeue=True) from exc


@worker_ready.connect  # type: ignore[untyped-decorator]
def _start_deliveries(**_: Any) -> None:
    start_service("tripq-webhooks", webhook_delivery().run)
