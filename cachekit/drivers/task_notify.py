"""The notification listener as an asyncio task, for caches given only an async client.

It keeps the same subscriptions as the thread listeners of :mod:`cachekit.drivers.sharded_notify`
(a channel per awaited key, the cache's channel for topics), on one connection of the
running loop's client.

Usage::

    listener = TaskListener(lambda: async_client, "shop:notify", waiters, log)
    listener.ensure_started()      # on a running loop
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any

from cachekit.drivers.notify import Waiters
from cachekit.drivers.sharded_notify import BACKOFF_MAX, BACKOFF_MIN, IDLE, Subscriptions
from cachekit.stats import LogOnce

__all__ = ["TaskListener"]


class TaskListener:
    """The listener as an asyncio task, for caches that only have an async client.

    It lives on the loop of the first waiter, on that loop's client; waiters on other
    loops still wake at their bounds. When its loop is gone (closed, or its task ended
    with it), the next waiter starts it again on its own loop.

    Usage::

        listener = TaskListener(lambda: async_client, "shop:notify", waiters, log)
        listener.ensure_started()      # on a running loop
    """

    def __init__(
        self, client: Callable[[], Any], channel: str, waiters: Waiters, log: LogOnce
    ) -> None:
        self.channel = channel
        self.waiters = waiters
        self.log = log
        self.ready = threading.Event()
        self.stopped = False
        self._client = client
        self._book = Subscriptions(channel, waiters, lambda topic: channel)
        self._task: asyncio.Task[None] | None = None
        self._poke: asyncio.Event | None = None  # the running task's, set from any thread
        waiters.on_change(self._changed)

    def _changed(self) -> None:
        task, poke = self._task, self._poke
        if task is not None and poke is not None and not task.done():
            with contextlib.suppress(RuntimeError):  # its loop closed: nothing to wake
                task.get_loop().call_soon_threadsafe(poke.set)

    def ensure_started(self) -> bool:
        task = self._task
        if task is not None and not task.done() and not task.get_loop().is_closed():
            return False
        self.stopped = False
        self.ready.clear()
        self._poke = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())
        return True

    def stop(self) -> None:
        self.stopped = True
        task = self._task
        if task is None or task.done():
            return
        loop = task.get_loop()
        if _running_loop() is loop:
            task.cancel()
        elif not loop.is_closed():  # another thread's loop: cancel it there
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(task.cancel)

    async def aclose(self) -> None:
        self.stop()
        task = self._task
        if task is not None and task.get_loop() is asyncio.get_running_loop():
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        backoff = BACKOFF_MIN
        poke, me = self._poke, asyncio.current_task()
        assert poke is not None
        assert me is not None
        while not self.stopped:
            book = self._book
            book.where.clear()
            book.confirmed.clear()
            book.unused_since.clear()
            try:
                async with self._client().pubsub() as pubsub:
                    pending = True
                    while not self.stopped:
                        if pending or poke.is_set():
                            poke.clear()
                            pending = await self._reconcile(pubsub)
                        tick = book.tick(pending)
                        if me.cancelling():
                            # A cancellation the short read timeouts below took for their
                            # own (Python 3.11's asyncio.timeout can): end all the same.
                            raise asyncio.CancelledError
                        if tick is None:  # nothing subscribed: sleep until a waiter comes
                            await _woken(poke, IDLE)
                            continue
                        message = await pubsub.get_message(timeout=tick)
                        while message is not None:
                            if self._handle(message):
                                backoff = BACKOFF_MIN
                            message = await pubsub.get_message(timeout=0.0)
            except Exception as exc:  # any failure: resubscribe later, never die silently
                self.ready.clear()
                self.log.warning(
                    ("subscription", type(exc)), "cachekit: notifications lost (%s)", exc
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    async def _reconcile(self, pubsub: Any) -> bool:
        wanted = self._book.wanted()
        subscribe, drop = self._book.plan(wanted)
        for channel in drop:
            self._book.dropped(channel)
            await pubsub.unsubscribe(channel)
        for channel in subscribe:
            await pubsub.subscribe(channel)
            self._book.where[channel] = "server"
        if not wanted or all(channel in self._book.confirmed for channel in wanted):
            self.ready.set()
        return self._book.pending(wanted)

    def _handle(self, message: dict[str, Any]) -> bool:
        """Hand a message over; whether it confirmed a subscription."""
        kind, channel, data = message["type"], message["channel"], message["data"]
        channel = channel.decode() if isinstance(channel, bytes) else channel
        if kind == "message":
            self.waiters.notify(data.decode() if isinstance(data, bytes) else data)
        elif kind == "subscribe" and self._book.confirm(channel):
            if all(c in self._book.confirmed for c in self._book.wanted()):
                self.ready.set()
            return True
        return False


async def _woken(event: asyncio.Event, seconds: float) -> None:
    """Wait until ``event`` is set or ``seconds`` pass.

    (No ``asyncio.timeout``: on Python 3.11 it can take a cancellation for its own expiry.)
    """
    waiting = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait((waiting,), timeout=seconds)
    finally:
        waiting.cancel()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
