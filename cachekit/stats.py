"""Counters that cost no I/O to read, and log lines that are written once.

Usage::

    stats = Stats()
    stats.incr("hits")
    stats.snapshot()["hits"]    # 1
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Final

__all__ = ["COUNTERS", "LogOnce", "Stats"]

# Under the GIL, ``counts[name] += 1`` on a dict of str keys and ints runs no Python code
# between its read and its write, and the interpreter hands the GIL over only at calls and
# backward jumps, so no increment is lost without a lock (which would cost a hit ~0.2 µs).
# A free-threaded build has no such guarantee: it takes the lock.
_GIL: Final[bool] = getattr(sys, "_is_gil_enabled", lambda: True)()

COUNTERS: Final = (
    "hits",
    "misses",
    "stale_hits",
    "null_hits",
    "bloom_rejects",
    "loads",
    "load_errors",
    "coalesced",
    "reads_coalesced",
    "lock_waits",
    "lock_timeouts",
    "fallbacks",
    "stale_sets_refused",
    "rebuilds",
    "bloom_missing",
    "bloom_over_capacity",
    "deferred",
    "deferred_retries",
    "deferred_dropped",
    "invalid_payloads",
    "schema_misses",
    "uncacheable",
    "oversized_values",
    "write_errors",
    "http_bypasses",
    "http_uncacheable",
    "http_revalidations",
    "breaker_opened",
    "breaker_half_opened",
    "breaker_closed",
    "breaker_rejects",
    "deadline_exceeded",
    "pool_exhausted",
)


class Stats:
    """Thread-safe event counters of one :class:`~cachekit.Cache`.

    ``snapshot()`` returns every counter of :data:`COUNTERS`, zeros included, so
    dashboards see a fixed set of names.

    Usage::

        cache.stats()    # {'hits': 10, 'misses': 2, ...}
    """

    __slots__ = ("_counts", "_lock")

    def __init__(self) -> None:
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._lock = threading.Lock()

    def incr(self, name: str, amount: int = 1) -> None:
        """Add ``amount`` to counter ``name`` (one of :data:`COUNTERS`)."""
        if _GIL:
            self._counts[name] += amount  # atomic under the GIL (see _GIL)
            return
        with self._lock:
            self._counts[name] += amount

    def snapshot(self) -> dict[str, int]:
        """A copy of every counter."""
        with self._lock:
            return dict(self._counts)


class LogOnce:
    """Logs a warning the first time each tag is seen, then stays quiet for that tag.

    Tags are categories (a reason, a function name), never user data, and at most
    ``limit`` of them are remembered, so hostile input cannot grow memory or flood logs.

    Usage::

        once = LogOnce(logging.getLogger("cachekit"))
        once.warning(("bad-payload", "truncated header"), "treated a %s as a miss", "value")
    """

    __slots__ = ("_limit", "_lock", "_logger", "_seen")

    def __init__(self, logger: logging.Logger, limit: int = 1024) -> None:
        self._logger = logger
        self._limit = limit
        self._seen: set[object] = set()
        self._lock = threading.Lock()

    def warning(self, tag: object, message: str, *args: object) -> None:
        """Log ``message % args`` at WARNING level unless ``tag`` was logged before."""
        with self._lock:
            if tag in self._seen or len(self._seen) >= self._limit:
                return
            self._seen.add(tag)
        self._logger.warning(message, *args)
