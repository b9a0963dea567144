"""``cache.lock(name)``: a distributed lock with a watchdog, fencing and notified waiters.

The protocol is redis-py's ``lock.py`` made safer, written once as flows for both drivers
(:func:`acquire_flow`, :func:`extend_flow`, :func:`release_flow`):

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

from cachekit.backends.ops import ExpireIfEqual, Get
from cachekit.backends.ops.leases import Release
from cachekit.backends.ops.locks import Acquire
from cachekit.exceptions import BackendError, LockError, LockNotOwnedError, LockTimeout
from cachekit.flow.context import Context, new_token
from cachekit.flow.effects import Flow
from cachekit.flow.lease import LEASE_MARGIN, wait_for_lease, watch_lease

if TYPE_CHECKING:
    from cachekit.drivers.drive import AsyncDriver, SyncDriver
    from cachekit.drivers.watchdog import AsyncWatchdog, SyncWatchdog

__all__ = ["Lock", "SyncLock", "acquire_flow", "extend_flow", "release_flow"]

# How much of a lease we do not count on when judging whether it may have lapsed: our
# monotonic clock and Redis's expiry clock may run a little apart.
_DRIFT = 0.01


def acquire_flow(ctx: Context, lock: _LockState) -> Flow[int]:
    """Take ``lock``, waiting (woken by releases) at most ``lock.wait`` seconds."""
    waiting = yield from watch_lease(ctx, lock.key, lock.wait)
    while True:
        sent = ctx.clock.monotonic()  # the lease starts no earlier than this
        got = yield Acquire(lock.key, lock.token, lock.ttl, lock.key + ":fence")
        if got.acquired:
            lock.leased(sent, lock.ttl)
            fence: int = got.fence
            return fence
        if not (yield from wait_for_lease(ctx, waiting, got.remaining)):
            raise LockTimeout(
                f"lock {lock.name!r} not acquired within {lock.wait}s", name=lock.name
            )


def extend_flow(ctx: Context, lock: _LockState, ttl: float) -> Flow[None]:
    """Reset ``lock``'s lease to ``ttl`` now; ``LockNotOwnedError`` if it was lost."""
    sent = ctx.clock.monotonic()  # the new lease starts no earlier than this
    if not (yield ExpireIfEqual(lock.key, lock.token, ttl)):
        lock.lost = True
        raise LockNotOwnedError(f"lock {lock.name!r} was lost", name=lock.name)
    lock.leased(sent, ttl)


def release_flow(ctx: Context, lock: _LockState) -> Flow[None]:
    """Give ``lock`` back with a token-checked delete that announces the release."""
    ok: bool = yield Release(lock.key, lock.token, ctx.channel)
    if lock.maybe_resent(ok):
        ok = (yield Get(lock.key)) is None
    lock.released(ok)


class _LockState:
    """Everything about one lock except how its I/O is performed."""

    def __init__(self, ctx: Context, name: str, ttl: float, wait: float, fail_open: bool) -> None:
        if ttl <= 0 or wait < 0:
            raise ValueError("a lock needs ttl > 0 and wait >= 0")
        self.ctx = ctx
        self.name = name
        self.key = ctx.keyspace.namespaced("lock", name)
        self.ttl = ttl
        self.wait = wait
        self.fail_open = fail_open
        self.token = new_token()
        self.fencing_token: int | None = None
        self.held = False
        self.lost = False
        self.owner: object = None
        self.lapses_at = 0.0  # monotonic; before it the lease cannot have run out by itself

    def leased(self, since: float, ttl: float) -> None:
        """Note a lease of ``ttl`` granted no earlier than ``since`` (acquire or extend)."""
        self.lapses_at = since + ttl * (1 - _DRIFT) - LEASE_MARGIN

    def acquired(self, fence: int | None, owner: object) -> None:
        self.fencing_token, self.held, self.lost, self.owner = fence, True, False, owner

    def check_owner(self, owner: object) -> None:
        if not self.held:
            raise LockNotOwnedError(f"lock {self.name!r} is not held", name=self.name)
        if owner != self.owner:
            raise LockError(f"lock {self.name!r} belongs to another task", name=self.name)

    def failed_open(self, exc: BackendError) -> None:
        self.ctx.log.warning(("lock-open", type(exc)), "cachekit: lock failed open (%s)", exc)

    def maybe_resent(self, ok: bool) -> bool:
        """Whether a refused release may be redis-py resending one whose reply was lost.

        Only while our lease cannot have lapsed by itself (and no renewal failed): then a
        key found *absent* means the first run deleted it. The caller confirms the absence
        (a key held by another token means an operator or failover took it: lost).
        Watchdog renewals are not counted, so past the first lease this stays strict.
        """
        return not ok and not self.lost and self.ctx.clock.monotonic() < self.lapses_at

    def released(self, ok: bool) -> None:
        if not ok or self.lost:
            self.held = False
            raise LockNotOwnedError(f"lock {self.name!r} was lost before release", name=self.name)
        self.held, self.token = False, new_token()  # a new token only after a real release

    def __repr__(self) -> str:
        state = "held" if self.held else "free"
        return f"<lock {self.name!r} {state} fence={self.fencing_token}>"


class Lock(_LockState):
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


class SyncLock(_LockState):
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
