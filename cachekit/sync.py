"""The blocking twin of :class:`~cachekit.Cache`'s I/O methods, at ``cache.sync``.

Usage::

    cache.sync.set("k", 1, ttl=60)
    cache.sync.get("k")      # 1
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from cachekit.config import spread, to_seconds
from cachekit.flow.raw import (
    delete,
    get,
    get_many,
    invalidate,
    invalidate_tags,
    set_many,
    set_value,
)
from cachekit.lock import SyncLock

if TYPE_CHECKING:
    from cachekit.cache import Cache

__all__ = ["SyncCache"]


class SyncCache:
    """The blocking twin of :class:`Cache`'s I/O methods, at ``cache.sync``.

    Usage::

        cache.sync.set("k", 1, ttl=60)
        cache.sync.get("k")      # 1
    """

    __slots__ = ("_cache",)

    def __init__(self, cache: Cache) -> None:
        self._cache = cache

    def get(self, key: str, default: Any = None, *, type: Any = None) -> Any:
        """The fresh value under ``key``, else ``default``; fails open (a miss)."""
        b = self._cache.bound()
        return b.sync.drive(get(b.ctx, key, default, type))

    def get_many(self, keys: Iterable[str], *, type: Any = None) -> dict[str, Any]:
        """``{key: value}`` for the given keys that hold fresh values; fails open."""
        b = self._cache.bound()
        return b.sync.drive(get_many(b.ctx, keys, type))

    def set(
        self,
        key: str,
        value: Any,
        ttl: float | timedelta | None = None,
        *,
        jitter: float | None = None,
        type: Any = None,
    ) -> None:
        """Store ``value`` under ``key`` for ``ttl`` (default: the cache's default TTL)."""
        b = self._cache.bound()
        b.sync.drive(set_value(b.ctx, key, value, to_seconds(ttl), spread(jitter), type))

    def set_many(
        self,
        values: Mapping[str, Any],
        ttl: float | timedelta | None = None,
        *,
        jitter: float | None = None,
        type: Any = None,
    ) -> None:
        """Store every item of ``values`` in one round trip."""
        b = self._cache.bound()
        b.sync.drive(set_many(b.ctx, values, to_seconds(ttl), spread(jitter), type))

    def delete(self, key: str) -> bool:
        """Remove ``key``; whether it existed."""
        b = self._cache.bound()
        return b.sync.drive(delete(b.ctx, key))

    def invalidate(self, key: str, *, double_delete: float | None = None) -> None:
        """Make ``key`` a miss everywhere and void any load in flight for it; never raises
        for Redis being down (the delete is retried in the background)."""
        b = self._cache.bound()
        b.sync.drive(invalidate(b.ctx, key, double_delete))

    def invalidate_tags(self, *tags: str) -> None:
        """Make every entry carrying any of ``tags`` a miss, everywhere, in O(1)."""
        b = self._cache.bound()
        b.sync.drive(invalidate_tags(b.ctx, tags))

    def lock(
        self, name: str, *, ttl: float = 10.0, wait: float = 5.0, fail_open: bool = False
    ) -> SyncLock:
        """The blocking twin of :meth:`Cache.lock`.

        Usage::

            with cache.sync.lock("report:42", ttl=10, wait=5) as lock: ...
        """
        b = self._cache.bound()
        return SyncLock(b.sync, b.ctx, name, ttl, wait, fail_open)

    def close(self) -> None:
        """Close the sync face's connections, and the async face's as far as sync code can.

        The async face keeps a client per event loop: a closed loop's is closed here; a
        loop running in another thread closes its own; an idle loop's closes when that
        loop shuts down. The cache stays configured (a new loop gets a new client);
        ``await cache.close()`` closes both faces and unbinds the cache.
        """
        if self._cache.configured:
            self._cache.bound().close_sync()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
