"""A slow, lossy cable between a test host and the switch: what `tc qdisc ... netem` does, in a
process of its own, for kernels built without netem (CI's is one: CONFIG_NET_SCH_NETEM unset).

    python -m tests.hosts.link SWITCH_END HOST_END

makes two TAP devices of those names and copies every Ethernet frame from one to the other, each
way: each frame waits `delay` before it goes on, and a share `loss` of frames never do (from a
seeded generator). It starts clean (no delay, no loss); a line "DELAY_MS LOSS" on its standard
input changes both, answered "ok" on its standard output once the next frame sees them. "ready"
is its first line, once both devices exist (to be moved into their namespaces).

A constant delay keeps frames in order, as netem's does without jitter.
"""

import contextlib
import fcntl
import os
import random
import selectors
import struct
import sys
import time
from collections import deque

_TUNSETIFF = 0x400454CA
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
_FRAME_MAX = 65536
_SEED = 15


def open_tap(name: str) -> int:
    """Make a TAP device named `name`; return the descriptor its frames are read and written on."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TAP | _IFF_NO_PI))
    return fd


class Cable:
    """Frames in flight both ways, each due at the time it was read plus the delay."""

    def __init__(self, ends: tuple[int, int]) -> None:
        self.ends = ends
        self.delay_s = 0.0
        self.loss = 0.0
        self._random = random.Random(_SEED)
        self._in_flight: deque[tuple[float, int, bytes]] = deque()  # (due, to, frame)

    def take(self, source: int) -> None:
        """Read what waits on `source` and send it on its way (or lose it)."""
        to = self.ends[1] if source == self.ends[0] else self.ends[0]
        while True:
            try:
                frame = os.read(source, _FRAME_MAX)
            except BlockingIOError:
                return
            if self.loss and self._random.random() < self.loss:
                continue
            self._in_flight.append((time.monotonic() + self.delay_s, to, frame))

    def deliver(self) -> float | None:
        """Write the frames that are due; return the seconds until the next one (None: none)."""
        now = time.monotonic()
        while self._in_flight and self._in_flight[0][0] <= now:
            _, to, frame = self._in_flight.popleft()
            # A far end down or full loses the frame, as a real cable would.
            with contextlib.suppress(OSError):
                os.write(to, frame)
        return max(0.0, self._in_flight[0][0] - now) if self._in_flight else None


def main(switch_end: str, host_end: str) -> None:
    cable = Cable((open_tap(switch_end), open_tap(host_end)))
    events = selectors.DefaultSelector()
    for end in cable.ends:
        events.register(end, selectors.EVENT_READ)
    control = sys.stdin.fileno()
    events.register(control, selectors.EVENT_READ)
    print("ready", flush=True)
    while True:
        for key, _ in events.select(cable.deliver()):
            if key.fd == control:
                line = sys.stdin.readline()
                if not line:
                    return  # the test is done with it
                delay_ms, loss = line.split()
                cable.delay_s, cable.loss = float(delay_ms) / 1000, float(loss)
                print("ok", flush=True)
            else:
                cable.take(key.fd)


if __name__ == "__main__":
    main(*sys.argv[1:3])
