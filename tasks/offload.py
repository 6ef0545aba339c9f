"""Run CPU-bound code off the gevent hub, so one prediction never freezes the other greenlets.

What runs on the native threads must take no lock a greenlet also takes: once monkey-patched,
`threading.Lock` is a greenlet lock, and a greenlet waiting for one that a native thread holds can
miss its release and wait for good (gevent issue #2013). Log sinks hold such locks, so offloaded
code never logs (core.model.shelf keeps its logging on the hub), and warnings raised there are shown
from the hub's thread (`show_warnings_on_hub`).
"""

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from gevent import get_hub, monkey

T = TypeVar("T")


def run_off_hub(fn: Callable[..., T], /, *args: object) -> T:
    """Call `fn(*args)` on a native thread when under gevent, else directly."""
    if monkey.is_module_patched("threading"):
        result: T = get_hub().threadpool.apply(fn, args)
        return result
    return fn(*args)


def set_offload_threads(count: int) -> None:
    """Size the native thread pool that runs offloaded calls."""
    if monkey.is_module_patched("threading"):
        get_hub().threadpool.maxsize = count


def show_warnings_on_hub() -> None:
    """Have a warning raised on any other native thread shown by the hub's thread, which logs it.

    Call it on the hub's thread, after logging is set up (Celery routes warnings into logging).
    """
    if not monkey.is_module_patched("threading"):
        return
    native_ident: Callable[[], int] = monkey.get_original("_thread", "get_ident")
    hub_thread, loop, show = native_ident(), get_hub().loop, warnings.showwarning

    def showwarning(*args: Any, **kwargs: Any) -> None:
        if native_ident() == hub_thread:
            show(*args, **kwargs)
        else:
            loop.run_callback_threadsafe(functools.partial(show, *args, **kwargs))

    warnings.showwarning = showwarning
