"""A rolling deploy of the workers to another model version, under load, host by host: the new
worker starts beside the old one, then the old one gets SIGTERM and drains. Not one request may
fail, and every reply names the version that computed it."""

import time
from collections import Counter
from collections.abc import Callable

from core.infra.launch import STOP_TIMEOUT_S
from tests.hosts.conftest import Fleet, host_env
from tests.hosts.loads import STEADY_OK, answered_since, kinds, start_loads, stop_loads
from tests.hosts.network import Network
from tests.support import Outcome, latency_summary

OLD, NEW = "baseline-2021-01", "gbm-2021-01-v2"


def test_a_rolling_deploy_to_another_version_under_load_fails_no_request(
    network: Network,
    fleet: Fleet,
    figures: Callable[[str], None],
    wrong_durations: Callable[[list[Outcome]], list[Outcome]],
) -> None:
    redis_host = network.add_host("redis")
    api_hosts = [network.add_host("api1"), network.add_host("api2")]
    worker_hosts = [network.add_host("worker1"), network.add_host("worker2")]
    server = fleet.redis(redis_host)
    old_env = host_env(server.url, fleet.log_dir, serving_version=OLD)
    new_env = host_env(server.url, fleet.log_dir, serving_version=NEW)
    bases, old_workers = fleet.start(old_env, api_hosts, worker_hosts)
    loads = start_loads(bases)
    drained: list[int] = []
    try:
        for load in loads:
            answered_since(load, 0.0, STEADY_OK, "the old workers to answer")
        began = time.monotonic()
        for host, old in zip(worker_hosts, old_workers, strict=True):
            fleet.workers([host], new_env, index=2)
            since = time.monotonic()
            for load in loads:
                answered_since(load, since, STEADY_OK // 2, "old and new to answer side by side")
            drained.append(old.stop())  # SIGTERM: it finishes what it took, then exits
            since = time.monotonic()
            for load in loads:
                answered_since(load, since, STEADY_OK // 2, "the load to go on")
        deployed = time.monotonic()
        for load in loads:
            answered_since(load, deployed, STEADY_OK, "the new version to answer everything")
    finally:
        stop_loads(loads)

    outcomes = [o for load in loads for o in load.outcomes]
    assert set(kinds(outcomes)) == {"ok"}, kinds(outcomes)
    assert not wrong_durations(outcomes), "a reply names another version than computed it"
    assert drained == [0, 0], f"old workers did not exit cleanly within {STOP_TIMEOUT_S:g} s"
    after = [o for o in outcomes if o.sent_at >= deployed]
    assert {o.body["model_version"] for o in after if o.body} == {NEW}
    versions = Counter(o.body["model_version"] for o in outcomes if o.body)
    during = [o for o in outcomes if began <= o.sent_at < deployed]
    figures(
        f"{len(outcomes)} requests over 2 API hosts, all 200 ({versions[OLD]} answered by {OLD}, "
        f"{versions[NEW]} by {NEW}, each checked against the version it names); the deploy took "
        f"{deployed - began:.1f} s ({latency_summary(during)}); old workers exited 0 on SIGTERM"
    )
