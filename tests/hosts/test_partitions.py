"""Hosts cut off and hosts gone, under load: a worker host's cable pulled and plugged back in, an
API host partitioned from Redis (silence both ways), a worker host that dies for good.

What clients may see in each is what docs/failure-behaviour.md promises: 200 with the model's own
answer, 504 at the deadline for a task a lost worker held, 503 at once from an API that cannot
reach Redis; never a hang, a 500 or a connection error. Each test sends its load from this process
to the API hosts' addresses, and checks every reply.
"""

import asyncio
import os
import signal
import time
from collections.abc import Callable

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from config import Settings
from core.jobs.schemas import JobState
from core.jobs.store import JobStore, job_key
from core.worker.restorer import RESTORE_EVERY_S
from tasks.app import visibility_timeout_s
from tests.hosts.conftest import WORKER_TTL_S, Fleet, host_env
from tests.hosts.loads import (
    STEADY_OK,
    WITHIN_S,
    answered_since,
    assert_answered_or_timed_out,
    kinds,
    ready_workers,
    start_loads,
    stop_loads,
)
from tests.hosts.network import Host, Network, partitions_prerequisite
from tests.support import (
    DEADLINE_S,
    Outcome,
    latency_summary,
    wait_until,
)

VISIBILITY_S = visibility_timeout_s(
    Settings(request_timeout_s=DEADLINE_S, request_timeout_max_s=DEADLINE_S)
)
# A dead worker's tasks go back after the visibility timeout, a restore sweep, and a restore
# mutex the dead worker may have held (tasks.app).
PUT_BACK_WITHIN_S = VISIBILITY_S + RESTORE_EVERY_S + 6


def test_a_worker_host_cut_off_costs_only_504s_at_the_deadline_and_rejoins_without_restart(
    network: Network,
    fleet: Fleet,
    figures: Callable[[str], None],
    wrong_durations: Callable[[list[Outcome]], list[Outcome]],
) -> None:
    redis_host = network.add_host("redis")
    api_hosts = [network.add_host("api1"), network.add_host("api2")]
    cut, kept = network.add_host("worker1"), network.add_host("worker2")
    server = fleet.redis(redis_host)
    env = host_env(server.url, fleet.log_dir)
    bases, (cut_worker, kept_worker) = fleet.start(env, api_hosts, [cut, kept])
    client = redis.Redis.from_url(server.url)
    loads = start_loads(bases)
    try:
        for load in loads:
            answered_since(load, 0.0, STEADY_OK, "the load to be answered")
        # Pull the cable while tasks are out (most likely some of them with this worker).
        wait_until(lambda: client.hlen("unacked") > 0, WITHIN_S, "tasks being worked on")
        cut_at, cut_wall = time.monotonic(), time.time()
        cut.cut()

        # The fleet forgets it, and what it had taken goes back to the queue (expired: dropped).
        wait_until(
            lambda: all(cut_worker.hostname not in ready_workers(base) for base in bases),
            WITHIN_S,
            "/ready to drop the cut-off worker",
        )
        wait_until(
            lambda: client.zcount("unacked_index", "-inf", cut_wall) == 0,
            PUT_BACK_WITHIN_S,
            "the tasks the cut-off worker held to go back to the queue",
        )
        put_back_s = time.monotonic() - cut_at
        cut.reconnect()
        back_at = time.monotonic()
        wait_until(
            lambda: all(cut_worker.hostname in ready_workers(base) for base in bases),
            WITHIN_S,
            "the worker to rejoin once its cable is back",
        )
        rejoin_s = time.monotonic() - back_at
        assert cut_worker.alive(), "the worker was restarted, or died"

        # It serves again: with the other worker stopped, every answer is its.
        kept_worker.stop()
        alone = time.monotonic()
        for load in loads:
            answered_since(load, alone, STEADY_OK, "the rejoined worker to answer alone")
    finally:
        stop_loads(loads)
        client.close()

    outcomes = [o for load in loads for o in load.outcomes]
    assert_answered_or_timed_out(outcomes, wrong_durations)
    during = [o for o in outcomes if cut_at <= o.sent_at < back_at]
    figures(
        f"{len(outcomes)} requests over 2 API hosts, {kinds(outcomes)['timeout']} answered 504 "
        f"at the deadline, the rest 200; cut off "
        f"{back_at - cut_at:.1f} s ({latency_summary(during)}); nothing taken before the cut "
        f"left unacknowledged {put_back_s:.1f} s after it; in /ready again {rejoin_s:.1f} s "
        "after the cable came back, the same process"
    )


def test_an_api_host_cut_from_redis_answers_503_at_once_while_the_other_answers_200(
    network: Network,
    fleet: Fleet,
    figures: Callable[[str], None],
    wrong_durations: Callable[[list[Outcome]], list[Outcome]],
) -> None:
    reason = partitions_prerequisite()
    if reason:
        pytest.skip(reason)
    redis_host = network.add_host("redis")
    cut_api, kept_api = network.add_host("api1"), network.add_host("api2")
    worker_hosts = [network.add_host("worker1"), network.add_host("worker2")]
    server = fleet.redis(redis_host)
    env = host_env(server.url, fleet.log_dir)
    bases, _ = fleet.start(env, [cut_api, kept_api], worker_hosts)
    cut_load, kept_load = loads = start_loads(bases)
    try:
        for load in loads:
            answered_since(load, 0.0, STEADY_OK, "the load to be answered")
        cut_at = time.monotonic()
        cut_api.partition(redis_host)
        wait_until(
            lambda: any(o.kind == "unavailable" for o in cut_load.sent_since(cut_at)),
            WITHIN_S,
            "the cut-off API to answer 503",
        )
        first_503_s = (
            min(
                o.sent_at + o.latency_s
                for o in cut_load.sent_since(cut_at)
                if o.kind == "unavailable"
            )
            - cut_at
        )
        refusing = time.monotonic()
        wait_until(lambda: len(cut_load.sent_since(refusing)) >= STEADY_OK, WITHIN_S, "more 503s")
        cut_api.heal(redis_host)
        back_at = time.monotonic()
        answered_since(cut_load, back_at, STEADY_OK, "the API to answer again")
        recovered_s = (
            min(o.sent_at for o in cut_load.sent_since(back_at) if o.kind == "ok") - back_at
        )
        answered_since(kept_load, back_at, STEADY_OK, "the other API to go on")
    finally:
        stop_loads(loads)

    # The other API host never noticed.
    assert set(kinds(kept_load.outcomes)) == {"ok"}, kinds(kept_load.outcomes)
    assert not wrong_durations(kept_load.outcomes)
    # The cut-off one: 200s, then (for what was in flight) 504s at the deadline, then 503s at once.
    seen = kinds(cut_load.outcomes)
    assert set(seen) <= {"ok", "timeout", "unavailable"}, seen
    refused = [o for o in cut_load.sent_since(refusing) if o.sent_at < back_at]
    assert refused
    assert {o.kind for o in refused} == {"unavailable"}, kinds(refused)
    assert max(o.latency_s for o in refused) < 0.5, latency_summary(refused)
    late = [o for o in cut_load.outcomes if o.kind == "timeout" and o.sent_at >= refusing]
    assert not late, f"{len(late)} requests sent once it refused waited for their deadline"
    assert not wrong_durations(cut_load.outcomes)
    figures(
        f"cut-off API: first 503 {first_503_s:.2f} s after the cut, then every request 503 "
        f"({latency_summary(refused)}); {seen['timeout']} in flight at the cut answered 504; "
        f"200 again {recovered_s:.2f} s after the link came back; the other API host: "
        f"{len(kept_load.outcomes)} requests, all 200"
    )


LONG_JOB_TRIPS = 400_000  # seconds of a worker: long enough to be caught running


def create_long_job(redis_url: str) -> str:
    """Accept a job of LONG_JOB_TRIPS trips exactly as the API does; return its id."""
    ids = range(LONG_JOB_TRIPS)
    payload = {
        "columns": {
            "PULocationID": [1 + i % 265 for i in ids],
            "DOLocationID": [1 + (i * 11) % 265 for i in ids],
            "trip_distance": [0.5 + i % 30 for i in ids],
        },
        "request_ids": [f"t{i}" for i in ids],
        "refused": {},
    }

    async def create() -> tuple[str, str]:
        client = AsyncRedis.from_url(redis_url)
        try:
            store = JobStore(client, Settings(), origin="hosts-test")
            return await store.create(
                payload=payload,
                trips=LONG_JOB_TRIPS,
                body_sha="hosts",
                owner="",
                idempotency=None,
                callback_url=None,
                callback_secret=None,
                version=None,
            )
        finally:
            await client.aclose()

    return asyncio.run(create())[0]


def job_field(client: redis.Redis, job_id: str, field: str) -> str | None:
    value = client.hget(job_key(job_id), field)
    return value.decode() if isinstance(value, bytes) else value


def blocked_from(client: redis.Redis, host: Host) -> bool:
    """Tell whether a connection from `host` waits in a blocking pop (a worker asking for work)."""
    return any(
        c["addr"].startswith(f"{host.address}:") and "b" in c["flags"] for c in client.client_list()
    )


def test_a_worker_host_gone_for_good_leaves_ready_within_the_ttl_and_loses_nothing(
    network: Network,
    fleet: Fleet,
    figures: Callable[[str], None],
    wrong_durations: Callable[[list[Outcome]], list[Outcome]],
) -> None:
    redis_host = network.add_host("redis")
    api_hosts = [network.add_host("api1"), network.add_host("api2")]
    gone, kept = network.add_host("worker1"), network.add_host("worker2")
    server = fleet.redis(redis_host)
    env = host_env(server.url, fleet.log_dir)
    bases, (gone_worker, kept_worker) = fleet.start(env, api_hosts, [gone, kept])
    client = redis.Redis.from_url(server.url)

    # The doomed host takes a long job: the other worker pauses until the job is running.
    os.kill(kept_worker.process.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: not blocked_from(client, kept), 10, "the paused worker's pop to end")
        job_id = create_long_job(server.url)
        wait_until(
            lambda: job_field(client, job_id, "state") == "running", WITHIN_S, "the job to run"
        )
    finally:
        os.kill(kept_worker.process.pid, signal.SIGCONT)

    loads = start_loads(bases)
    try:
        for load in loads:
            answered_since(load, 0.0, STEADY_OK // 4, "the load to be answered")
        assert job_field(client, job_id, "state") == "running", "the job ended before the loss"
        gone.kill_all()
        gone.cut()
        gone_at = time.monotonic()

        def dropped() -> bool:
            names = [ready_workers(base) for base in bases]
            return all(gone_worker.hostname not in n and kept_worker.hostname in n for n in names)

        wait_until(dropped, WITHIN_S, "/ready to drop the lost worker")
        dropped_s = time.monotonic() - gone_at
        after = time.monotonic()
        for load in loads:
            answered_since(load, after, STEADY_OK, "the other worker to answer everything")
        stop_loads(loads)
        wait_until(
            lambda: JobState(job_field(client, job_id, "state") or "queued").final,
            PUT_BACK_WITHIN_S + WITHIN_S,
            "the other worker to run the lost worker's job",
        )
        job_s = time.monotonic() - gone_at
    finally:
        stop_loads(loads)
        client.close()

    outcomes = [o for load in loads for o in load.outcomes]
    assert_answered_or_timed_out(outcomes, wrong_durations)
    assert dropped_s <= WORKER_TTL_S + 2.0, f"/ready dropped it only after {dropped_s:.1f} s"
    reread = redis.Redis.from_url(server.url)
    try:
        assert job_field(reread, job_id, "state") == "succeeded"
        # Run again by the other worker: at least once more (a run longer than the visibility
        # timeout is given back mid-way and run again, as docs/jobs.md says).
        attempts = int(job_field(reread, job_id, "attempts") or 0)
        assert attempts >= 2
    finally:
        reread.close()
    figures(
        f"/ready dropped the lost worker {dropped_s:.1f} s after its host died (WORKER_TTL_S "
        f"{WORKER_TTL_S:g}); {len(outcomes)} requests, {kinds(outcomes)['timeout']} answered "
        f"504 at the deadline, the rest 200; the job it was running succeeded on the other "
        f"worker {job_s:.1f} s after the loss ({attempts} attempts in all)"
    )
