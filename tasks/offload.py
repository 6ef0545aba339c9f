"""Run CPU-bound code off the gevent hub, so one prediction never freezes the other greenlets.

What runs on the native threads must take no lock a greenlet also takes: once monkey-patched,
`threading.Lock` is a greenlet lock, and a greenlet waiting for one that a native thread holds can
miss its release and wait for good (gevent issue #2013). Log sinks hold such locks, so offloaded
code never logs (core.model.shelf keeps its logging on the hub), and warnings raised there are shown
from the hub's thread (`show_warnings_on_hub`).
"""

import functools
import socket
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from gevent import get_hub, monkey
from gevent.threadpool import ThreadPool

T = TypeVar("T")

# Native threads of the webhooks' name lookups, apart from the hub's pool that runs inference: a
# receiver's slow name server must not hold a thread a prediction waits for.
_lookups: ThreadPool | None = None


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


def set_lookup_threads(count: int) -> None:
    """Give name lookups `count` native threads of their own (under gevent)."""
    global _lookups
    if monkey.is_module_patched("threading"):
        _lookups = ThreadPool(count)


def look_up_off_hub(host: str, port: int) -> Sequence[tuple[Any, ...]]:
    """Resolve `host` for TCP to `port`: on the lookups' own threads under gevent (see
    set_lookup_threads), else directly."""
    if _lookups is None:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    getaddrinfo = monkey.get_original("socket", "getaddrinfo")
    answer: Sequence[tuple[Any, ...]] = _lookups.apply(
        getaddrinfo, (host, port, 0, socket.SOCK_STREAM)
    )
    return answer


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
