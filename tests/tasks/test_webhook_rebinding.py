"""DNS rebinding, tried for real: a worker on a test host whose name server answers a callback's
name with a public address first and a private one after, as an attacker's would.

    this process (root namespace): the API, and the name server on the switch address .1
    host "redis"                    Redis
    host "worker"                   a worker; /etc/netns/<its namespace>/resolv.conf -> .1
    host "receiver"                 one receiver on port 80, at 93.184.215.14 (a public address,
                                    routed from the worker's host) and at its private .12

A deliverer that resolved the name again to connect would reach the receiver's private address;
tripq's connects to the public one it checked. Needs root (network namespaces); skips elsewhere.
"""

import contextlib
import ctypes
import os
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.infra.embedded_redis import EmbeddedRedis
from tests.hosts.conftest import Fleet, host_env
from tests.hosts.network import Host, Network, prerequisite
from tests.receivers import HostileReceiver, PlainReceiver
from tests.support import start_api, wait_until

PUBLIC = "93.184.215.14"
REBINDING = "hook.rebind.test"  # answers PUBLIC first, then the receiver's private address
MISSING = "missing.rebind.test"  # answers that no such name exists
_CLONE_NEWNET = 0x40000000
TRIP = {"request_id": "r1", "PULocationID": 130, "DOLocationID": 250, "trip_distance": 3.0}


class RebindingNameServer:
    """A name server (UDP) that answers A queries for REBINDING with `first`, then `later`;
    NXDOMAIN for MISSING; and no address for anything else. It counts the A queries."""

    def __init__(self, host: str, first: str, later: str) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((host, 53))
        self._sock.settimeout(0.1)
        self._answers = [socket.inet_aton(first), socket.inet_aton(later)]
        self.a_queries: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop answering."""
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                query, client = self._sock.recvfrom(512)
            except TimeoutError:
                continue
            self._sock.sendto(self._reply(query), client)

    def _reply(self, query: bytes) -> bytes:
        """Answer one query (one question, as resolvers send)."""
        labels, at = [], 12
        while query[at]:
            labels.append(query[at + 1 : at + 1 + query[at]].decode().lower())
            at += 1 + query[at]
        question = query[12 : at + 5]
        qtype = struct.unpack("!H", query[at + 1 : at + 3])[0]
        name = ".".join(labels)
        answers: list[bytes] = []
        rcode = 3 if name == MISSING else 0
        if name == REBINDING and qtype == 1:
            self.a_queries.append(name)
            address = self._answers[min(len(self.a_queries), 2) - 1]
            # The name (a pointer to the question's), A, IN, TTL 0: never cached.
            answers.append(struct.pack("!HHHIH", 0xC00C, 1, 1, 0, 4) + address)
        header = struct.pack("!HHHHHH", struct.unpack("!H", query[:2])[0], 0x8180 | rcode, 1,
                             len(answers), 0, 0)  # fmt: skip
        return header + question + b"".join(answers)


def serve_on(host: Host, make: type[HostileReceiver]) -> HostileReceiver:
    """Make a receiver whose socket lives in `host`'s network namespace, on port 80 (it serves
    once entered).

    A thread's network namespace is its own (setns): the listening socket is made on a thread
    that entered the host's namespace, and serves from there wherever it is used."""
    made: list[HostileReceiver] = []
    errors: list[BaseException] = []

    def enter_and_listen() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/var/run/netns/{host.namespace}", os.O_RDONLY)
        try:
            if libc.setns(fd, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            made.append(make(host="0.0.0.0", port=80))
        except BaseException as exc:
            errors.append(exc)
        finally:
            os.close(fd)

    thread = threading.Thread(target=enter_and_listen)
    thread.start()
    thread.join(10)
    if errors:
        raise errors[0]
    return made[0]


@pytest.fixture(scope="module")
def rebinding(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The hosts of the module docstring, running; yield the API, receiver and name server."""
    reason = prerequisite()
    if reason:
        pytest.skip(reason)
    log_dir = tmp_path_factory.mktemp("rebinding")
    with contextlib.ExitStack() as stack:
        network = Network()
        stack.callback(network.close)
        fleet = Fleet(log_dir)
        stack.callback(fleet.stop)
        redis_host, worker, receiver_host = (
            network.add_host(name) for name in ("redis", "worker", "receiver")
        )
        ip("-n", receiver_host.namespace, "addr", "add", f"{PUBLIC}/32", "dev", "eth0")
        ip("-n", worker.namespace, "route", "add", f"{PUBLIC}/32", "via", receiver_host.address)
        names = RebindingNameServer(network.client_address, PUBLIC, receiver_host.address)
        stack.callback(names.close)
        resolv_dir = Path("/etc/netns") / worker.namespace
        resolv_dir.mkdir(parents=True, exist_ok=True)
        stack.callback(shutil.rmtree, resolv_dir, ignore_errors=True)
        (resolv_dir / "resolv.conf").write_text(
            f"nameserver {network.client_address}\noptions timeout:1 attempts:1\n"
        )
        receiver = stack.enter_context(serve_on(receiver_host, PlainReceiver))
        server: EmbeddedRedis = fleet.redis(redis_host)
        env = host_env(server.url, log_dir, webhook_max_attempts=1)
        fleet.workers([worker], env)
        api, base = start_api(env, log_dir)
        stack.callback(api.stop)
        yield {"base": base, "receiver": receiver, "names": names}


def ip(*args: str) -> None:
    """Run one `ip` command, failing loudly."""
    subprocess.run(["ip", *args], check=True, capture_output=True)


def settled(base: str, callback_url: str) -> dict[str, Any]:
    """Submit a job whose webhook goes to `callback_url`; its callback once delivered or failed."""
    body = {**TRIP, "callback_url": callback_url}
    reply = httpx.post(f"{base}/v1/trip/jobs", json=body, timeout=5)
    assert reply.status_code == 202, reply.text
    status_url = f"{base}{reply.json()['status_url']}"

    def callback() -> dict[str, Any]:
        job: dict[str, dict[str, Any]] = httpx.get(status_url, timeout=5).json()
        return job.get("callback", {})

    wait_until(lambda: callback().get("state") in ("delivered", "failed"), 30, "the webhook")
    return callback()


def test_a_rebinding_name_is_delivered_to_the_address_checked_never_the_private_one(
    rebinding: dict[str, Any],
) -> None:
    receiver: HostileReceiver = rebinding["receiver"]

    delivered = settled(rebinding["base"], f"http://{REBINDING}/hook")

    assert delivered["state"] == "delivered"
    assert [v.local_address for v in receiver.visits] == [PUBLIC]
    assert rebinding["names"].a_queries == [REBINDING]  # resolved once: nothing asked again


def test_a_name_that_does_not_resolve_is_not_delivered(rebinding: dict[str, Any]) -> None:
    receiver: HostileReceiver = rebinding["receiver"]
    before = len(receiver.visits)

    failed = settled(rebinding["base"], f"http://{MISSING}/hook")

    assert (failed["state"], failed["error"]) == ("failed", "failed: name did not resolve")
    assert len(receiver.visits) == before
