"""Storage backends: one set of operations (:mod:`.ops`), run by a sync or an async face.

* :mod:`.redis` - Redis and Valkey through redis-py (needs the ``redis`` extra).
* :mod:`.memory` - an in-process store with the same semantics, for tests and one process.

Usage::

    from cachekit.backends.memory import MemoryStore, MemoryBackend
"""

from .base import AsyncBackend, SyncBackend

__all__ = ["AsyncBackend", "SyncBackend"]
