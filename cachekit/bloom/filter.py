"""The public Bloom filter objects: :class:`Bloom` (async) and its twin :class:`SyncBloom`.

Both drive the flows of :mod:`cachekit.bloom.state` over one shared mirror. Get one with
``cache.bloom(name, capacity=..., error_rate=...)``; declaring it needs no I/O, so it can
happen at import time, before the cache is configured.

Usage::

    products = cache.bloom("products", capacity=1_000_000, error_rate=0.001)
    await products.rebuild(ids_from_the_database())
    if not await products.contains(product_id):
        raise NotFound
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from cachekit.bloom.flow import (
    Progress,
    bloom_add,
    bloom_contains,
    bloom_info,
    bloom_rebuild,
    bloom_warm,
)
from cachekit.bloom.state import BloomState

if TYPE_CHECKING:
    from cachekit.drivers.binding import Binding

__all__ = ["Bloom", "SyncBloom"]

_BATCH = 10_000


class Bloom:
    """A Bloom filter shared by every process through Redis; async methods.

    **Attributes:** ``name``, ``geometry`` (capacity, error rate, hashes, bits), ``sync``.

    Usage::

        await bloom.add(5); await bloom.contains(5); await bloom.warm(ids)
    """

    def __init__(self, bound: Callable[[], Binding], state: BloomState) -> None:
        self._bound = bound
        self.state = state
        self.name = state.name
        self.geometry = state.geometry
        self.sync = SyncBloom(bound, state)

    async def contains(self, item: object) -> bool:
        """``False`` when ``item`` was certainly never added (no round trip, usually)."""
        b = self._bound()
        return await b.aio.drive(bloom_contains(b.ctx, self.state, item))

    async def add(self, item: object) -> bool:
        """Add ``item``; whether it was new to the filter."""
        return await self.add_many([item]) == 1

    async def add_many(self, items: Iterable[object]) -> int:
        """Add ``items`` in one pipelined round trip; how many were new."""
        b = self._bound()
        return await b.aio.drive(bloom_add(b.ctx, self.state, items))

    async def warm(
        self, items: Iterable[object], *, batch: int = _BATCH, progress: Progress | None = None
    ) -> int:
        """Add many items in pipelined batches (``progress(done)`` after each); the count."""
        b = self._bound()
        flow = bloom_warm(b.ctx, self.state, items, batch, progress)
        return await b.aio.drive(flow)

    async def rebuild(
        self, items: Iterable[object], *, batch: int = _BATCH, progress: Progress | None = None
    ) -> int:
        """Build a new filter from ``items`` and swap it in atomically; the count."""
        b = self._bound()
        flow = bloom_rebuild(b.ctx, self.state, items, batch, progress)
        return await b.aio.drive(flow)

    async def info(self) -> dict[str, Any]:
        """Capacity, count, size in bytes, expected false-positive rate, state."""
        b = self._bound()
        return await b.aio.drive(bloom_info(b.ctx, self.state))

    def __repr__(self) -> str:
        return f"<Bloom {self.name!r} capacity={self.geometry.capacity}>"


class SyncBloom:
    """The blocking twin of :class:`Bloom`, at ``bloom.sync``.

    Usage::

        bloom.sync.add(5); bloom.sync.contains(5)
    """

    def __init__(self, bound: Callable[[], Binding], state: BloomState) -> None:
        self._bound = bound
        self.state = state

    def contains(self, item: object) -> bool:
        """``False`` when ``item`` was certainly never added (no round trip, usually)."""
        b = self._bound()
        return b.sync.drive(bloom_contains(b.ctx, self.state, item))

    def add(self, item: object) -> bool:
        """Add ``item``; whether it was new to the filter."""
        return self.add_many([item]) == 1

    def add_many(self, items: Iterable[object]) -> int:
        """Add ``items`` in one pipelined round trip; how many were new."""
        b = self._bound()
        return b.sync.drive(bloom_add(b.ctx, self.state, items))

    def warm(
        self, items: Iterable[object], *, batch: int = _BATCH, progress: Progress | None = None
    ) -> int:
        """Add many items in pipelined batches (``progress(done)`` after each); the count."""
        b = self._bound()
        flow = bloom_warm(b.ctx, self.state, items, batch, progress)
        return b.sync.drive(flow)

    def rebuild(
        self, items: Iterable[object], *, batch: int = _BATCH, progress: Progress | None = None
    ) -> int:
        """Build a new filter from ``items`` and swap it in atomically; the count."""
        b = self._bound()
        flow = bloom_rebuild(b.ctx, self.state, items, batch, progress)
        return b.sync.drive(flow)

    def info(self) -> dict[str, Any]:
        """Capacity, count, size in bytes, expected false-positive rate, state."""
        b = self._bound()
        return b.sync.drive(bloom_info(b.ctx, self.state))
