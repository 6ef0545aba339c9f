"""A small supervisor for the child processes of `tripq up` and `tripq worker --processes N`.

Children start in order and stop in reverse order, none left behind. Once everything is up, a
child that exits by itself (a crash, an OOM kill) is started again, after a pause that doubles
while it keeps crashing soon after its start: the others serve meanwhile, as in a container
orchestrator, and nobody has to restart the whole group.
"""

import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType

from core.infra.launch import start_process, stop_processes

_POLL_S = 0.2
_FIRST_PAUSE_S = 1.0
_MAX_PAUSE_S = 30.0
_STABLE_S = 60.0  # a child that ran this long before exiting starts again after _FIRST_PAUSE_S


@dataclass
class Child:
    """One supervised process and how to start it again."""

    name: str
    argv: list[str]
    env: dict[str, str]
    process: "subprocess.Popen[bytes]" = field(init=False)
    started_at: float = field(init=False)
    pause_s: float = _FIRST_PAUSE_S
    restart_at: float | None = None  # set while it waits to be started again

    def spawn(self) -> None:
        """Start, in a session of its own so a terminal's Ctrl-C reaches only the supervisor, and
        ending with it even when it is SIGKILLed."""
        self.process = start_process(self.argv, self.env, end_with_parent=True)
        self.started_at = time.monotonic()
        self.restart_at = None


@dataclass
class ProcessGroup:
    """Children started in order, restarted when they die, stopped in reverse order."""

    children: list[Child] = field(default_factory=list)
    _stop_requested: bool = False

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> None:
        """Start a child."""
        child = Child(name, list(argv), dict(env))
        child.spawn()
        self.children.append(child)

    def exited(self) -> tuple[str, int] | None:
        """Name the first child that has exited, with its exit code."""
        for child in self.children:
            code = child.process.poll()
            if code is not None:
                return child.name, code
        return None

    def handle_signals(self) -> None:
        """Turn SIGINT and SIGTERM into a request to stop, checked by `supervise`."""

        def request_stop(signum: int, frame: FrameType | None) -> None:
            self._stop_requested = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)

    @property
    def stop_requested(self) -> bool:
        """Tell whether SIGINT or SIGTERM arrived."""
        return self._stop_requested

    def supervise(self, report: Callable[[str], None]) -> None:
        """Restart children that exit, until a stop is requested; `report` says what happened."""
        while not self._stop_requested:
            now = time.monotonic()
            for child in self.children:
                if child.restart_at is not None:
                    if now >= child.restart_at:
                        child.spawn()
                        report(f"{child.name} started again (pid {child.process.pid})")
                    continue
                code = child.process.poll()
                if code is None:
                    continue
                if now - child.started_at >= _STABLE_S:
                    child.pause_s = _FIRST_PAUSE_S
                report(f"{child.name} exited with code {code}; restarting in {child.pause_s:g} s")
                child.restart_at = now + child.pause_s
                child.pause_s = min(child.pause_s * 2, _MAX_PAUSE_S)
            time.sleep(_POLL_S)

    def stop(self, timeout_s: float) -> None:
        """Send SIGTERM to every child, newest first; SIGKILL whatever outlives `timeout_s`."""
        stop_processes([child.process for child in self.children], timeout_s)
        self.children.clear()
