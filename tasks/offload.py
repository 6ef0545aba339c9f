"""Run CPU-bound code off the gevent hub, so one prediction never freezes the other greenlets."""

from collections.abc import Callable
from typing import TypeVar

from gevent import get_hub, monkey

T = TypeVar("T")


def run_off_hub(fn: Callable[..., T], *args: object) -> T:
    """Call `fn(*args)` on a native thread when under gevent, else directly."""
    if monkey.is_module_patched("threading"):
        result: T = get_hub().threadpool.apply(fn, args)
        return result
    return fn(*args)


def set_offload_threads(count: int) -> None:
    """Size the native thread pool that runs offloaded calls."""
    if monkey.is_module_patched("threading"):
        get_hub().threadpool.maxsize = count
