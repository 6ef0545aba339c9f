"""Deliver due webhooks from a worker process: resolve once, check, connect to what was checked.

    every DELIVERY_POLL_S, with n of WEBHOOK_DELIVERIES_AT_ONCE slots free:
      schedule.take(n, lease) ─> job ids due, each on a thread of its own (a greenlet under gevent):
        read the job's view and secret
        resolve the URL's host once ─> refused (final) if any address is private, or the port is
                                       not in WEBHOOK_PORTS
        connect to a checked address ─> TLS verified against the URL's host ─> POST, signed
        read the status line and headers, never the body ─> close
        record delivered | pending (retry after 1, 2, 4 ... s, at most RETRY_MAX_S) | failed

Pinned: the HTTP client never resolves the name itself (`_PinnedBackend` connects to the address
that was checked), so a name that answers a public address and then a private one (DNS
rebinding) is still delivered to the public one. One deadline, WEBHOOK_TIMEOUT_S from the start,
bounds the lookup and every connect, TLS, write and read step together: a receiver that trickles
its headers a byte at a time is cut off then, and one that answers a huge body costs one read.
The lease outlasts the deadline by LEASE_MARGIN_S, so no attempt is taken again while it runs.

What a client reads in `callback.error` is one of a few categories (the `FAILED_*`, `REFUSED_*`
texts, TIMED_OUT, or "the receiver answered HTTP <code>"), never an exception's text: that would
tell a client which ports and hosts of the workers' network answer. The detail goes to the log.

Delivery is at least once: a receiver dedupes by the X-Tripq-Delivery header.
"""

import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from importlib.metadata import version
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpcore
import orjson
import redis
from loguru import logger

from config import Settings
from core.jobs.schedule import DueWebhook, WebhookQueue
from core.jobs.webhooks import DELIVERY_HEADER, SIGNATURE_HEADER, is_private, sign, url_port

# Webhook schedule: a look every DELIVERY_POLL_S; waits of 1, 2, 4 ... seconds between attempts,
# at most RETRY_MAX_S. A delivery taken holds its lease for WEBHOOK_TIMEOUT_S + LEASE_MARGIN_S:
# the margin covers reading the job before the deadline starts and recording the outcome after.
DELIVERY_POLL_S = 0.5
RETRY_MAX_S = 300.0
LEASE_MARGIN_S = 10.0
_USER_AGENT = f"tripq-webhook/{version('tripq')}"
_READ_CHUNK = 64 * 1024

# What a client reads in callback.error. Refusals are final: another attempt would be refused too.
REFUSED_PRIVATE = "refused: private address"
REFUSED_PORT = "refused: port not allowed"
REFUSED_URL = "refused: not an http or https URL"
FAILED_LOOKUP = "failed: name did not resolve"
FAILED_CONNECT = "failed: could not connect"
FAILED_TLS = "failed: TLS"
FAILED_CONNECTION = "failed: connection lost"
FAILED_RESPONSE = "failed: bad response"
TIMED_OUT = "timed out"

# A name lookup: (host, port) -> socket.getaddrinfo's answer for TCP. Raises OSError when the
# name does not resolve.
Lookup = Callable[[str, int], Sequence[tuple[Any, ...]]]
SocketAddress = tuple[int, tuple[Any, ...]]  # (family, address as socket.connect takes it)
T = TypeVar("T")


def system_lookup(host: str, port: int) -> Sequence[tuple[Any, ...]]:
    """Resolve `host` for a TCP connection to `port` with the system's resolver."""
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


class DeliveryFailed(Exception):
    """A delivery that got no 2xx: `reason` for the client, `detail` for the log."""

    def __init__(self, reason: str, detail: str = "", *, final: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail
        self.final = final


class DeliveryDeadline:
    """The moment a delivery's time is up, WEBHOOK_TIMEOUT_S after it began."""

    def __init__(self, seconds: float) -> None:
        self._at = time.monotonic() + seconds

    def remaining(self) -> float:
        """Give the seconds left (none: 0 or less)."""
        return self._at - time.monotonic()

    def left(self, timeout: type[httpcore.TimeoutException]) -> float:
        """Give the seconds left; raise `timeout` when none are."""
        left = self.remaining()
        if left <= 0:
            raise timeout("the delivery's time is up")
        return left


class _PinnedStream(httpcore.NetworkStream):
    """A connection whose every step, TLS included, ends by one deadline.

    TLS runs over memory buffers (ssl.SSLObject), so its handshake reads and writes through the
    same bounded socket calls as the plain bytes do; a socket timeout alone would bound each
    call, and a receiver answering a byte per call would never reach it.
    """

    def __init__(self, sock: socket.socket, deadline: DeliveryDeadline, host: str) -> None:
        self._sock = sock
        self._deadline = deadline
        self._host = host
        self._tls: ssl.SSLObject | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """Read up to `max_bytes` of what the receiver sent (b"": it closed)."""
        if self._tls is None:
            return self._recv(max_bytes)
        try:
            return self._tls_step(lambda: self._tls_object().read(max_bytes))
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return b""

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        """Send all of `buffer`."""
        if self._tls is None:
            self._send(buffer)
        else:
            self._tls_step(lambda: self._tls_object().write(buffer))

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        """Shake hands, verifying the receiver's certificate for the URL's host (not the
        address connected to)."""
        self._tls = ssl_context.wrap_bio(self._incoming, self._outgoing, server_hostname=self._host)
        try:
            self._tls_step(self._tls.do_handshake)
        except BaseException:
            self.close()  # httpcore never got the stream, so it cannot close it
            raise
        return self

    def get_extra_info(self, info: str) -> Any:
        """Answer httpcore's questions about the connection."""
        if info == "ssl_object":
            return self._tls
        if info == "server_addr":
            return self._sock.getpeername()
        return None

    def _tls_object(self) -> ssl.SSLObject:
        assert self._tls is not None
        return self._tls

    def _tls_step(self, step: Callable[[], T]) -> T:
        """Run one TLS operation, feeding it from the socket until it needs no more."""
        while True:
            try:
                result = step()
            except ssl.SSLWantReadError:
                if self._incoming.eof:
                    raise httpcore.ReadError("the receiver closed the connection mid-TLS") from None
                self._flush()
                received = self._recv(_READ_CHUNK)
                if received:
                    self._incoming.write(received)
                else:
                    self._incoming.write_eof()
                continue
            self._flush()
            return result

    def _flush(self) -> None:
        pending = self._outgoing.read()
        if pending:
            self._send(pending)

    def _recv(self, max_bytes: int) -> bytes:
        self._sock.settimeout(self._deadline.left(httpcore.ReadTimeout))
        try:
            return self._sock.recv(max_bytes)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.ReadError(str(exc)) from exc

    def _send(self, data: bytes) -> None:
        # sendall's timeout bounds the whole call, not each chunk of it.
        self._sock.settimeout(self._deadline.left(httpcore.WriteTimeout))
        try:
            self._sock.sendall(data)
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.WriteError(str(exc)) from exc


class _PinnedBackend(httpcore.NetworkBackend):
    """httpcore's way out: to the addresses already checked, whatever host it asks for."""

    def __init__(
        self, addresses: list[SocketAddress], deadline: DeliveryDeadline, host: str
    ) -> None:
        self._addresses = addresses
        self._deadline = deadline
        self._host = host

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        """Connect to the first checked address that answers (the port is in each)."""
        failures: list[str] = []
        for family, address in self._addresses:
            left = self._deadline.left(httpcore.ConnectTimeout)
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.settimeout(left)
                sock.connect(address)
            except TimeoutError as exc:
                sock.close()
                raise httpcore.ConnectTimeout(f"{address[0]}: {exc}") from exc
            except OSError as exc:
                sock.close()
                failures.append(f"{address[0]}: {exc}")
                continue
            return _PinnedStream(sock, self._deadline, self._host)
        raise httpcore.ConnectError("; ".join(failures))


def _failure(exc: Exception) -> DeliveryFailed:
    """Name the category of what ended a delivery; keep its text for the log."""
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, httpcore.TimeoutException | TimeoutError):
        return DeliveryFailed(TIMED_OUT, detail)
    if isinstance(exc, ssl.SSLError):
        return DeliveryFailed(FAILED_TLS, detail)
    if isinstance(exc, httpcore.ConnectError):
        return DeliveryFailed(FAILED_CONNECT, detail)
    if isinstance(exc, httpcore.NetworkError | OSError):
        return DeliveryFailed(FAILED_CONNECTION, detail)
    return DeliveryFailed(FAILED_RESPONSE, detail)


class WebhookDelivery:
    """A worker process's webhook deliverer: `run` is the loop of one of its threads.

    `lookup` resolves names (under gevent, pass one that runs off the hub and off inference's
    threads: a receiver's name server may take seconds to answer)."""

    def __init__(
        self, client: redis.Redis, settings: Settings, *, lookup: Lookup = system_lookup
    ) -> None:
        self._settings = settings
        self._queue = WebhookQueue(client, max_attempts=settings.webhook_max_attempts)
        self._lookup = lookup
        self._tls = ssl.create_default_context()
        self.lease_s = settings.webhook_timeout_s + LEASE_MARGIN_S

    def run(self, stop: threading.Event) -> None:
        """Deliver due webhooks until `stop` is set."""
        at_once = self._settings.webhook_deliveries_at_once
        slots = threading.Semaphore(at_once)
        while not stop.wait(DELIVERY_POLL_S):
            # Take only as many as can start now: a delivery's lease runs from when it is taken.
            free = 0
            while free < at_once and slots.acquire(blocking=False):
                free += 1
            due: list[str] = []
            if free:
                try:
                    due = self._queue.take(lease_s=self.lease_s, most=free)
                except redis.RedisError as exc:
                    logger.warning("could not read the webhook schedule", error=str(exc))
            for _ in range(free - len(due)):
                slots.release()
            for job_id in due:
                threading.Thread(
                    target=self._deliver_one, args=(slots, job_id), daemon=True
                ).start()

    def _deliver_one(self, slots: threading.Semaphore, job_id: str) -> None:
        deadline = DeliveryDeadline(self._settings.webhook_timeout_s)
        try:
            webhook = self._queue.job(job_id)
            if webhook is None:
                return
            attempt = webhook.view["callback"]["attempts"] + 1
            delivery = f"{job_id}.{attempt}"
            try:
                self.deliver(webhook, delivery, deadline)
                error, final, detail = "", False, ""
            except DeliveryFailed as failed:
                error, final, detail = failed.reason, failed.final, failed.detail
            retry_in_s = min(2.0 ** (attempt - 1), RETRY_MAX_S)
            state = self._queue.record(job_id, attempt, error, retry_in_s, final=final)
            log = logger.warning if final else logger.info
            log("webhook", delivery=delivery, state=state, error=error or None, detail=detail)
        except redis.RedisError as exc:
            # The lease runs out and the delivery is taken again.
            logger.warning("webhook delivery not recorded", job_id=job_id, error=str(exc))
        finally:
            slots.release()

    def deliver(self, webhook: DueWebhook, delivery: str, deadline: DeliveryDeadline) -> None:
        """POST `webhook` as delivery `delivery` before `deadline`; raise DeliveryFailed unless
        the receiver answered 2xx."""
        url = webhook.view["callback"]["url"]
        parts = urlsplit(url)
        host = parts.hostname or ""
        try:
            port = url_port(parts)
        except ValueError:
            port = 0
        if parts.scheme not in ("http", "https") or not host or not port or not url.isascii():
            raise DeliveryFailed(REFUSED_URL, url, final=True)
        ports = self._settings.webhook_port_set
        if ports is not None and port not in ports:
            raise DeliveryFailed(REFUSED_PORT, f"port {port}", final=True)
        addresses = self._resolve(host, port, deadline)
        body = orjson.dumps(webhook.view)
        headers = [
            ("Host", parts.netloc.rpartition("@")[2]),
            ("Content-Type", "application/json"),
            ("User-Agent", _USER_AGENT),
            ("Connection", "close"),
            (DELIVERY_HEADER, delivery),
        ]
        secret = webhook.secret or self._settings.webhook_secret.get_secret_value()
        if secret:
            headers.append((SIGNATURE_HEADER, sign(secret, body, delivery)))
        target = httpcore.URL(url)
        connection = httpcore.HTTPConnection(
            target.origin,
            ssl_context=self._tls,
            network_backend=_PinnedBackend(addresses, deadline, host),
        )
        try:
            # Only the status line and headers are read: leaving the block closes the
            # connection with the body, however long, unread.
            with connection.stream("POST", target, headers=headers, content=body) as reply:
                status = reply.status
        except (httpcore.ProtocolError, httpcore.NetworkError, httpcore.TimeoutException) as exc:
            raise _failure(exc) from exc
        except OSError as exc:  # ssl.SSLError among them: the TLS handshake's own errors
            raise _failure(exc) from exc
        finally:
            connection.close()
        if not 200 <= status < 300:
            raise DeliveryFailed(f"the receiver answered HTTP {status}", url)

    def _resolve(self, host: str, port: int, deadline: DeliveryDeadline) -> list[SocketAddress]:
        """Resolve `host` once, before `deadline`; give its addresses if none is private."""
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            infos = self._look_up(host, port, deadline)
        else:
            family = socket.AF_INET if literal.version == 4 else socket.AF_INET6
            infos = [(family, socket.SOCK_STREAM, 0, "", (host, port))]
        addresses: list[SocketAddress] = []
        for family, _, _, _, address in infos:
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            checked = ipaddress.ip_address(str(address[0]).split("%", 1)[0])
            if is_private(checked) and not self._settings.webhook_allow_private:
                raise DeliveryFailed(REFUSED_PRIVATE, f"{host} ({checked})", final=True)
            if (family, address) not in addresses:
                addresses.append((family, address))
        if not addresses:
            raise DeliveryFailed(FAILED_LOOKUP, f"{host}: no IPv4 or IPv6 address")
        return addresses

    def _look_up(
        self, host: str, port: int, deadline: DeliveryDeadline
    ) -> Sequence[tuple[Any, ...]]:
        """Run the lookup on a thread of its own, waiting for it no longer than `deadline`:
        a lookup cannot be interrupted, but the delivery need not wait for it."""
        answer: list[Sequence[tuple[Any, ...]]] = []
        errors: list[Exception] = []
        done = threading.Event()

        def look_up() -> None:
            try:
                answer.append(self._lookup(host, port))
            except (OSError, UnicodeError) as exc:
                errors.append(exc)
            finally:
                done.set()

        threading.Thread(target=look_up, daemon=True).start()
        if not done.wait(max(deadline.remaining(), 0.0)):
            raise DeliveryFailed(TIMED_OUT, f"looking up {host}")
        if errors:
            raise DeliveryFailed(FAILED_LOOKUP, f"{host}: {errors[0]}")
        return answer[0]
