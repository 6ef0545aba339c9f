"""Webhook receivers that fight back, for the tests: real servers on a test address.

Each reads the request as a receiver would, records its X-Tripq-Delivery id, then behaves badly
in its own way: trickles its headers, answers a body without end, redirects, or speaks nonsense.
Each also records, per connection, how long the deliverer stayed and how many were open at once.
"""

import select
import socket
import socketserver
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Self

_CHUNK = 64 * 1024
_STEP_S = 0.05  # a trickling receiver's pause between two bytes


@dataclass
class Visit:
    """One connection a receiver took: the delivery it carried, how long it lasted, and what
    the receiver managed to send before the deliverer left."""

    local_address: str
    headers: dict[str, str] = field(default_factory=dict)  # names in lower case
    body: bytes = b""
    started: float = 0.0  # time.monotonic() when it connected
    seconds: float = 0.0
    bytes_sent: int = 0

    @property
    def delivery(self) -> str | None:
        """The X-Tripq-Delivery id it carried (None: no request came)."""
        return self.headers.get("x-tripq-delivery")


class HostileReceiver(socketserver.ThreadingTCPServer):
    """A receiver on `host` (an ephemeral port unless `port`) whose `answer` misbehaves;
    speaking TLS with `tls` (a server context)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None
    ) -> None:
        super().__init__((host, port), _Handler)
        self.tls = tls
        self.address, self.port = self.socket.getsockname()[:2]
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._visits: list[Visit] = []
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()
        self._thread.join(5)

    def url(self, path: str = "/hook", host: str | None = None) -> str:
        """The URL of this receiver (by `host`, a name, rather than its address)."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{host or self.address}:{self.port}{path}"

    @property
    def visits(self) -> list[Visit]:
        """The connections it took that have ended."""
        with self._lock:
            return list(self._visits)

    @property
    def deliveries(self) -> list[str]:
        """The X-Tripq-Delivery ids of the requests it received, in order."""
        return [v.delivery for v in self.visits if v.delivery is not None]

    def most_at_once(self, grace_s: float) -> int:
        """Count the most connections that were open at once, each but its last `grace_s`:
        a connection closed by the deliverer and the next one it opens may overlap by as long
        as the receiver took to notice the close."""
        edges = sorted(
            edge
            for v in self.visits
            for edge in ((v.started, 1), (v.started + max(v.seconds - grace_s, 0.0), -1))
        )
        most = now = 0
        for _, change in edges:
            now += change
            most = max(most, now)
        return most

    def answer(self, sock: socket.socket) -> int:
        """Answer a request read in full; return the bytes sent (until the deliverer left)."""
        raise NotImplementedError

    def serve(self, sock: socket.socket) -> None:
        """Take one connection: read the request, answer it, record the visit."""
        started = time.monotonic()
        visit = Visit(sock.getsockname()[0], started=started)
        wrapped: ssl.SSLSocket | None = None
        try:
            if self.tls is not None:
                # The wrapped socket takes the connection over: closed here, not by the server.
                sock = wrapped = self.tls.wrap_socket(sock, server_side=True)
            request = _read_request(sock)
            if request is not None:
                visit.headers, visit.body = request
                visit.bytes_sent = self.answer(sock)
        except OSError:
            pass  # the deliverer left: what the visit records is all there is
        finally:
            if wrapped is not None:
                wrapped.close()
            visit.seconds = time.monotonic() - started
            with self._lock:
                self._visits.append(visit)

    def send_until_left(
        self, sock: socket.socket, chunks: "list[bytes] | bytes", pause_s: float
    ) -> int:
        """Send `chunks` (one after another; bytes: repeated for ever) until the deliverer
        leaves or the receiver stops; return the bytes sent."""
        sent = 0
        index = 0
        while not self.stopping.is_set():
            if isinstance(chunks, bytes):
                chunk = chunks
            elif index < len(chunks):
                chunk = chunks[index]
                index += 1
            else:
                return sent
            try:
                sock.sendall(chunk)
            except OSError:
                return sent
            sent += len(chunk)
            if pause_s and _closed_within(sock, pause_s):
                return sent
        return sent


class _Handler(socketserver.BaseRequestHandler):
    server: HostileReceiver
    request: socket.socket

    def handle(self) -> None:
        self.server.serve(self.request)


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Wait up to `seconds` for the peer to close `sock` (a plain socket); tell whether it did."""
    readable, _, _ = select.select([sock], [], [], seconds)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def _read_request(sock: socket.socket) -> tuple[dict[str, str], bytes] | None:
    """Read one HTTP request with a Content-Length body: its headers and body (None: none came)."""
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        received = sock.recv(_CHUNK)
        if not received:
            return None
        data += received
    head, _, body = data.partition(b"\r\n\r\n")
    headers = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        received = sock.recv(_CHUNK)
        if not received:
            return None
        body += received
    return headers, body


class TricklingReceiver(HostileReceiver):
    """Answers 200, then its headers a byte at a time, for ever."""

    def answer(self, sock: socket.socket) -> int:
        head = b"HTTP/1.1 200 OK\r\nX-Slow: "
        return self.send_until_left(sock, [bytes([b]) for b in head], _STEP_S) + (
            self.send_until_left(sock, b"a", _STEP_S)
        )


class HugeBodyReceiver(HostileReceiver):
    """Answers 200 with a body of `size` bytes, sent as fast as the deliverer takes it."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def answer(self, sock: socket.socket) -> int:
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {self.size}\r\n\r\n".encode()
        chunks = [head, *[b"\0" * _CHUNK] * (self.size // _CHUNK)]
        return self.send_until_left(sock, chunks, 0.0)


class RedirectingReceiver(HostileReceiver):
    """Answers 302 to `location`."""

    def __init__(self, location: str) -> None:
        super().__init__()
        self.location = location

    def answer(self, sock: socket.socket) -> int:
        reply = f"HTTP/1.1 302 Found\r\nLocation: {self.location}\r\nContent-Length: 0\r\n\r\n"
        return self.send_until_left(sock, [reply.encode()], 0.0)


class GarbageReceiver(HostileReceiver):
    """Answers something that is not HTTP."""

    def answer(self, sock: socket.socket) -> int:
        return self.send_until_left(sock, [b"SSH-2.0-OpenSSH_9.2\r\n\r\n"], 0.0)


class PlainReceiver(HostileReceiver):
    """Answers 204, as a well-behaved receiver does (for the addresses a delivery reached)."""

    def answer(self, sock: socket.socket) -> int:
        return self.send_until_left(sock, [b"HTTP/1.1 204 No Content\r\n\r\n"], 0.0)
