"""Test hosts: network namespaces on one machine, each with its own address on one switch.

    switch (a namespace holding bridge br0)
      ├── veth ── this test process (the root namespace): the clients' side, address .1
      ├── veth ── host "redis"    address .10   (ip netns exec tripq-<run>-redis ...)
      ├── veth ── host "api1"     address .11
      └── ...

Each host runs tripq's real processes under `ip netns exec`; they reach each other only through
the switch, so a host can be cut off (its switch port down), partitioned from one peer (nftables
drops what arrives from it, each way), or reached through a slow, lossy link (tests.hosts.link).
Everything is made with Debian's iproute2 (and nftables) and needs root; `prerequisite` and
`partitions_prerequisite` say why it cannot run elsewhere.

Names carry this process's id, so two test runs on one machine never share a host, and a run
that died without cleaning up is swept by the next.
"""

import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_PREFIX = "tripq-"  # every namespace of these tests: tripq-<pid>-<host>
_SWITCH = "switch"
_CLIENT_OCTET = 1
_FIRST_HOST_OCTET = 10
_NFT_TABLE = "tripq_partition"


def prerequisite() -> str | None:
    """Say why test hosts cannot be made here (None: they can)."""
    if os.geteuid() != 0:
        return "test hosts need root (ip netns, veth): run as root, as CI does"
    if shutil.which("ip") is None:
        return "test hosts need iproute2's `ip` (apt-get install iproute2; .ci/run does)"
    probe = f"{_PREFIX}{os.getpid()}-probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"this kernel or sandbox refuses network namespaces: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str, namespace: str | None = None) -> None:
    """Run one `ip` command (in `namespace`), failing loudly."""
    argv = ["ip", *args] if namespace is None else ["ip", "-n", namespace, *args]
    run = subprocess.run(argv, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {run.stderr.strip()}")


def _nft(namespace: str, *args: str) -> None:
    """Run one `nft` command in `namespace`, failing loudly."""
    argv = ["ip", "netns", "exec", namespace, "nft", *args]
    run = subprocess.run(argv, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {run.stderr.strip()}")


def partitions_prerequisite() -> str | None:
    """Say why hosts cannot be partitioned from each other here (None: they can)."""
    if shutil.which("nft") is None:
        return "partitions need nftables' `nft` (apt-get install nftables; .ci/run does)"
    return None


def _subnet(pid: int) -> ipaddress.IPv4Network:
    """A /24 of 10.200.0.0/13 chosen by the process id: runs side by side do not overlap."""
    return ipaddress.IPv4Network(f"10.{200 + pid % 8}.{pid // 8 % 256}.0/24")


def _sweep_dead_runs() -> None:
    """Delete the namespaces (and their processes) of test runs whose process is gone."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for name in re.findall(rf"^({_PREFIX}(\d+)-\S+)", listed, re.MULTILINE):
        namespace, pid = name[0], int(name[1])
        if not Path(f"/proc/{pid}").exists():
            _delete_namespace(namespace)


def _delete_namespace(namespace: str) -> None:
    """SIGKILL what runs in `namespace`, then delete it (its veth ends go with it)."""
    pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
    for pid in pids.stdout.split():
        with suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


class SlowLink:
    """The process of a slow, lossy cable (tests.hosts.link) and the means to set it."""

    def __init__(self, switch_end: str, host_end: str) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.hosts.link", switch_end, host_end],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._expect("ready")

    def impair(self, delay_ms: float, loss: float) -> None:
        """Delay each frame, each way, by `delay_ms`; lose a share `loss` of them (0, 0: clean)."""
        assert self._process.stdin is not None
        self._process.stdin.write(f"{delay_ms} {loss}\n")
        self._process.stdin.flush()
        self._expect("ok")

    def _expect(self, word: str) -> None:
        assert self._process.stdout is not None
        line = self._process.stdout.readline().strip()  # "" once it exits: it cannot hang
        if line != word:
            raise RuntimeError(f"the slow link said {line!r}, not {word!r}")

    def close(self) -> None:
        """End the process; its devices go with it."""
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()


class Host:
    """One test host: a network namespace with one address, plugged into the switch (through a
    slow link when it has one)."""

    def __init__(
        self, network: "Network", name: str, address: str, port: str, link: SlowLink | None
    ) -> None:
        self.network = network
        self.name = name
        self.address = address
        self.namespace = f"{network.tag}-{name}"
        self.link = link
        self._port = port  # the switch's end of its cable

    @property
    def prefix(self) -> list[str]:
        """The command that runs another on this host."""
        return ["ip", "netns", "exec", self.namespace]

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """The command line that runs `argv` on this host."""
        return [*self.prefix, *argv]

    def cut(self) -> None:
        """Pull its cable: nothing reaches it, nothing leaves it, and no one is told."""
        _ip("link", "set", self._port, "down", namespace=self.network.switch)

    def reconnect(self) -> None:
        """Plug its cable back in."""
        _ip("link", "set", self._port, "up", namespace=self.network.switch)

    def partition(self, peer: "Host") -> None:
        """Lose every packet between this host and `peer`, both ways, as a partition does: each
        drops what arrives from the other (nftables), so neither is told anything, sends
        succeed, and only silence follows. Others still reach both."""
        for host, other in ((self, peer), (peer, self)):
            _nft(host.namespace, "add", "table", "inet", _NFT_TABLE)
            _nft(host.namespace, "add", "chain", "inet", _NFT_TABLE, "input",
                 "{ type filter hook input priority 0; }")  # fmt: skip
            _nft(host.namespace, "add", "rule", "inet", _NFT_TABLE, "input",
                 "ip", "saddr", other.address, "drop")  # fmt: skip

    def heal(self, peer: "Host") -> None:
        """End `partition(peer)`."""
        for host in (self, peer):
            _nft(host.namespace, "delete", "table", "inet", _NFT_TABLE)

    def kill_all(self) -> None:
        """SIGKILL every process on this host, at once, as when the machine dies."""
        pids = subprocess.run(
            ["ip", "netns", "pids", self.namespace], capture_output=True, text=True
        ).stdout.split()
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


class Network:
    """A switch and the hosts plugged into it; this process is a client on the switch too."""

    def __init__(self) -> None:
        _sweep_dead_runs()
        pid = os.getpid()
        self.tag = f"{_PREFIX}{pid}"
        self.switch = f"{self.tag}-{_SWITCH}"
        self._subnet = _subnet(pid)
        self._cable = f"tq{pid}"  # interface names: at most 15 characters
        self.hosts: dict[str, Host] = {}
        _ip("netns", "add", self.switch)
        _ip("link", "add", "br0", "type", "bridge", namespace=self.switch)
        _ip("link", "set", "br0", "up", namespace=self.switch)
        self.client_address = self._plug(None, f"{self._cable}c", _CLIENT_OCTET)

    def add_host(self, name: str, *, slow_link: bool = False) -> Host:
        """Make a host named `name`, plugged into the switch with the next free address;
        through a SlowLink (clean until told otherwise) when `slow_link`."""
        octet = _FIRST_HOST_OCTET + len(self.hosts)
        cable = f"{self._cable}h{len(self.hosts)}"
        link = SlowLink(f"{cable}p", cable) if slow_link else None
        try:
            address = self._plug(f"{self.tag}-{name}", cable, octet, made=link is not None)
        except BaseException:
            if link is not None:
                link.close()
            raise
        host = Host(self, name, address, f"{cable}p", link)
        self.hosts[name] = host
        return host

    def _plug(self, namespace: str | None, cable: str, octet: int, made: bool = False) -> str:
        """Make a namespace (None: this one) and cable it to the switch with `cable` and its
        switch end `<cable>p` (a veth pair, unless `made` already); return its address."""
        address = str(self._subnet[octet])
        if not made:
            _ip("link", "add", cable, "type", "veth", "peer", "name", f"{cable}p")
        _ip("link", "set", f"{cable}p", "netns", self.switch)
        _ip("link", "set", f"{cable}p", "master", "br0", "up", namespace=self.switch)
        if namespace is None:
            _ip("addr", "add", f"{address}/24", "dev", cable)
            _ip("link", "set", cable, "up")
            return address
        _ip("netns", "add", namespace)
        _ip("link", "set", cable, "netns", namespace)
        _ip("link", "set", "lo", "up", namespace=namespace)
        _ip("link", "set", cable, "name", "eth0", namespace=namespace)
        _ip("addr", "add", f"{address}/24", "dev", "eth0", namespace=namespace)
        _ip("link", "set", "eth0", "up", namespace=namespace)
        return address

    def close(self) -> None:
        """Kill what runs on the hosts and take the network apart."""
        for host in self.hosts.values():
            _delete_namespace(host.namespace)
            if host.link is not None:
                host.link.close()
        _delete_namespace(self.switch)  # the client's veth goes with its switch end
        subprocess.run(["ip", "link", "del", f"{self._cable}c"], capture_output=True)
