"""Redis clients for every tripq process, from one URL: a server, or a master found by Sentinel.

    redis://[:password@]host:port/db           one server (rediss:// over TLS, unix:// a socket)
    sentinel://[:password@]host:port/db;sentinel://host2:port;...
                                               the master that Redis Sentinel names
                                               REDIS_SENTINEL_MASTER, asked of any sentinel listed

The sentinel:// form is Celery's own (kombu's broker transport, Celery's result backend), so the
workers read the same REDIS_URL; the password and database of the first URL are the master's.
With Sentinel every client asks for the master on each new connection, so after a failover the
reconnects tripq makes anyway (core.online.client, core.worker) reach the new master.
"""

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel

from config import Settings

SENTINEL_SCHEME = "sentinel"


@dataclass(frozen=True)
class SentinelUrl:
    """What a sentinel:// URL says: where the sentinels are, and the master's password and db."""

    sentinels: list[tuple[str, int]]
    password: str | None
    db: int

    @classmethod
    def parse(cls, url: str) -> "SentinelUrl":
        """Read a sentinel:// URL (several joined by ';')."""
        parts = [urlsplit(u) for u in url.split(";") if u.strip()]
        if not parts or any(p.scheme != SENTINEL_SCHEME or not p.hostname for p in parts):
            raise ValueError(f"not a sentinel:// URL: {url!r}")
        path = parts[0].path.strip("/")
        return cls(
            sentinels=[(str(p.hostname), p.port or 26379) for p in parts],
            password=parts[0].password,
            db=int(path) if path else 0,
        )


def is_sentinel(url: str) -> bool:
    """Tell whether `url` names a master through Redis Sentinel."""
    return urlsplit(url).scheme == SENTINEL_SCHEME


def _options(settings: Settings, url: str) -> dict[str, Any]:
    return {
        "socket_connect_timeout": settings.redis_connect_timeout_s,
        "socket_timeout": settings.redis_socket_timeout_s,
        **settings.redis_tls(url),
    }


def sync_client(settings: Settings, url: str, **extra: Any) -> redis.Redis:
    """A blocking client of the Redis at `url` (workers, CLI)."""
    options = {**_options(settings, url), **extra}
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **options)
    where = SentinelUrl.parse(url)
    sentinel = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
        where.sentinels, sentinel_kwargs=_sentinel_kwargs(options), **options
    )
    master: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call,unused-ignore]
        settings.redis_sentinel_master, db=where.db, password=where.password
    )
    return master


def async_client(settings: Settings, url: str, **extra: Any) -> AsyncRedis:
    """An asyncio client of the Redis at `url` (the API)."""
    options = {**_options(settings, url), **extra}
    if not is_sentinel(url):
        return AsyncRedis.from_url(url, **options)
    where = SentinelUrl.parse(url)
    sentinel = AsyncSentinel(  # type: ignore[no-untyped-call,unused-ignore]
        where.sentinels, sentinel_kwargs=_sentinel_kwargs(options), **options
    )
    master: AsyncRedis = sentinel.master_for(
        settings.redis_sentinel_master, db=where.db, password=where.password
    )
    return master


def _sentinel_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    # The sentinels themselves are asked within the same bounds as the master.
    return {k: v for k, v in options.items() if k.startswith("socket_")}


def transport_options(settings: Settings, url: str) -> dict[str, Any]:
    """What Celery's broker and result backend need beyond `url`: the master's name, for
    sentinel:// URLs."""
    return {"master_name": settings.redis_sentinel_master} if is_sentinel(url) else {}
