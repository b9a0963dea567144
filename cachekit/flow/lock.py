"""A lock's decisions as flows: acquire (waiting for the holder), extend and release.

:class:`LockState` is everything about one lock except how its I/O is performed; the
public :class:`~cachekit.Lock` and :class:`~cachekit.SyncLock` (:mod:`cachekit.lock`) are
its two faces and drive these flows with the async and the sync driver.

Usage::

    fence = await driver.drive(acquire_flow(ctx, lock))
    await driver.drive(release_flow(ctx, lock))
"""

from __future__ import annotations

from cachekit.backends.ops import ExpireIfEqual, Get
from cachekit.backends.ops.leases import Release
from cachekit.backends.ops.locks import Acquire
from cachekit.exceptions import BackendError, LockError, LockNotOwnedError, LockTimeout
from cachekit.flow.context import Context, new_token
from cachekit.flow.effects import Flow
from cachekit.flow.lease import LEASE_MARGIN, wait_for_lease, watch_lease

__all__ = ["LockState", "acquire_flow", "extend_flow", "release_flow"]

# How much of a lease we do not count on when judging whether it may have lapsed: our
# monotonic clock and Redis's expiry clock may run a little apart.
_DRIFT = 0.01


def acquire_flow(ctx: Context, lock: LockState) -> Flow[int]:
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


def extend_flow(ctx: Context, lock: LockState, ttl: float) -> Flow[None]:
    """Reset ``lock``'s lease to ``ttl`` now; ``LockNotOwnedError`` if it was lost."""
    sent = ctx.clock.monotonic()  # the new lease starts no earlier than this
    if not (yield ExpireIfEqual(lock.key, lock.token, ttl)):
        lock.lost = True
        raise LockNotOwnedError(f"lock {lock.name!r} was lost", name=lock.name)
    lock.leased(sent, ttl)


def release_flow(ctx: Context, lock: LockState) -> Flow[None]:
    """Give ``lock`` back with a token-checked delete that announces the release."""
    ok: bool = yield Release(lock.key, lock.token, ctx.channel)
    if lock.maybe_resent(ok):
        ok = (yield Get(lock.key)) is None
    lock.released(ok)


class LockState:
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
