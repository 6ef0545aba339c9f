"""A worker's sweep for stranded tasks: those in the queues of a model version nobody serves.

A version's queues (tasks.trip@V, and tasks.trip.jobs@V for jobs pinned to it) are consumed only
by the workers holding V (core.worker.follower). Once the routing no longer names V (`tripq models
promote | rollback` retired it) and no live worker holds it, what is left in them would wait
there for good. Each round, one worker of the fleet empties them:

    online task   dropped: its deadline has passed or will, and its client gets 504 by then
    pinned job    concluded failed, "model version V is no longer served", as its reader (and
                  its webhook) sees it: never lost silently
"""

import threading
import time
from collections.abc import Sequence

import redis
from loguru import logger

from core.jobs.store import JobRunner, job_of_task
from core.online import fleet, protocol
from core.online.routing import QUEUED_VERSIONS_KEY, ROUTING_KEY, Routing, version_queue

# How often the fleet looks for stranded tasks: four cheap reads, and a drain when there are some.
SWEEP_EVERY_S = 5.0
# Taken by the worker that sweeps a round, and left to lapse: one sweep a round, fleet-wide.
_SWEEP_LOCK_KEY = "tripq:sweep:lock"
# Most messages one round takes from a queue, so that a round stays short.
_MOST_PER_ROUND = 1000


class StrandedTaskSweeper:
    """Empty the queues of the versions no longer served: drop online tasks, fail pinned jobs.

    Each message is read, settled, then removed, so a sweeper that dies midway leaves it for the
    next round, and settling twice changes nothing (a job that has ended stays as it ended).
    """

    def __init__(
        self,
        client: redis.Redis,
        runner: JobRunner,
        *,
        queues: Sequence[str],
        worker_ttl_s: float,
        name: str,
    ) -> None:
        self._client = client
        self._runner = runner
        self._queues = list(queues)  # the online queue and the jobs queue, whose versions' count
        self._worker_ttl_s = worker_ttl_s
        self._name = name

    def run(self, stopping: threading.Event) -> None:
        """Sweep every SWEEP_EVERY_S until `stopping` is set."""
        while not stopping.wait(SWEEP_EVERY_S):
            try:
                self.sweep()
            except redis.RedisError as exc:  # Redis away: the next round tries again
                logger.warning("could not sweep stranded tasks", error=str(exc))

    def sweep(self) -> int:
        """Empty the queues of the versions no longer served, unless another worker sweeps
        this round; return how many tasks were taken."""
        if not self._client.set(_SWEEP_LOCK_KEY, self._name, nx=True, ex=int(SWEEP_EVERY_S)):
            return 0
        return sum(
            self._drain(version_queue(queue, version), version)
            for version in self.stranded()
            for queue in self._queues
        )

    def stranded(self) -> list[str]:
        """Name the versions whose queues nobody consumes: once consumed, now neither routed
        to nor held by a live worker."""
        now = time.time()
        with self._client.pipeline(transaction=False) as pipe:
            pipe.smembers(QUEUED_VERSIONS_KEY)
            pipe.hgetall(ROUTING_KEY)
            pipe.zrangebyscore(fleet.WORKERS_KEY, now - self._worker_ttl_s, "+inf", withscores=True)
            pipe.hgetall(fleet.WORKERS_INFO_KEY)
            recorded, routing, seen, info = pipe.execute()
        served = set(Routing.from_hash(routing).versions)
        served |= fleet.held_versions(fleet.live_workers(seen, info, now))
        return sorted(v for v in (r.decode() for r in recorded) if v not in served)

    def _drain(self, queue: str, version: str) -> int:
        """Take the tasks waiting in one stranded queue, oldest first; return how many."""
        taken = 0
        while taken < _MOST_PER_ROUND:
            message = self._client.lindex(queue, -1)  # LPUSH in, BRPOP out: the oldest is last
            if message is None:
                break
            self._settle(message, version)
            self._client.lrem(queue, -1, message)  # type: ignore[arg-type]  # bytes are fine
            taken += 1
        if taken:
            logger.warning("stranded tasks swept", queue=queue, tasks=taken)
        return taken

    def _settle(self, message: bytes | str, version: str) -> None:
        """Conclude the job a stranded message runs, if any; an online task needs nothing."""
        job_id = job_of_task(*protocol.task_of(message))
        if job_id is None:
            return
        state = self._runner.abandon(job_id, f"model version {version} is no longer served")
        logger.warning("pinned job abandoned", job_id=job_id, model_version=version, state=state)
