"""The in-memory backend: Redis semantics (TTL, NX, compare-and-set) in one process.

For unit tests (with :class:`~cachekit.testing.FakeClock` driving expiry) and for
single-process apps. One :class:`MemoryStore` is shared by the sync and async backends and is
safe across threads; each operation runs under one lock, so it is atomic as a Lua script
is in Redis. Expired entries are dropped when read and swept every few thousand writes.

Usage::

    store = MemoryStore()
    SyncMemoryBackend(store).run(Set("k", b"v", ttl=10))
    await AsyncMemoryBackend(store).run(Get("k"))
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import TypeVar

from cachekit.backends.ops import Op
from cachekit.clock import SYSTEM_CLOCK, Clock

__all__ = ["AsyncMemoryBackend", "MemoryStore", "SyncMemoryBackend"]

T = TypeVar("T")
_SWEEP_EVERY = 4096


class MemoryStore:
    """A dict of ``key -> (value, expiry)`` with one lock; implements ``ops.Store``.

    **Parameters:**

    * **clock** - *(optional)* where expiry reads the time; a ``FakeClock`` in tests.

    Usage::

        store = MemoryStore(clock=FakeClock())
    """

    __slots__ = ("_clock", "_data", "_writes", "lock", "subscribers")

    def __init__(self, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        self._data: dict[str, tuple[bytes, float]] = {}
        self._writes = 0
        self.lock = threading.Lock()
        self.subscribers: list[Callable[[str, str], None]] = []

    def __len__(self) -> int:
        return len(self._data)

    def read(self, key: str) -> bytes | None:
        """The live value of ``key``."""
        item = self._data.get(key)
        if item is None:
            return None
        if item[1] and item[1] <= self._clock.time():
            del self._data[key]
            return None
        return item[0]

    def write(self, key: str, value: bytes, ttl: float | None) -> None:
        """Store ``value`` for ``ttl`` seconds (``None``: forever)."""
        self._data[key] = (value, self._deadline(ttl))
        self._writes += 1
        if self._writes % _SWEEP_EVERY == 0:
            self._sweep()

    def remove(self, key: str) -> bool:
        """Drop ``key``; whether it was live."""
        live = self.read(key) is not None
        self._data.pop(key, None)
        return live

    def expire(self, key: str, ttl: float | None) -> bool:
        """Give a live ``key`` a new TTL; whether it was live."""
        value = self.read(key)
        if value is None:
            return False
        self._data[key] = (value, self._deadline(ttl))
        return True

    def remaining(self, key: str) -> float | None:
        """Seconds left for ``key``; ``math.inf`` without a TTL; ``None`` when absent."""
        if self.read(key) is None:
            return None
        deadline = self._data[key][1]
        return deadline - self._clock.time() if deadline else math.inf

    def publish(self, channel: str, message: str) -> None:
        """Call every subscriber with ``(channel, message)``; they must not block."""
        for subscriber in self.subscribers:
            subscriber(channel, message)

    def now(self) -> float:
        """The store clock's wall time."""
        return self._clock.time()

    def live_keys(self) -> list[str]:
        """Every live key."""
        return [key for key in list(self._data) if self.read(key) is not None]

    def clear(self) -> None:
        """Drop everything (like FLUSHDB)."""
        with self.lock:
            self._data.clear()

    def _deadline(self, ttl: float | None) -> float:
        if ttl is None:
            return 0.0
        if ttl <= 0:
            raise ValueError(f"a TTL must be positive, got {ttl}")
        return self._clock.time() + ttl

    def _sweep(self) -> None:
        now = self._clock.time()
        for key in [k for k, (_, deadline) in self._data.items() if deadline and deadline <= now]:
            del self._data[key]


class SyncMemoryBackend:
    """The synchronous backend of a :class:`MemoryStore`.

    Usage::

        SyncMemoryBackend(MemoryStore()).run(Get("k"))
    """

    __slots__ = ("store",)

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def run(self, op: Op[T]) -> T:
        """Apply ``op`` atomically."""
        with self.store.lock:
            return op.apply(self.store)

    def close(self) -> None:
        """Nothing to release; the data stays for the other backend."""


class AsyncMemoryBackend:
    """The asynchronous backend of a :class:`MemoryStore` (no I/O, never yields).

    Usage::

        await AsyncMemoryBackend(MemoryStore()).run(Get("k"))
    """

    __slots__ = ("store",)

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    async def run(self, op: Op[T]) -> T:
        """Apply ``op`` atomically."""
        # Held for microseconds and never across an await, so it cannot block the loop.
        with self.store.lock:
            return op.apply(self.store)

    async def close(self) -> None:
        """Nothing to release; the data stays for the other backend."""
