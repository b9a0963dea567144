"""Storage backends: one set of operations (:mod:`.ops`), each run blocking or async.

* :mod:`.redis` - Redis and Valkey through redis-py (needs the ``redis`` extra).
* :mod:`.memory` - an in-process store with the same semantics, for tests and one process.

Usage::

    from cachekit.backends.memory import MemoryStore, SyncMemoryBackend
"""

from cachekit.backends.base import AsyncBackend, SyncBackend

__all__ = ["AsyncBackend", "SyncBackend"]
