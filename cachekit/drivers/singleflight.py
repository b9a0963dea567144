"""In-process single-flight: concurrent misses of one key share one flight.

Threads share a flight through :class:`SyncFlights`, coroutines of one event loop through
:class:`AsyncFlights`. The leader runs the miss path (which itself re-reads the cache
under the lease, as groupcache's ``load`` re-checks inside the flight); followers wait for
its result or its exception, counted as ``coalesced``. A follower of a leader that was
cancelled does not inherit the cancellation: it runs the flight again itself.

:meth:`forget` detaches a key's running flight, as Go's ``singleflight.Forget`` does: an
invalidation calls it, so a read that starts after ``invalidate()`` returned never joins a
load that began before it (read-your-writes within a process).

Usage::

    value = flights.run("shop:{product:5}", lambda: load_product(5))
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from cachekit.stats import Stats

__all__ = ["AsyncFlights", "SyncFlights"]

T = TypeVar("T")
Reuse = Callable[[Any], bool]


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


class AsyncFlights:
    """Single-flight for the coroutines of one event loop (keys are per loop).

    Usage::

        flights = AsyncFlights(stats)
        await flights.run(key, compute)
    """

    __slots__ = ("_calls", "_stats")

    def __init__(self, stats: Stats) -> None:
        self._calls: dict[tuple[int, str], asyncio.Future[Any]] = {}
        self._stats = stats

    async def run(self, key: str, fn: Callable[[], Awaitable[T]], reuse: Reuse | None = None) -> T:
        """``await fn()``, unless a flight for ``key`` is running: then its outcome.

        A joined outcome that ``reuse`` rejects is not taken: the caller flies again.
        """
        loop = asyncio.get_running_loop()
        slot = (id(loop), key)
        while (future := self._calls.get(slot)) is not None:
            self._stats.incr("coalesced")
            try:
                # shield: a cancelled follower must not cancel the leader's future.
                result: T = await asyncio.shield(future)
            except _Cancelled:
                continue  # the leader was cancelled: lead a new flight (or join one)
            if reuse is None or reuse(result):
                return result
        future = self._calls[slot] = loop.create_future()
        try:
            value = await fn()
        except asyncio.CancelledError:
            future.set_exception(_Cancelled())
            raise
        except BaseException as exc:
            future.set_exception(exc)
            raise
        else:
            future.set_result(value)
            return value
        finally:
            if self._calls.get(slot) is future:
                del self._calls[slot]
            if future.done() and not future.cancelled():
                future.exception()  # mark retrieved: followers may be none

    def forget(self, key: str | None) -> None:
        """New callers of ``key`` (of every key, for ``None``) start a new flight."""
        for slot in [s for s in self._calls if key is None or s[1] == key]:
            del self._calls[slot]
