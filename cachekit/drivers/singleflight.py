"""In-process single-flight: concurrent reads of one key share one GET, concurrent misses
share one flight.

Threads share a flight through :class:`SyncFlights`, coroutines of one event loop through
:class:`AsyncFlights`. The leader runs the miss path (which itself re-reads the cache
under the lease, as groupcache's ``load`` re-checks inside the flight); followers wait for
its result or its exception, counted as ``coalesced``. A follower of a leader that was
cancelled does not inherit the cancellation: it runs the flight again itself.

:meth:`forget` detaches a key's running flight, as Go's ``singleflight.Forget`` does: an
invalidation calls it, so a read that starts after ``invalidate()`` returned never joins a
load that began before it (read-your-writes within a process).

Reads are coalesced the same way, one level down: :class:`SyncReads` and
:class:`AsyncReads` let a caller that asks for a key while a ``GET`` of it is in flight in
its process (thread or same event loop) take that ``GET``'s reply instead of sending its
own, so a herd of one process costs Redis one ``GET``. A shared reply must never be older
than a write this process had completed when the caller asked (read-your-writes, and
monotonic reads after a fill): :data:`WRITES` counts the writes each process completed
(:meth:`WriteEpochs.wrote`, called when a flow says it wrote a key), and a caller joins
only a ``GET`` that began after every write it could have seen. The count is process-wide,
for every cache and both faces: a write through ``cache.sync`` or another ``Cache`` object
on the same keys voids the sharing of an ``async`` read begun before it, too.

Usage::

    value = flights.run("shop:{product:5}", lambda: load_product(5))
    raw = reads.get("shop:{product:5}", backend.run)
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from cachekit.backends.ops import Get
from cachekit.stats import Stats

__all__ = ["WRITES", "AsyncFlights", "AsyncReads", "SyncFlights", "SyncReads", "WriteEpochs"]

T = TypeVar("T")
Reuse = Callable[[Any], bool]
_STRIPES = 1024  # per-key write counts, hashed into this many (a power of two) slots


class WriteEpochs:
    """How many writes this process completed: per key (hashed into stripes) and for "every
    key" (a write whose keys are unknown, like a tag invalidation).

    :meth:`epoch` of a key changes whenever a write of it completes: a read stamped with
    the epoch before it was sent may be shared with a caller whose epoch is the same, and
    with no one who arrived after a write of the key completed. Two keys that share a
    stripe only share less. Both counts only grow (under a lock), so an epoch that reads
    the same has seen no write in between.

    Usage::

        stamp = WRITES.epoch(key)    # before the GET goes out
        WRITES.wrote(key)            # after a SET / DEL / fill of key returned
        WRITES.epoch(key) != stamp   # True: that GET's reply is not shared any more
    """

    __slots__ = ("_every", "_keys", "_lock")

    def __init__(self) -> None:
        self._every = 0
        self._keys = [0] * _STRIPES
        self._lock = threading.Lock()

    def epoch(self, key: str) -> int:
        """The key's write epoch now (a sum of two counts that only grow)."""
        return self._every + self._keys[hash(key) & (_STRIPES - 1)]

    def wrote(self, key: str | None) -> None:
        """A write of ``key`` (of unknown keys: ``None``) completed."""
        with self._lock:
            if key is None:
                self._every += 1
            else:
                self._keys[hash(key) & (_STRIPES - 1)] += 1


WRITES = WriteEpochs()
"""This process's completed writes, shared by every cache and both faces."""


class _Call:
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class SyncFlights:
    """Single-flight for threads.

    Usage::

        flights = SyncFlights(stats)
        flights.run(key, compute)
    """

    __slots__ = ("_calls", "_lock", "_stats")

    def __init__(self, stats: Stats) -> None:
        self._calls: dict[str, _Call] = {}
        self._lock = threading.Lock()
        self._stats = stats

    def run(self, key: str, fn: Callable[[], T], reuse: Reuse | None = None) -> T:
        """``fn()``, unless a flight for ``key`` is running: then its outcome.

        A joined outcome that ``reuse`` rejects is not taken: the caller flies again.
        """
        while True:
            with self._lock:
                call = self._calls.get(key)
                leader = call is None
                if call is None:
                    call = self._calls[key] = _Call()
            if leader:
                break
            self._stats.incr("coalesced")
            call.done.wait()
            if call.error is not None:
                raise call.error
            if reuse is None or reuse(call.result):
                result: T = call.result
                return result
        try:
            call.result = fn()
            return call.result  # type: ignore[no-any-return]
        except BaseException as exc:
            call.error = exc
            raise
        finally:
            with self._lock:
                if self._calls.get(key) is call:
                    del self._calls[key]
            call.done.set()

    def forget(self, key: str | None) -> None:
        """New callers of ``key`` (of every key, for ``None``) start a new flight."""
        with self._lock:
            if key is None:
                self._calls.clear()
            else:
                self._calls.pop(key, None)


class _Cancelled(Exception):
    """The leader was cancelled; a follower should run the flight itself."""


def _hand_over(
    followers: list[asyncio.Future[Any]], result: Any, exc: BaseException | None
) -> None:
    """Give a leader's outcome to the futures of its followers (each has its own, so a
    cancelled follower cancels nobody else); a cancelled leader's followers go again."""
    if exc is not None and not isinstance(exc, Exception):
        exc = _Cancelled()  # cancelled or interrupted: not the outcome of the work
    for future in followers:
        if future.done():
            continue  # that follower was cancelled
        if exc is None:
            future.set_result(result)
        else:
            future.set_exception(exc)


class AsyncFlights:
    """Single-flight for the coroutines of one event loop (keys are per loop).

    Usage::

        flights = AsyncFlights(stats)
        await flights.run(key, compute)
    """

    __slots__ = ("_calls", "_stats")

    def __init__(self, stats: Stats) -> None:
        # A running flight's followers, each waiting on a future of its own.
        self._calls: dict[tuple[int, str], list[asyncio.Future[Any]]] = {}
        self._stats = stats

    async def run(self, key: str, fn: Callable[[], Awaitable[T]], reuse: Reuse | None = None) -> T:
        """``await fn()``, unless a flight for ``key`` is running: then its outcome.

        A joined outcome that ``reuse`` rejects is not taken: the caller flies again.
        """
        loop = asyncio.get_running_loop()
        slot = (id(loop), key)
        while (followers := self._calls.get(slot)) is not None:
            self._stats.incr("coalesced")
            future: asyncio.Future[T] = loop.create_future()
            followers.append(future)
            try:
                result = await future
            except _Cancelled:
                continue  # the leader was cancelled: lead a new flight (or join one)
            if reuse is None or reuse(result):
                return result
        mine: list[asyncio.Future[Any]] = []
        self._calls[slot] = mine
        try:
            value = await fn()
        except BaseException as exc:
            self._end(slot, mine)
            _hand_over(mine, None, exc)
            raise
        self._end(slot, mine)
        _hand_over(mine, value, None)
        return value

    def _end(self, slot: tuple[int, str], flight: list[asyncio.Future[Any]]) -> None:
        if self._calls.get(slot) is flight:
            del self._calls[slot]

    def forget(self, key: str | None) -> None:
        """New callers of ``key`` (of every key, for ``None``) start a new flight."""
        for slot in [s for s in self._calls if key is None or s[1] == key]:
            del self._calls[slot]


class _SyncRead:
    __slots__ = ("done", "epoch", "error", "finished", "result")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.finished = False
        self.done: threading.Event | None = None  # made by the first follower
        self.result: bytes | None = None
        self.error: BaseException | None = None


class SyncReads:
    """Coalesced ``GET`` for threads: one read of a key in flight at a time, per epoch.

    A reader takes no lock (a hit must stay cheap): it registers with ``setdefault``,
    which is atomic, and when done sets ``finished`` before it looks for an event to set;
    a follower publishes its event (under the lock, so followers agree on one) before it
    looks at ``finished``. Whatever the interleaving, one of them sees the other's write,
    so no follower waits for a wake-up that never comes.

    Usage::

        reads = SyncReads(stats)
        raw = reads.get(key, backend.run)
    """

    __slots__ = ("_calls", "_lock", "_stats")

    def __init__(self, stats: Stats) -> None:
        self._calls: dict[str, _SyncRead] = {}
        self._lock = threading.Lock()
        self._stats = stats

    def get(self, key: str, run: Callable[[Get], bytes | None]) -> bytes | None:
        """``run(Get(key))``, or the reply of such a read in flight since this caller's
        epoch; a failed read's error is raised to every caller that shared it."""
        epoch = WRITES.epoch(key)  # before looking: a write completed later is not ours
        calls = self._calls
        while True:
            call = calls.get(key)
            if call is not None and call.epoch == epoch:
                self._follow(call)
                if call.error is None:
                    return call.result
                if isinstance(call.error, Exception):
                    raise call.error
                continue  # the reader was interrupted (not a failed read): read again
            mine = _SyncRead(epoch)
            if call is None:
                if calls.setdefault(key, mine) is not mine:
                    continue  # another thread began a read meanwhile: look again
            else:
                calls[key] = mine  # an older epoch's read: newcomers share ours instead
            break
        try:
            mine.result = run(Get(key))
            return mine.result
        except BaseException as exc:
            mine.error = exc
            raise
        finally:
            if calls.get(key) is mine:
                # (A newer read replacing ours just now may be dropped: it is then shared
                # with fewer callers, never with a wrong one.)
                calls.pop(key, None)
            mine.finished = True
            done = mine.done
            if done is not None:
                done.set()

    def _follow(self, call: _SyncRead) -> None:
        """Wait until ``call`` is finished."""
        self._stats.incr("reads_coalesced")
        if call.finished:
            return
        with self._lock:
            done = call.done
            if done is None:
                done = call.done = threading.Event()
        if not call.finished:
            done.wait()


class _AsyncRead:
    __slots__ = ("epoch", "followers")  # followers: as AsyncFlights' (_hand_over)

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.followers: list[asyncio.Future[bytes | None]] = []


class AsyncReads:
    """Coalesced ``GET`` for the coroutines of one event loop (the face keeps one per loop).

    Each follower waits on a future of its own, so a cancelled follower cancels nobody
    else; a cancelled reader's followers read again themselves.

    Usage::

        reads = AsyncReads(stats)
        raw = await reads.get(key, backend.run)
    """

    __slots__ = ("_calls", "_stats")

    def __init__(self, stats: Stats) -> None:
        self._calls: dict[str, _AsyncRead] = {}
        self._stats = stats

    async def get(self, key: str, run: Callable[[Get], Awaitable[bytes | None]]) -> bytes | None:
        """``await run(Get(key))``, or the reply of such a read in flight since this
        caller's epoch; a failed read's error is raised to every caller that shared it."""
        epoch = WRITES.epoch(key)  # before looking: a write completed later is not ours
        while (call := self._calls.get(key)) is not None and call.epoch == epoch:
            self._stats.incr("reads_coalesced")
            future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
            call.followers.append(future)
            try:
                return await future
            except _Cancelled:
                continue  # the reader was cancelled: read again (or join another)
        call = self._calls[key] = _AsyncRead(epoch)
        try:
            result = await run(Get(key))
        except BaseException as exc:
            if self._calls.get(key) is call:
                del self._calls[key]
            _hand_over(call.followers, None, exc)
            raise
        if self._calls.get(key) is call:
            del self._calls[key]
        if call.followers:
            _hand_over(call.followers, result, None)
        return result
