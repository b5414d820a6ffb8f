"""Django's Redis cache, with one connection pool per process instead of one per thread."""

from __future__ import annotations

import threading
from typing import Any

from django.core.cache.backends.redis import RedisCache, RedisCacheClient

_clients: dict[tuple[str, ...], RedisCacheClient] = {}
_lock = threading.Lock()


class SharedRedisCache(RedisCache):
    """RedisCache whose client (and so its connection pool) every thread shares.

    Django keeps a cache backend object per thread, and each one opens its
    own pool. Under ASGI every request runs in a new thread, so every request
    opened a new Redis connection: the ingestion benchmark's profile spent
    9 % of Daphne's time connecting to Redis. redis-py's pools are
    thread-safe, so one per process, per location and options, is enough.
    """

    @property
    def _cache(self) -> RedisCacheClient:  # type: ignore[override]
        # Django's RedisCache sets these in __init__ (django-stubs does not declare them).
        servers: list[str] = self._servers  # type: ignore[attr-defined]
        options: dict[str, Any] = self._options  # type: ignore[attr-defined]
        key = (*servers, repr(sorted(options.items())))
        client = _clients.get(key)
        if client is None:
            with _lock:
                client = _clients.setdefault(
                    key,
                    self._class(servers, **options),  # type: ignore[attr-defined]
                )
        return client
