"""Django's Redis cache, with one connection pool per process instead of one per thread."""

from __future__ import annotations

import threading
from typing import Any

from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache, RedisCacheClient

_clients: dict[tuple[str, ...], RedisCacheClient] = {}
_lock = threading.Lock()


class SharedRedisCacheClient(RedisCacheClient):
    """Django's Redis cache client, keeping one redis.Redis per connection pool.

    Django's builds a new redis.Redis around the pool for every cache call
    (the cost: docs/performance.md, "One Redis client per process").
    A redis.Redis is thread-safe (each command checks a connection out of
    the pool), so one per pool serves every thread.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clients: dict[int, Any] = {}

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        pool = self._get_connection_pool(write)  # type: ignore[attr-defined]
        client = self._clients.get(id(pool))
        if client is None:
            client = self._clients.setdefault(id(pool), self._client(connection_pool=pool))  # type: ignore[attr-defined]
        return client


class SharedRedisCache(RedisCache):
    """RedisCache whose client (and so its connection pool) every thread shares.

    Django keeps a cache backend object, and so a pool, per thread; redis-py's
    pools are thread-safe, so one per process, per location and options, is
    enough (docs/performance.md, "One Redis client per process").
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
                client = _clients.setdefault(key, SharedRedisCacheClient(servers, **options))
        return client

    def redis(self) -> Any:
        """The redis.Redis behind the cache, for a pipeline that mixes the cache's
        keys (`make_and_validate_key`) with other commands in one round trip."""
        return self._cache.get_client(write=True)


def shared_redis() -> Any | None:
    """The default cache's redis.Redis when the cache is Redis (not embedded), else None."""
    backend = caches["default"]
    return backend.redis() if isinstance(backend, SharedRedisCache) else None
