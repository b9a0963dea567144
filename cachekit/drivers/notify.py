"""Wake-ups instead of polling: who waits on what in this process, and waking them.

A fill, lease release, lock release or invalidation is announced only when a waiter was
recorded for the key, and only on the key's own channel (:mod:`cachekit.backends.ops.leases`),
so the cost of wake-ups follows the waiters, not the size of the fleet. Each process
keeps one listener (:mod:`cachekit.drivers.sharded_notify`) that subscribes to the channels of
the keys someone in it waits on (it follows :meth:`Waiters.on_change`) and hands each
message to :class:`Waiters`, which wakes the threads and coroutines waiting on that key.
The memory backend calls :meth:`Waiters.notify` directly.

A waiter registers *before* it looks at the state it waits on, so an event between its
look and its wait is never lost; and every wait is also bounded (by the holder's lease,
by the caller's patience), so a lost subscription only makes a wake-up late, never
missing. After a (re)subscription every waiter is woken to look again.

Usage::

    waiter = SyncWaiter()
    waiters.add(key, waiter)
    try:
        ...                     # look at the state
        waiter.wait(timeout)    # woken by waiters.notify(key)
    finally:
        waiters.discard(key, waiter)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Protocol

from cachekit.backends.shards import TOPIC_MARK

__all__ = [
    "READY_WAIT",
    "AsyncWaiter",
    "Listener",
    "SyncWaiter",
    "Waiter",
    "Waiters",
]

logger = logging.getLogger("cachekit")
READY_WAIT = 0.25  # seconds a first waiter gives the subscription (a healthy one: ms)


class Waiter(Protocol):
    """Something :class:`Waiters` can wake; ``wake`` never blocks and is thread-safe."""

    def wake(self) -> None:
        """Signal the waiting thread or coroutine."""
        ...


class SyncWaiter:
    """A thread's wake-up: a ``threading.Event`` cleared after each wait."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = threading.Event()

    def wake(self) -> None:
        self._event.set()

    def wait(self, timeout: float) -> bool:
        """Block until woken or ``timeout``; whether it was woken."""
        woken = self._event.wait(timeout)
        self._event.clear()  # callers re-check the state after this, so no wake is lost
        return woken


class AsyncWaiter:
    """A coroutine's wake-up: an ``asyncio.Event`` set from any thread."""

    __slots__ = ("_event", "_loop")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()

    def wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self, seconds: float) -> bool:
        """Wait until woken or for ``seconds``; whether it was woken."""
        try:
            async with asyncio.timeout(seconds):
                await self._event.wait()
            woken = True
        except TimeoutError:
            woken = False
        self._event.clear()
        return woken


class Waiters:
    """Who waits on which key, shared by both drivers of one cache.

    Usage::

        waiters.notify("shop:{product:5}")
    """

    __slots__ = ("_by_key", "_changed", "_lock", "_topics")

    def __init__(self) -> None:
        self._by_key: dict[str, set[Waiter]] = {}
        self._topics: dict[str, list[Callable[[str | None], None]]] = {}
        self._lock = threading.Lock()
        self._changed: Callable[[], None] | None = None

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever a key gains its first waiter or loses its last, or
        a topic gains a handler: for a listener that subscribes per key (Cluster)."""
        self._changed = callback

    def watched(self) -> tuple[list[str], list[str]]:
        """A snapshot: the keys someone waits on, and the topics someone follows."""
        with self._lock:
            return list(self._by_key), list(self._topics)

    def subscribe(self, topic: str, handler: Callable[[str | None], None]) -> None:
        """Call ``handler(body)`` for every :func:`topic_message` on ``topic``, and
        ``handler(None)`` after a reconnect (messages may have been missed)."""
        with self._lock:
            self._topics.setdefault(topic, []).append(handler)
        if self._changed is not None:
            self._changed()

    def add(self, key: str, waiter: Waiter) -> None:
        """Start waking ``waiter`` for ``key``."""
        with self._lock:
            first = key not in self._by_key
            self._by_key.setdefault(key, set()).add(waiter)
        if first and self._changed is not None:
            self._changed()

    def discard(self, key: str, waiter: Waiter) -> None:
        """Stop waking ``waiter`` for ``key``."""
        with self._lock:
            waiting = self._by_key.get(key)
            last = False
            if waiting is not None:
                waiting.discard(waiter)
                if not waiting:
                    del self._by_key[key]
                    last = True
        if last and self._changed is not None:
            self._changed()

    def notify(self, key: str) -> None:
        """Wake everyone waiting on ``key`` (or hand a topic message to its handlers)."""
        if key.startswith(TOPIC_MARK):
            topic, _, body = key[len(TOPIC_MARK) :].partition(" ")
            with self._lock:
                handlers = tuple(self._topics.get(topic, ()))
            for handler in handlers:
                handler(body)
            return
        with self._lock:
            waiting = tuple(self._by_key.get(key, ()))
        for waiter in waiting:
            waiter.wake()

    def notify_all(self) -> None:
        """Wake every waiter and tell every topic (after a reconnect: messages were lost)."""
        self.notify_lost(None, None)

    def notify_lost(self, keys: Iterable[str] | None, topics: Iterable[str] | None) -> None:
        """Wake the waiters of ``keys`` and tell the handlers of ``topics`` that messages
        may have been missed (``None``: all of them)."""
        with self._lock:
            by_key, by_topic = self._by_key, self._topics
            chosen = by_key.values() if keys is None else [by_key.get(k, ()) for k in keys]
            waiting = [w for group in chosen for w in group]
            followed = (
                by_topic.values() if topics is None else [by_topic.get(t, []) for t in topics]
            )
            handlers = [h for group in followed for h in group]
        for waiter in waiting:
            waiter.wake()
        for handler in handlers:
            handler(None)

    def on_message(self, channel: str, message: str) -> None:
        """A subscriber callback for the memory backend's publish."""
        self.notify(message)


class Listener(Protocol):
    """Keeps the subscriptions the waiters need alive and feeds :class:`Waiters`."""

    ready: threading.Event

    def ensure_started(self) -> bool:
        """Start listening if not yet; whether this call started it.

        The caller that started it should give ``ready`` up to :data:`READY_WAIT` seconds,
        so that the very first waiters do not miss their wake-up.
        """
        ...

    def stop(self) -> None:
        """Stop listening; the thread or task ends at once or within a poll interval."""
        ...

    async def aclose(self) -> None:
        """Stop listening and wait until the thread or task has ended."""
        ...
