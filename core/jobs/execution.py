"""Run one job on a worker: claim it, predict its trips, record how it ended.

    claim (core.jobs.store.JobRunner) ─ not runnable ─> nothing (its state is logged)
        └ running ─ decode (JobPayload) ─ predict ─ merge with the refusals ─ finish

A Redis error escapes `JobExecution.run`: the task gives the message back to its queue, and a job
that already ended is never run twice (the CLAIM and FINISH scripts see to that).
"""

from collections.abc import Callable
from typing import Any

from loguru import logger

from core.errors import TripqError
from core.jobs.payload import decode_job_payload, refused_replies
from core.jobs.schemas import JobState
from core.jobs.store import JobRunner
from core.trip.batch_request import merge_replies
from core.trip.schemas import TripColumns

# Predict a job's trips with the pinned version (None: the current one): (durations, version).
PredictColumns = Callable[[TripColumns, str | None], tuple[list[float], str]]


class JobExecution:
    """A worker process's job runner: one per process, shared by its greenlets."""

    def __init__(self, runner: JobRunner, predict_columns: PredictColumns) -> None:
        self._runner = runner
        self._predict_columns = predict_columns

    def run(self, job_id: str) -> None:
        """Predict every trip of a job, and record the replies (or why there are none) on it."""
        claimed = self._runner.claim(job_id)
        if isinstance(claimed, str):
            logger.info("job not run", job_id=job_id, state=claimed)
            return
        payload, pinned = claimed
        state, result, error, answered_by = self._predict(payload, pinned)
        self._runner.finish(job_id, state, result=result, error=error, model_version=answered_by)
        logger.info("job ended", job_id=job_id, state=state, trips=len(payload["request_ids"]))

    def _predict(
        self, payload: dict[str, Any], pinned: str | None
    ) -> tuple[JobState, dict[str, Any] | None, str, str]:
        """Run a job's payload: (state, result, error, model version that answered)."""
        try:
            job = decode_job_payload(payload)
            if job.columns.trip_distance:
                durations, answered_by = self._predict_columns(job.columns, pinned)
            else:  # every trip of the job was refused at submission
                durations, answered_by = [], pinned or ""
        except TripqError as exc:
            return JobState.FAILED, None, exc.message, ""
        except Exception:
            logger.exception("job failed while predicting")
            return JobState.FAILED, None, "the worker failed while predicting", ""
        replies = merge_replies(job.request_ids, durations, refused_replies(job))
        return (
            JobState.SUCCEEDED,
            {"model_version": answered_by, "replies": replies},
            "",
            answered_by,
        )
