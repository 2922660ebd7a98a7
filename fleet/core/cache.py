"""A Redis cache backend whose connections are shared by every thread of the process.

Django keeps one cache backend instance per thread (``caches`` is thread-local), and its Redis
backend builds its client, and therefore its connection pool, per instance. Under ASGI every request
runs in a thread of its own, so each request opened a new Redis connection (and redis-py reads its
package metadata on every new connection): about a fifth of the CPU of a box claim, measured with
``bench/provision.py``. redis-py's pools and clients are thread-safe, so one cache client per process
and configuration serves all threads, and it keeps its ``redis.Redis`` objects instead of building
one per command.
"""

from __future__ import annotations

import threading
from typing import Any

from django.core.cache.backends.redis import RedisCache, RedisCacheClient
from django.utils.functional import cached_property

_clients: dict[tuple[Any, ...], RedisCacheClient] = {}
_clients_lock = threading.Lock()


class SharedRedisCacheClient(RedisCacheClient):
    """Django's Redis cache client, reusing one ``redis.Redis`` per connection pool."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._redis_clients: dict[int, Any] = {}

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        this: Any = self  # the stubs do not know the pool helpers of RedisCacheClient
        pool = this._get_connection_pool(write)
        client = self._redis_clients.get(id(pool))
        if client is None:
            client = self._redis_clients[id(pool)] = this._client(connection_pool=pool)
        return client


class SharedRedisCache(RedisCache):
    """``django.core.cache.backends.redis.RedisCache`` with one client (and pool) per process."""

    @cached_property
    def _cache(self) -> RedisCacheClient:
        servers: Any = getattr(self, "_servers")  # noqa: B009 - set by RedisCache, unknown to the stubs
        options: dict[str, Any] = getattr(self, "_options")  # noqa: B009
        key = (tuple(servers), tuple(sorted((name, repr(value)) for name, value in options.items())))
        with _clients_lock:
            client = _clients.get(key)
            if client is None:
                client = _clients[key] = SharedRedisCacheClient(servers, **options)
        return client
