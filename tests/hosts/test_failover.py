"""Redis Sentinel failover under load: a master, two replicas and three Sentinels, each on a host
of its own; the master's host dies while both API hosts serve predictions and accept async jobs,
each job on a replica before it is accepted (JOBS_MIN_REPLICAS=1).

tripq reaches Redis through `REDIS_URL=sentinel://...` (core.infra.redis_clients): every new
connection asks a Sentinel for the master, so once the replica is promoted the API and the
workers find it. The test counts what clients saw while it happened: requests refused (503, with
Retry-After) or timed out (504 at the deadline), seconds until answers came again, accepted jobs
that never ended, and answers that reached the wrong request.
"""

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import redis

from tests.hosts.conftest import Fleet, host_env
from tests.hosts.loads import (
    STEADY_OK,
    WITHIN_S,
    answered_since,
    kinds,
    start_loads,
    stop_loads,
)
from tests.hosts.network import Network
from tests.support import Outcome, SentinelProcess, latency_summary, varied_trips, wait_until

MASTER = "tripq"
SENTINEL_PORT = 26379
JOB_TRIPS = 20
JOB_EVERY_S = 0.05
# What docs/failure-behaviour.md recommends: every job on a replica before its 202, and two
# replicas, so that the new master has one to copy new jobs to.
MIN_REPLICAS = 1


@dataclass
class JobClients:
    """Clients that POST a small job to each API host in turn, until stopped."""

    bases: list[str]
    accepted: list[str] = field(default_factory=list)  # job ids answered 202
    refused: Counter[int] = field(default_factory=Counter)  # other status codes
    failed: Counter[str] = field(default_factory=Counter)  # no HTTP reply at all
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        trips = varied_trips(JOB_TRIPS, prefix="job-")
        with httpx.Client(timeout=10) as client:
            n = 0
            while not self._stop.wait(JOB_EVERY_S):
                base = self.bases[n % len(self.bases)]
                n += 1
                try:
                    reply = client.post(f"{base}/v1/trip/jobs", json={"trips": trips})
                except httpx.HTTPError as exc:
                    self.failed[type(exc).__name__] += 1
                    continue
                if reply.status_code == 202:
                    self.accepted.append(reply.json()["job_id"])
                else:
                    self.refused[reply.status_code] += 1

    @contextmanager
    def running(self) -> Iterator["JobClients"]:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(30)


def test_a_sentinel_failover_under_load_refuses_explicitly_and_loses_no_accepted_job(
    network: Network,
    fleet: Fleet,
    figures: Callable[[str], None],
    wrong_durations: Callable[[list[Outcome]], list[Outcome]],
) -> None:
    master_host = network.add_host("redis1")
    replica_hosts = [network.add_host("redis2"), network.add_host("redis3")]
    sentinel_hosts = [network.add_host(f"sentinel{n}") for n in (1, 2, 3)]
    api_hosts = [network.add_host("api1"), network.add_host("api2")]
    worker_hosts = [network.add_host("worker1"), network.add_host("worker2")]
    master = fleet.redis(master_host)
    replicas = [fleet.redis(h, "--replicaof", master.host, str(master.port)) for h in replica_hosts]
    sentinels = [
        SentinelProcess(
            SENTINEL_PORT,
            MASTER,
            master,
            fleet.log_dir / f"sentinel-{host.name}",
            host=host.address,
            quorum=2,
            wrap=host.prefix,
        )
        for host in sentinel_hosts
    ]
    asking = redis.Redis(
        host=sentinel_hosts[0].address, port=SENTINEL_PORT, socket_timeout=1, decode_responses=True
    )
    try:

        def master_is(*addresses: str) -> bool:
            try:
                named = asking.sentinel_get_master_addr_by_name(MASTER)
            except redis.RedisError:
                return False
            return isinstance(named, tuple) and named[0] in addresses

        def replicas_in_sync() -> bool:
            info = redis.Redis.from_url(master.url).info("replication")
            online = [info.get(f"slave{n}", {}).get("state") for n in range(len(replicas))]
            return online == ["online"] * len(replicas)

        wait_until(lambda: master_is(master.host), WITHIN_S, "the Sentinels to name the master")
        wait_until(replicas_in_sync, WITHIN_S, "the replicas to be in sync")
        url = ";".join(s.url for s in sentinels) + "/0"
        env = host_env(
            url, fleet.log_dir, redis_sentinel_master=MASTER, jobs_min_replicas=MIN_REPLICAS
        )
        bases, _ = fleet.start(env, api_hosts, worker_hosts)

        loads = start_loads(bases)
        jobs = JobClients(bases)
        try:
            with jobs.running():
                for load in loads:
                    answered_since(load, 0.0, STEADY_OK, "the load to be answered")
                wait_until(lambda: len(jobs.accepted) >= 20, WITHIN_S, "jobs to be accepted")
                master_host.kill_all()
                master_host.cut()
                lost_at = time.monotonic()
                wait_until(
                    lambda: master_is(*(r.host for r in replicas)),
                    WITHIN_S,
                    "a replica's promotion",
                )
                promoted_s = time.monotonic() - lost_at
                for load in loads:
                    answered_since(load, lost_at, STEADY_OK, "answers from the new master")
                settled = time.monotonic()
                for load in loads:
                    answered_since(load, settled, STEADY_OK, "steady answers again")
                accepted_after = len(jobs.accepted)
                wait_until(
                    lambda: len(jobs.accepted) >= accepted_after + 20,
                    WITHIN_S,
                    "jobs to be accepted again",
                )
        finally:
            stop_loads(loads)

        ended = job_states(bases[0], jobs.accepted)
    finally:
        asking.close()
        for sentinel in sentinels:
            sentinel.stop()

    outcomes = [o for load in loads for o in load.outcomes]
    seen = kinds(outcomes)
    assert set(seen) <= {"ok", "unavailable", "timeout"}, seen
    assert not wrong_durations(outcomes), "an answer reached the wrong request"
    recovered_s = (
        max(min(o.sent_at for o in load.sent_since(lost_at) if o.kind == "ok") for load in loads)
        - lost_at
    )
    after = [o for o in outcomes if lost_at <= o.sent_at < settled]
    states = Counter(ended.values())
    assert not jobs.failed, jobs.failed
    assert set(jobs.refused) <= {503}, jobs.refused
    assert states == {"succeeded": len(jobs.accepted)}, states
    figures(
        f"replica promoted {promoted_s:.1f} s after the master's host died; 200s again on both "
        f"API hosts {recovered_s:.1f} s after; {len(outcomes)} requests: {seen['ok']} 200, "
        f"{seen['unavailable']} 503, {seen['timeout']} 504 ({latency_summary(after)} while "
        f"it recovered), none to the wrong request; {len(jobs.accepted)} jobs accepted, all "
        f"succeeded, {jobs.refused[503]} refused 503"
    )


def job_states(base: str, job_ids: list[str]) -> dict[str, str]:
    """Wait until every job has ended (or WITHIN_S passes); each one's state."""
    states: dict[str, str] = {}
    with httpx.Client(timeout=5) as client:

        def all_ended() -> bool:
            for job_id in job_ids:
                if states.get(job_id) in (None, "queued", "running"):
                    reply = client.get(f"{base}/v1/trip/jobs/{job_id}")
                    states[job_id] = (
                        reply.json()["state"]
                        if reply.status_code == 200
                        else (f"HTTP {reply.status_code}")
                    )
            return all(s not in ("queued", "running") for s in states.values())

        wait_until(all_ended, WITHIN_S, "every accepted job to end")
    return states
