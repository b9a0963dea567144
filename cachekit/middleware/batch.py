"""Concurrent requests for one page share its Redis read, yet each sees a read sent after it.

Under load, requests for a hot page arrive while a read of its keys is in flight. A
request must not take that read's answer: the read was sent before the request arrived,
so it may predate a change (a purge, an unsafe request answered) that completed before
the request did. It joins instead the *next* read of those keys, sent as soon as the one
in flight answers and shared by every request that arrived meanwhile. So:

* every answer comes from a read sent after its request arrived: the guarantee of one
  read per request (nothing invalidated before a request arrived is served to it);
* at most one read per page is in flight per event loop, plus one waiting to be sent: a
  hot page costs one round trip per batch instead of one per request;
* a request that joins waits at most for the rest of the read in flight, then its own.

Each event loop has its own :class:`ReadBatches` (futures belong to one loop);
:class:`SharedReads` holds them for a middleware. A read that fails fails every request
of its batch alike (each then answers as on any failed read: the app, ``X-Cache: BYPASS``).

Usage::

    read, shared = await batches.read(keys, lambda: face.drive(read_flow))
    read = await reads.read(face, settings, target, guess, stats)   # Read or BackendError
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar
from weakref import WeakKeyDictionary

from cachekit.drivers.drive import AsyncDriver
from cachekit.exceptions import BackendError
from cachekit.middleware.entry import RequestKeys
from cachekit.middleware.flow import ResponsePolicy, read_response
from cachekit.middleware.near import Read
from cachekit.stats import Stats

__all__ = ["ReadBatches", "SharedReads"]

T = TypeVar("T")


class ReadBatches(Generic[T]):
    """The reads of one event loop: at most one in flight per key, the next one shared.

    Each joiner waits on a future of its own, so one that goes away cancels nobody else's
    wait (as a shielded shared future would, at the price of two futures per joiner).
    """

    __slots__ = ("_busy", "_next", "_tasks")

    def __init__(self) -> None:
        self._busy: set[Hashable] = set()
        self._next: dict[Hashable, tuple[list[asyncio.Future[T]], Callable[[], Awaitable[T]]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # referenced until done

    async def read(self, key: Hashable, fetch: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """``(fetch()'s result, shared)``: run now if no read of ``key`` is in flight, else
        share the next one; raises what that read raised."""
        if key not in self._busy:
            self._busy.add(key)
            try:
                return await fetch(), False
            finally:
                self._done(key)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        batch = self._next.get(key)
        if batch is None:
            self._next[key] = ([future], fetch)
        else:
            batch[0].append(future)
        return await future, True

    def _done(self, key: Hashable) -> None:
        batch = self._next.pop(key, None)
        if batch is None:
            self._busy.discard(key)
            return
        task = asyncio.get_running_loop().create_task(self._run(key, *batch))  # still busy
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self, key: Hashable, joiners: list[asyncio.Future[T]], fetch: Callable[[], Awaitable[T]]
    ) -> None:
        try:
            result = await fetch()
        except asyncio.CancelledError:  # the loop is shutting down: nobody is left hanging
            _fail(joiners, BackendError("the shared read was cancelled"))
            raise
        except Exception as exc:
            _fail(joiners, exc)
        else:
            _answer(joiners, result)
        finally:
            self._done(key)


def _answer(joiners: list[asyncio.Future[T]], result: T) -> None:
    for future in joiners:
        if not future.done():  # else its request went away (cancelled)
            future.set_result(result)


def _fail(joiners: list[asyncio.Future[T]], error: Exception) -> None:
    for future in joiners:
        if not future.done():
            future.set_exception(error)
            # A joiner cancelled before it resumes never looks: not the loop's log's either.
            future.add_done_callback(_retrieve)


def _retrieve(future: asyncio.Future[Any]) -> None:
    future.exception()


class SharedReads:
    """A middleware's shared first reads of :func:`~cachekit.middleware.flow.lookup`."""

    __slots__ = ("_loops",)

    def __init__(self) -> None:
        self._loops: WeakKeyDictionary[asyncio.AbstractEventLoop, ReadBatches[Read]] = (
            WeakKeyDictionary()
        )

    async def read(
        self,
        face: AsyncDriver,
        settings: ResponsePolicy,
        target: RequestKeys,
        guess: str,
        stats: Stats,
    ) -> Read | BackendError:
        """The generation, record and ``guess``ed entry of ``target``, shared with the
        concurrent requests for them; a failure is returned, for the lookup to fail open."""
        loop = asyncio.get_running_loop()
        batches = self._loops.get(loop)
        if batches is None:
            batches = self._loops[loop] = ReadBatches()
        try:
            read, shared = await batches.read(
                (target.generation, target.record, guess),
                lambda: face.drive(read_response(settings, target, guess)),
            )
        except BackendError as exc:
            return exc
        if shared:
            stats.incr("coalesced")
        return read
