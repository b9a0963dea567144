"""``cache.lock(name)``: a distributed lock with a watchdog, fencing and notified waiters.

The protocol is redis-py's ``lock.py`` made safer, written once as flows for both drivers
(:mod:`cachekit.flow.lock`):

* acquire: ``SET key token NX PX ttl`` with a random token, and in the same script the
  next value of a fencing counter, so every acquisition gets a strictly increasing
  :attr:`fencing_token`: above the last one and above the server clock in microseconds,
  so it keeps rising when the counter is lost (a Redis restart, a failover, its expiry).
  The counter expires ten leases (at least ten minutes) after its last token, so lock
  names used once leave no key behind (:func:`~cachekit.backends.ops.locks.fence_ttl`).
  Give the token to the resource you protect and let it refuse lower tokens: a lease can
  lapse under a paused holder, a fence cannot (Kleppmann).
* wait: bounded by ``wait``; a waiter sleeps until a release is announced on the cache's
  channel or the holder's lease runs out, never on a fixed polling interval.
* hold: a watchdog (:mod:`cachekit.drivers.watchdog`) renews the lease every ``ttl / 3`` by a
  token-checked script and stops on release, cancellation or process exit (the key
  always keeps a TTL, so a dead holder's lock frees within ``ttl``).
* release: a token-checked delete that announces the release; a lock that was lost
  raises :class:`~cachekit.exceptions.LockNotOwnedError`, and the token is cleared only
  after a successful release.

Locks fail closed: when Redis is unreachable, acquiring raises
:class:`~cachekit.exceptions.BackendUnavailable` unless ``fail_open=True``. A lock object
belongs to the task or thread that acquired it.

Usage::

    async with cache.lock("report:42", ttl=10, wait=5) as lock:
        await write_report(fence=lock.fencing_token)

    with cache.sync.lock("report:42", ttl=10, wait=5) as lock: ...
"""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType
from typing import TYPE_CHECKING, Self

from cachekit.exceptions import BackendError
from cachekit.flow.context import Context
from cachekit.flow.lock import LockState, acquire_flow, extend_flow, release_flow

if TYPE_CHECKING:
    from cachekit.drivers.drive import AsyncDriver, SyncDriver
    from cachekit.drivers.watchdog import AsyncWatchdog, SyncWatchdog

__all__ = ["Lock", "SyncLock"]


class Lock(LockState):
    """An async distributed lock; use ``async with`` or ``acquire()`` / ``release()``.

    **Attributes:** ``name``, ``fencing_token`` (set while held), ``held``.

    Usage::

        lock = cache.lock("nightly-job", ttl=30, wait=0)
        async with lock:
            ...
    """

    def __init__(
        self, driver: AsyncDriver, ctx: Context, name: str, ttl: float, wait: float, fail_open: bool
    ) -> None:
        super().__init__(ctx, name, ttl, wait, fail_open)
        self._driver = driver
        self._watchdog: AsyncWatchdog | None = None

    async def acquire(self) -> Self:
        """Take the lock; raises ``LockTimeout`` or, failing closed, ``BackendUnavailable``."""
        owner = asyncio.current_task()
        try:
            fence: int | None = await self._driver.drive(acquire_flow(self.ctx, self))
        except BackendError as exc:
            if not self.fail_open:
                raise
            self.failed_open(exc)
            fence = None
        self.acquired(fence, owner)
        if fence is not None:
            self._watchdog = self._driver.hold(self.key, self.token, self.ttl)
        return self

    async def extend(self, ttl: float | None = None) -> None:
        """Reset the lease to ``ttl`` (default: the lock's) now."""
        self.check_owner(asyncio.current_task())
        await self._driver.drive(extend_flow(self.ctx, self, ttl or self.ttl))

    async def release(self) -> None:
        """Give the lock back; ``LockNotOwnedError`` if it was lost meanwhile."""
        self.check_owner(asyncio.current_task())
        if self._watchdog is not None:
            self._watchdog.stop()
            self.lost |= self._watchdog.lost
            self._watchdog = None
        if self.fencing_token is None:  # acquired by failing open: nothing to release
            self.held = False
            return
        await self._driver.drive(release_flow(self.ctx, self))

    async def __aenter__(self) -> Self:
        return await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.release()


class SyncLock(LockState):
    """The blocking twin of :class:`Lock`; its watchdog is a daemon thread.

    Usage::

        with cache.sync.lock("nightly-job", ttl=30, wait=0) as lock:
            run_job(fence=lock.fencing_token)
    """

    def __init__(
        self, driver: SyncDriver, ctx: Context, name: str, ttl: float, wait: float, fail_open: bool
    ) -> None:
        super().__init__(ctx, name, ttl, wait, fail_open)
        self._driver = driver
        self._watchdog: SyncWatchdog | None = None

    def acquire(self) -> Self:
        """Take the lock; raises ``LockTimeout`` or, failing closed, ``BackendUnavailable``."""
        try:
            fence: int | None = self._driver.drive(acquire_flow(self.ctx, self))
        except BackendError as exc:
            if not self.fail_open:
                raise
            self.failed_open(exc)
            fence = None
        self.acquired(fence, threading.get_ident())
        if fence is not None:
            self._watchdog = self._driver.hold(self.key, self.token, self.ttl)
        return self

    def extend(self, ttl: float | None = None) -> None:
        """Reset the lease to ``ttl`` (default: the lock's) now."""
        self.check_owner(threading.get_ident())
        self._driver.drive(extend_flow(self.ctx, self, ttl or self.ttl))

    def release(self) -> None:
        """Give the lock back; ``LockNotOwnedError`` if it was lost meanwhile."""
        self.check_owner(threading.get_ident())
        if self._watchdog is not None:
            self._watchdog.stop()
            self.lost |= self._watchdog.lost
            self._watchdog = None
        if self.fencing_token is None:
            self.held = False
            return
        self._driver.drive(release_flow(self.ctx, self))

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
