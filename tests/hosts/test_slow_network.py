"""A slow, lossy network to Redis: 20 ms of delay and 1 % of frames lost, each way, on the Redis
host's cable (tests.hosts.link), against the same cable clean, in one test, one after the other.

The deadline is the default one (REQUEST_TIMEOUT_S, 5 s): what a user runs with.
"""

from collections.abc import Callable

from config import Settings
from tests.hosts.conftest import Fleet, host_env
from tests.hosts.loads import CLIENT_TIMEOUT_S, CLIENTS, PAUSE_S, kinds
from tests.hosts.network import Network
from tests.support import Load, Outcome, latency_summary, varied_trips

DELAY_MS, LOSS = 20.0, 0.01
REQUESTS = 1500  # per API host and network
DEADLINE_S = Settings().request_timeout_s


def run_load(bases: list[str], prefix: str) -> list[Outcome]:
    """Send REQUESTS trips to each API host at once; every outcome."""
    loads = [
        Load(
            base,
            varied_trips(REQUESTS, prefix=f"{prefix}{n}-"),
            concurrency=CLIENTS,
            timeout_s=DEADLINE_S + CLIENT_TIMEOUT_S,
            pause_s=PAUSE_S,
        )
        for n, base in enumerate(bases)
    ]
    for load in loads:
        load.__enter__()
    return [o for load in loads for o in load.wait(600)]


def test_a_slow_lossy_network_to_redis_costs_latency_not_answers(
    network: Network,
    fleet: Fleet,
    figures: Callable[[str], None],
    wrong_durations: Callable[[list[Outcome]], list[Outcome]],
) -> None:
    redis_host = network.add_host("redis", slow_link=True)
    api_hosts = [network.add_host("api1"), network.add_host("api2")]
    worker_hosts = [network.add_host("worker1"), network.add_host("worker2")]
    server = fleet.redis(redis_host)
    env = host_env(
        server.url, fleet.log_dir, request_timeout_s=DEADLINE_S, request_timeout_max_s=DEADLINE_S
    )
    bases, _ = fleet.start(env, api_hosts, worker_hosts)
    assert redis_host.link is not None

    clean = run_load(bases, "clean")
    redis_host.link.impair(DELAY_MS, LOSS)
    try:
        slow = run_load(bases, "slow")
    finally:
        redis_host.link.impair(0, 0)

    assert set(kinds(clean)) == {"ok"}, kinds(clean)
    assert not wrong_durations(clean + slow)
    seen = kinds(slow)
    assert set(seen) <= {"ok", "timeout", "unavailable"}, seen
    figures(
        f"clean: {len(clean)} requests, all 200, {latency_summary(clean)}; "
        f"{DELAY_MS:g} ms and {LOSS:.0%} loss each way: {len(slow)} requests, "
        f"{seen['ok']} 200, {seen['timeout']} 504, {seen['unavailable']} 503, "
        f"{latency_summary(slow)}"
    )
