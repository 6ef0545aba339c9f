"""The loads of the host tests: steady clients on every API host, and what their replies were."""

from collections import Counter
from collections.abc import Callable

import httpx

from tests.support import DEADLINE_S, Load, Outcome, latency_summary, varied_trips, wait_until

CLIENTS = 8  # per API host
PAUSE_S = 0.01  # each client's pause between requests: a steady load, not a flood
CLIENT_TIMEOUT_S = DEADLINE_S + 10  # a reply later than this is a hang
# A 504 comes at the deadline; the rest is this machine's two shared cores.
LATE_S = 1.5
STEADY_OK = 100  # answers each load gets before and after a fault
WITHIN_S = 60.0  # bound on each of those phases on this noisy machine


def start_loads(bases: list[str]) -> list[Load]:
    """One steady load per API, each client keeping its connection; started."""
    loads = [
        Load(
            base,
            varied_trips(20_000, prefix=f"{n}-"),
            concurrency=CLIENTS,
            timeout_s=CLIENT_TIMEOUT_S,
            pause_s=PAUSE_S,
            repeat=True,
        )
        for n, base in enumerate(bases)
    ]
    for load in loads:
        load.__enter__()
    return loads


def stop_loads(loads: list[Load]) -> None:
    for load in loads:
        load.__exit__()


def answered_since(load: Load, since: float, count: int, what: str) -> None:
    """Wait until `count` requests sent at or after `since` got a 200."""
    wait_until(lambda: sum(o.kind == "ok" for o in load.sent_since(since)) >= count, WITHIN_S, what)


def ready_workers(base: str) -> list[str]:
    """The names of the workers an API's /ready lists."""
    return [w["name"] for w in httpx.get(f"{base}/ready", timeout=2).json()["workers"]]


def kinds(outcomes: list[Outcome]) -> Counter[str]:
    return Counter(o.kind for o in outcomes)


def assert_answered_or_timed_out(
    outcomes: list[Outcome], wrong: Callable[[list[Outcome]], list[Outcome]]
) -> None:
    """Every request got the model's answer, or a 504 at its deadline; nothing else."""
    seen = kinds(outcomes)
    assert set(seen) <= {"ok", "timeout"}, seen
    late = [o for o in outcomes if o.kind == "timeout" and o.latency_s > DEADLINE_S + LATE_S]
    assert not late, f"{len(late)} 504s came late: {latency_summary(late)}"
    assert not wrong(outcomes), "answers differ from the model's"
