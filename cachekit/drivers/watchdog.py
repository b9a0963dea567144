"""Watchdogs: keep a lease alive while its holder works, and notice when it is lost.

A lease (a lock key holding a token, always with a TTL) must outlive slow work, yet free
itself soon after its holder dies. So the TTL stays short and a watchdog resets it every
``ttl / 3`` with a token-checked script, until stopped; a reset that finds another token
(or none) marks the lease :attr:`lost` and ends the watchdog. A watchdog also ends with
the thread or task that started it, so a holder that dies or is cancelled without
releasing leaves a lease that lapses within its TTL instead of one renewed forever. The
sync one is a daemon thread, so it dies with its process; the async one is a task.

A lease taken on probation (:class:`~cachekit.backends.ops.leases.TakeLease`) lives only that
long until its holder confirms it: its watchdog renews first a quarter into the probation,
and retries that often until answered. A holder that finishes sooner (most loads do) never
renews at all.

Usage::

    dog = SyncWatchdog(backend, key, token, ttl=5, on_error=log_it)
    try:
        do_slow_work()
    finally:
        dog.stop()
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from cachekit.backends.base import AsyncBackend, SyncBackend
from cachekit.backends.ops import ExpireIfEqual
from cachekit.exceptions import BackendError

__all__ = ["AsyncWatchdog", "SyncWatchdog", "first_renewal"]

OnError = Callable[[BackendError], None]


def first_renewal(ttl: float, probation: float | None = None) -> float:
    """Seconds before a watchdog first renews (and retries, until answered) a lease of ``ttl``.

    Usage::

        first_renewal(10)          # 3.33...: every ttl / 3
        first_renewal(10, 0.25)    # 0.0625: a quarter into the probation
    """
    if probation is None:
        return ttl / 3
    return min(ttl, probation) / 4


class SyncWatchdog:
    """Renews a lease from a daemon thread until :meth:`stop`."""

    __slots__ = ("_stop", "lost")

    def __init__(
        self,
        backend: SyncBackend,
        key: str,
        token: bytes,
        ttl: float,
        on_error: OnError,
        probation: float | None = None,
    ) -> None:
        self.lost = False
        self._stop = threading.Event()
        op = ExpireIfEqual(key, token, ttl)
        owner = threading.current_thread()
        first = first_renewal(ttl, probation)
        thread = threading.Thread(
            target=self._run, args=(backend, op, first, ttl / 3, on_error, owner), daemon=True
        )
        thread.name = f"cachekit-watchdog {key}"
        thread.start()

    def _run(
        self,
        backend: SyncBackend,
        op: ExpireIfEqual,
        delay: float,
        every: float,
        on_error: OnError,
        owner: threading.Thread,
    ) -> None:
        while not self._stop.wait(delay) and owner.is_alive():
            try:
                if not backend.run(op):
                    self.lost = True
                    return
            except BackendError as exc:  # keep trying: the lease may still be ours
                on_error(exc)
            else:
                delay = every

    def stop(self) -> None:
        """Stop renewing (the lease then lapses after its TTL unless released)."""
        self._stop.set()


class AsyncWatchdog:
    """Renews a lease from a task until :meth:`stop`."""

    __slots__ = ("_owner", "_task", "lost")

    def __init__(
        self,
        backend: AsyncBackend,
        key: str,
        token: bytes,
        ttl: float,
        on_error: OnError,
        probation: float | None = None,
    ) -> None:
        self.lost = False
        op = ExpireIfEqual(key, token, ttl)
        first = first_renewal(ttl, probation)
        self._task = asyncio.get_running_loop().create_task(
            self._run(backend, op, first, ttl / 3, on_error), name=f"cachekit-watchdog {key}"
        )
        self._owner = asyncio.current_task()
        if self._owner is not None:
            self._owner.add_done_callback(self._owner_done)

    def _owner_done(self, _: object) -> None:
        self._task.cancel()

    async def _run(
        self,
        backend: AsyncBackend,
        op: ExpireIfEqual,
        delay: float,
        every: float,
        on_error: OnError,
    ) -> None:
        while True:
            await asyncio.sleep(delay)
            try:
                if not await backend.run(op):
                    self.lost = True
                    return
            except BackendError as exc:  # keep trying: the lease may still be ours
                on_error(exc)
            else:
                delay = every

    def stop(self) -> None:
        """Stop renewing (the lease then lapses after its TTL unless released)."""
        self._task.cancel()
        if self._owner is not None:
            self._owner.remove_done_callback(self._owner_done)
