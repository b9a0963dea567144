"""The work a commit owes each cache - keys, tags, Bloom adds - and performing it.

A flush (or :func:`~cachekit.contrib.sqlalchemy.invalidate_rows`) adds to a ``_Work`` per
cache; after the commit ``_perform`` does it with the blocking ``cache.sync`` calls, and
``_perform_async`` (for :func:`~cachekit.contrib.sqlalchemy.ainvalidate_now`) on the async
face. The order is fixed: Bloom adds first, so a reader let through by a fresh key is not
turned away by the filter, then the keys (a delete that also voids the rebuild lease),
then the tags. Performing never raises: the data is committed either way, so a failure is
logged - a warning for an unreachable backend, an error with the traceback for anything
else.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TypeAlias, cast

from cachekit.bloom.filter import Bloom
from cachekit.cache import Cache
from cachekit.exceptions import BackendError

# The package's logger, not this module's: the whole integration logs under one name.
logger = logging.getLogger("cachekit.contrib.sqlalchemy")


@dataclass
class _Work:
    """What to do in one cache after a commit."""

    keys: dict[str, float | None] = field(default_factory=dict)  # key -> double_delete
    tags: set[str] = field(default_factory=set)
    blooms: dict[str | Bloom, list[object]] = field(default_factory=dict)

    def add_key(self, key: str, double_delete: float | None) -> None:
        if key not in self.keys or self.keys[key] is None:
            self.keys[key] = double_delete
        elif double_delete is not None:
            self.keys[key] = max(double_delete, cast(float, self.keys[key]))

    def merge(self, other: _Work) -> None:
        for key, delay in other.keys.items():
            self.add_key(key, delay)
        self.tags |= other.tags
        for bloom, items in other.blooms.items():
            self.blooms.setdefault(bloom, []).extend(items)


# The work of one transaction (or one call), by cache.
_Batch: TypeAlias = dict[Cache, _Work]


def _merge(into: _Batch, batch: _Batch) -> _Batch:
    for cache, work in batch.items():
        into.setdefault(cache, _Work()).merge(work)
    return into


def _bloom(cache: Cache, ref: str | Bloom) -> Bloom:
    return ref if isinstance(ref, Bloom) else cache.bloom(ref)


def _failed(what: str, exc: Exception) -> None:
    if isinstance(exc, BackendError):
        logger.warning("cachekit: %s failed after a commit (%s)", what, exc)
    else:
        logger.error("cachekit: %s failed after a commit", what, exc_info=exc)


def _perform(cache: Cache, work: _Work) -> None:
    """Bloom adds, then key invalidations, then tags; blocking; never raises."""
    for ref, items in work.blooms.items():
        try:
            _bloom(cache, ref).sync.add_many(items)
        except Exception as exc:
            _failed(f"adding {len(items)} identifier(s) to Bloom filter {ref!r}", exc)
    for key, delay in work.keys.items():
        try:
            cache.sync.invalidate(key, double_delete=delay)
        except Exception as exc:
            _failed(f"invalidating {key!r}", exc)
    if work.tags:
        try:
            cache.sync.invalidate_tags(*sorted(work.tags))
        except Exception as exc:
            _failed(f"invalidating tags {sorted(work.tags)}", exc)


async def _perform_async(cache: Cache, work: _Work) -> None:
    """:func:`_perform` on the cache's async face."""
    for ref, items in work.blooms.items():
        try:
            await _bloom(cache, ref).add_many(items)
        except Exception as exc:
            _failed(f"adding {len(items)} identifier(s) to Bloom filter {ref!r}", exc)
    for key, delay in work.keys.items():
        try:
            await cache.invalidate(key, double_delete=delay)
        except Exception as exc:
            _failed(f"invalidating {key!r}", exc)
    if work.tags:
        try:
            await cache.invalidate_tags(*sorted(work.tags))
        except Exception as exc:
            _failed(f"invalidating tags {sorted(work.tags)}", exc)
