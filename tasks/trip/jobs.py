"""Async jobs on the workers: the task that runs a job, and the thread that delivers webhooks.

`run_job` comes from the jobs queue (JOB_QUEUE; a job pinned to version V from JOB_QUEUE@V, which
the workers holding V consume), apart from the online queues, so a backlog of jobs never delays
a synchronous request's micro-batch. Its message expires with the job: one taken too late is
discarded unrun, and the job concluded expired at once (`_settle_expired_job`). Like every tripq
task it is acknowledged after it ran: a worker killed mid-job leaves the message unacknowledged,
and it goes back to the queue (core.worker.restorer) to run again; a job that already ended is
not run twice (core.jobs.store). The work itself is core.jobs.execution's; the webhook
deliveries, from one schedule shared by every worker, are core.jobs.delivery's.
"""

from typing import Any

import redis
from celery.exceptions import Reject
from celery.signals import task_revoked, worker_ready
from loguru import logger

from config import get_settings
from core.jobs.store import RUN_JOB_TASK, job_of_task
from core.worker.process import job_execution, job_runner, webhook_delivery
from tasks.app import app
from tasks.offload import look_up_off_hub, set_lookup_threads
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


@task_revoked.connect  # type: ignore[untyped-decorator]
def _settle_expired_job(request: Any = None, expired: bool = False, **_: Any) -> None:
    """Conclude at once the job of a task message that expired unrun (no worker took it within
    JOB_QUEUE_TIMEOUT_S): `expired`, and its webhook queued, without waiting for a reader."""
    job_id = job_of_task(getattr(request, "task", None), getattr(request, "id", None))
    if not expired or job_id is None:
        return
    try:
        state = job_runner().settle(job_id)
    except redis.RedisError as exc:  # the job's next read concludes it all the same
        logger.warning("expired job not settled", job_id=job_id, error=str(exc))
        return
    logger.info("job task expired unrun", job_id=job_id, state=state)


@worker_ready.connect  # type: ignore[untyped-decorator]
def _start_deliveries(**_: Any) -> None:
    # One lookup thread per delivery slot: lookups never wait for one another, nor for inference.
    set_lookup_threads(get_settings().webhook_deliveries_at_once)
    start_service("tripq-webhooks", webhook_delivery(look_up_off_hub).run)
