"""A small supervisor for the child processes of `tripq up` and `tripq worker --processes N`."""

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType

_POLL_S = 0.2


@dataclass
class ProcessGroup:
    """Children started in order and stopped in reverse order, none left behind."""

    children: list[tuple[str, "subprocess.Popen[bytes]"]] = field(default_factory=list)
    _stop_requested: bool = False

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> None:
        """Start a child in its own session, so a terminal's Ctrl-C reaches only the supervisor."""
        child = subprocess.Popen(list(argv), env=dict(env), start_new_session=True)
        self.children.append((name, child))

    def exited(self) -> tuple[str, int] | None:
        """Name the first child that has exited, with its exit code."""
        for name, child in self.children:
            code = child.poll()
            if code is not None:
                return name, code
        return None

    def handle_signals(self) -> None:
        """Turn SIGINT and SIGTERM into a request to stop, checked by `wait`."""

        def request_stop(signum: int, frame: FrameType | None) -> None:
            self._stop_requested = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)

    def wait(self) -> tuple[str, int] | None:
        """Block until a stop is requested (None) or a child exits (its name and code)."""
        while not self._stop_requested:
            gone = self.exited()
            if gone is not None:
                return gone
            time.sleep(_POLL_S)
        return None

    @property
    def stop_requested(self) -> bool:
        """Tell whether SIGINT or SIGTERM arrived."""
        return self._stop_requested

    def stop(self, timeout_s: float) -> None:
        """Send SIGTERM to every child, newest first; SIGKILL whatever outlives `timeout_s`."""
        for _, child in reversed(self.children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for _, child in reversed(self.children):
            try:
                child.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        self.children.clear()
