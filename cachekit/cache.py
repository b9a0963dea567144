"""The :class:`Cache` object: configuration, the raw API on both faces, and ``cached``.

Every API that does I/O is async on :class:`Cache` and has a synchronous twin of the same
name on :attr:`Cache.sync`; both share one configuration, one key scheme and the same
data. A ``Cache()`` can be declared at import time (no I/O) and configured at startup.

Usage::

    cache = Cache.from_url("redis://127.0.0.1:6379/0?prefix=shop")
    await cache.set("greeting", "hello", ttl=60)
    assert cache.sync.get("greeting") == "hello"
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from .aside import (
    Context,
    delete,
    drive_async,
    drive_sync,
    get,
    get_many,
    set_many,
    set_value,
)
from .backends.base import AsyncBackend, SyncBackend
from .backends.memory import AsyncMemoryBackend, MemoryBackend, MemoryStore
from .backends.ops import Op
from .clock import SYSTEM_CLOCK, Clock
from .config import parse_url
from .decorators import Decorator
from .exceptions import ConfigurationError, NotConfigured
from .keys import KeySpace
from .serializers import JsonSerializer, MsgpackSerializer, Serializer
from .stats import LogOnce, Stats

if TYPE_CHECKING:
    import redis
    import redis.asyncio

__all__ = ["Cache", "SyncCache", "to_seconds"]

logger = logging.getLogger("cachekit")

_SERIALIZERS: Mapping[str, type[JsonSerializer] | type[MsgpackSerializer]] = {
    "json": JsonSerializer,
    "msgpack": MsgpackSerializer,
}


def to_seconds(ttl: float | timedelta | None, *, name: str = "ttl") -> float | None:
    """``ttl`` as positive seconds (``None`` passes through); rejects zero and negatives.

    Usage::

        to_seconds(timedelta(minutes=5))   # 300.0
    """
    if ttl is None:
        return None
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else float(ttl)
    if not seconds > 0:
        raise ConfigurationError(f"{name} must be positive, got {ttl!r}")
    return seconds


class _NoSyncFace:
    __slots__ = ("_why",)

    def __init__(self, why: str) -> None:
        self._why = why

    def run(self, op: Op[Any]) -> Any:
        raise NotConfigured(self._why)

    def close(self) -> None:
        return None


class _NoAsyncFace:
    __slots__ = ("_why",)

    def __init__(self, why: str) -> None:
        self._why = why

    async def run(self, op: Op[Any]) -> Any:
        raise NotConfigured(self._why)

    async def close(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class Binding:
    """What ``configure`` produced: the flow context and the two backend faces."""

    ctx: Context
    sync_backend: SyncBackend
    async_backend: AsyncBackend


_UNCONFIGURED = (
    "this Cache was used before it was configured: call cache.configure('redis://...') "
    "at startup (or build it with Cache.from_url(...) or Cache(client=..., sync_client=...))"
)


class Cache:
    """A cache on Redis, Valkey or memory, with async methods and a sync twin at ``.sync``.

    Usage::

        cache = Cache()                                   # at import: no I/O
        cache.configure("redis://127.0.0.1:6379/0")       # at startup

        cache = Cache(client=redis.asyncio.Redis(), sync_client=redis.Redis())

    **Parameters:**

    * **client** - *(optional)* a ``redis.asyncio.Redis`` for the async face.
    * **sync_client** - *(optional)* a ``redis.Redis`` for the sync face.
    * **prefix** - first segment of every key (default ``"cachekit"``).
    * **serializer** - how values become bytes (default :class:`JsonSerializer`).
    * **default_ttl** - seconds (or a ``timedelta``) when none is given (default 300).
    * **clock** - where time is read; a ``FakeClock`` in tests.

    Injected clients are used as they are: give them short timeouts yourself (URLs get
    cachekit's defaults, see :data:`cachekit.config.REDIS_DEFAULTS`).
    """

    def __init__(
        self,
        *,
        client: redis.asyncio.Redis | None = None,
        sync_client: redis.Redis | None = None,
        prefix: str = "cachekit",
        serializer: Serializer | None = None,
        default_ttl: float | timedelta = 300,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._prefix = prefix
        self._serializer = serializer
        self._default_ttl = to_seconds(default_ttl, name="default_ttl")
        self._clock = clock
        self._stats = Stats()
        self._log = LogOnce(logger)
        self._binding: Binding | None = None
        self._why_unbound = _UNCONFIGURED
        self.sync = SyncCache(self)
        KeySpace(prefix)  # validate now, not at first use
        if client is not None or sync_client is not None:
            self.configure(client=client, sync_client=sync_client)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Cache:
        """A configured cache for ``redis://``, ``rediss://``, ``unix://`` or ``memory://``.

        ``options`` are those of :data:`cachekit.config.URL_OPTIONS` (they win over the
        query string) plus ``clock``, ``default_ttl`` and a ``Serializer`` instance.

        Usage::

            cache = Cache.from_url("redis://localhost:6379/0?socket_timeout=0.2&prefix=shop")
            cache = Cache.from_url("memory://")
        """
        own = {k: options.pop(k) for k in ("clock", "default_ttl") if k in options}
        if isinstance(options.get("serializer"), str | None):
            return cls(**own).configure(url, **options)
        return cls(serializer=options.pop("serializer"), **own).configure(url, **options)

    def configure(
        self,
        url: str | None = None,
        *,
        client: redis.asyncio.Redis | None = None,
        sync_client: redis.Redis | None = None,
        **options: Any,
    ) -> Self:
        """Bind the cache to a URL or to injected clients; once per cache.

        Usage::

            cache.configure(os.environ["REDIS_URL"])
        """
        if self._binding is not None:
            raise ConfigurationError("this Cache is already configured; close() it first")
        if (url is None) == (client is None and sync_client is None):
            raise ConfigurationError("configure() takes a URL or clients, exactly one of them")
        if url is None:
            if options:
                raise ConfigurationError(f"options {sorted(options)} need a URL")
            sync_face, async_face = _faces_for_clients(client, sync_client)
            prefix, serializer = self._prefix, self._serializer
        else:
            target = parse_url(url, options)
            cache_options = target.scoped("cache")
            prefix = cache_options.get("prefix", self._prefix)
            serializer = self._serializer
            if "serializer" in cache_options:
                serializer = _SERIALIZERS[cache_options["serializer"]]()
            if target.scheme == "memory":
                store = MemoryStore(clock=self._clock)
                sync_face, async_face = MemoryBackend(store), AsyncMemoryBackend(store)
            else:
                from .backends.redis import connect

                sync_face, async_face = connect(target.url, target.scoped("redis"))
        ctx = Context(
            keyspace=KeySpace(prefix),
            serializer=serializer or JsonSerializer(),
            default_ttl=self._default_ttl or 300.0,
            clock=self._clock,
            stats=self._stats,
            log=self._log,
        )
        self._binding = Binding(ctx, sync_face, async_face)
        return self

    def _bound(self) -> Binding:
        binding = self._binding
        if binding is None:
            raise NotConfigured(self._why_unbound)
        return binding

    @property
    def configured(self) -> bool:
        """Whether :meth:`configure` has bound this cache (and it is not closed)."""
        return self._binding is not None

    def stats(self) -> dict[str, int]:
        """Event counters since the cache was made; no I/O.

        Usage::

            s = cache.stats(); ratio = s["hits"] / max(1, s["hits"] + s["misses"])
        """
        return self._stats.snapshot()

    def cached(
        self,
        ttl: float | timedelta | None = None,
        *,
        key: str | None = None,
        null_ttl: float | timedelta = 0,
        serializer: Serializer | None = None,
    ) -> Decorator:
        """Cache-aside decorator for ``def`` and ``async def`` functions.

        **Parameters:**

        * **ttl** - seconds (or ``timedelta``) a result stays fresh; default: the cache's.
        * **key** - a template such as ``"product:{product_id}"``; default: module,
          qualified name and the canonical JSON of every argument.
        * **null_ttl** - how long a ``None`` result is cached (``0``: never).
        * **serializer** - this function's format; default: the cache's.

        Usage::

            @cache.cached(ttl=300, key="product:{product_id}", null_ttl=30)
            async def get_product(product_id: int) -> dict[str, Any] | None: ...

            await get_product(5)
            await get_product.invalidate(product_id=5)
        """
        return Decorator(
            self._bound,
            ttl=to_seconds(ttl),
            key=key,
            null_ttl=to_seconds(null_ttl, name="null_ttl") or 0.0 if null_ttl else 0.0,
            serializer=serializer,
        )

    async def get(self, key: str, default: Any = None) -> Any:
        """The fresh value under ``key``, else ``default``; fails open (a miss).

        Pass ``default=MISSING`` to tell a cached ``None`` from a miss.
        """
        b = self._bound()
        return await drive_async(get(b.ctx, key, default), b.async_backend)

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """``{key: value}`` for the given keys that hold fresh values; fails open."""
        b = self._bound()
        return await drive_async(get_many(b.ctx, keys), b.async_backend)

    async def set(self, key: str, value: Any, ttl: float | timedelta | None = None) -> None:
        """Store ``value`` under ``key`` for ``ttl`` (default: the cache's default TTL).

        Raises :class:`~cachekit.exceptions.SerializationError` or
        :class:`~cachekit.exceptions.BackendError`.
        """
        b = self._bound()
        await drive_async(set_value(b.ctx, key, value, to_seconds(ttl)), b.async_backend)

    async def set_many(
        self, values: Mapping[str, Any], ttl: float | timedelta | None = None
    ) -> None:
        """Store every item of ``values`` in one round trip."""
        b = self._bound()
        await drive_async(set_many(b.ctx, values, to_seconds(ttl)), b.async_backend)

    async def delete(self, key: str) -> bool:
        """Remove ``key``; whether it existed."""
        b = self._bound()
        return await drive_async(delete(b.ctx, key), b.async_backend)

    async def invalidate(self, key: str) -> None:
        """Make ``key`` a miss everywhere: the write-path call after a database commit."""
        await self.delete(key)

    async def close(self) -> None:
        """Close both faces' connections; the cache must be configured again to be used."""
        binding, self._binding = self._binding, None
        self._why_unbound = "this Cache was closed; configure() it again to use it"
        if binding is not None:
            binding.sync_backend.close()
            await binding.async_backend.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "configured" if self._binding else "unconfigured"
        return f"<Cache prefix={self._prefix!r} {state}>"


class SyncCache:
    """The blocking twin of :class:`Cache`'s I/O methods, at ``cache.sync``.

    Usage::

        cache.sync.set("k", 1, ttl=60)
        cache.sync.get("k")      # 1
    """

    __slots__ = ("_cache",)

    def __init__(self, cache: Cache) -> None:
        self._cache = cache

    def get(self, key: str, default: Any = None) -> Any:
        """The fresh value under ``key``, else ``default``; fails open (a miss)."""
        b = self._cache._bound()
        return drive_sync(get(b.ctx, key, default), b.sync_backend)

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """``{key: value}`` for the given keys that hold fresh values; fails open."""
        b = self._cache._bound()
        return drive_sync(get_many(b.ctx, keys), b.sync_backend)

    def set(self, key: str, value: Any, ttl: float | timedelta | None = None) -> None:
        """Store ``value`` under ``key`` for ``ttl`` (default: the cache's default TTL)."""
        b = self._cache._bound()
        drive_sync(set_value(b.ctx, key, value, to_seconds(ttl)), b.sync_backend)

    def set_many(self, values: Mapping[str, Any], ttl: float | timedelta | None = None) -> None:
        """Store every item of ``values`` in one round trip."""
        b = self._cache._bound()
        drive_sync(set_many(b.ctx, values, to_seconds(ttl)), b.sync_backend)

    def delete(self, key: str) -> bool:
        """Remove ``key``; whether it existed."""
        b = self._cache._bound()
        return drive_sync(delete(b.ctx, key), b.sync_backend)

    def invalidate(self, key: str) -> None:
        """Make ``key`` a miss everywhere: the write-path call after a database commit."""
        self.delete(key)

    def close(self) -> None:
        """Close the sync face's connections (``await cache.close()`` closes both)."""
        binding = self._cache._binding
        if binding is not None:
            binding.sync_backend.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _faces_for_clients(
    client: redis.asyncio.Redis | None, sync_client: redis.Redis | None
) -> tuple[SyncBackend, AsyncBackend]:
    from .backends.redis import AsyncRedisBackend, RedisBackend

    sync_face: SyncBackend = (
        RedisBackend(sync_client)
        if sync_client is not None
        else _NoSyncFace("this Cache has no sync client: pass sync_client=redis.Redis(...)")
    )
    async_face: AsyncBackend = (
        AsyncRedisBackend(client)
        if client is not None
        else _NoAsyncFace("this Cache has no async client: pass client=redis.asyncio.Redis(...)")
    )
    return sync_face, async_face
