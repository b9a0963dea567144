"""The one wait for another holder's lease: used by the decorator, the response cache and locks.

Whoever finds a key's lease taken waits the same way: it watches the key *before* its
first attempt (so a release or fill from then on wakes it, with no lost wake-up between
the attempt and the sleep; the refused attempt records the waiter in Redis, so the
holder's fill or release is announced to it: :mod:`cachekit.backends.ops.waiting`),
sleeps until it is woken or the holder's lease runs out (plus :data:`LEASE_MARGIN`, so
it wakes after the lapse rather than just before it), and gives up at its own deadline.
The first sleep counts one ``lock_waits``; giving up counts one ``lock_timeouts``. What
a caller does between two attempts (re-read the value, probe the response, try the lock
again) and when it gives up (serve stale, load without storing, raise) stays its own
business.

Usage::

    waiting = yield from watch_lease(ctx, key, policy.lock_wait)
    while True:
        got = yield TakeLease(lease, token, ttl, key)
        if got.acquired:
            return (yield from load_and_fill())
        if not (yield from wait_for_lease(ctx, waiting, got.remaining)):
            break  # our bound ran out: serve stale or load alone
        ...  # woken or lapsed: look again
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from cachekit.flow.context import Context
from cachekit.flow.effects import Flow, Wait, Watch

__all__ = ["LEASE_MARGIN", "LeaseWait", "rewatch", "wait_for_lease", "watch_lease"]

LEASE_MARGIN: Final = 0.005
"""Seconds past a holder's lease at which a waiter wakes to try again: after the lapse, not
just before it (our monotonic clock and the server's expiry clock may run a little apart)."""


@dataclass(slots=True)
class LeaseWait:
    """One caller's bounded wait: the watch handle, its deadline, whether it slept yet."""

    handle: Any
    deadline: float
    waited: bool = False


def watch_lease(ctx: Context, key: str, wait: float) -> Flow[LeaseWait]:
    """Start watching ``key`` (before the first attempt) with ``wait`` seconds to spend."""
    handle = yield Watch(key)
    return LeaseWait(handle, ctx.clock.monotonic() + wait)


def rewatch(waiting: LeaseWait, key: str) -> Flow[None]:
    """Watch ``key`` from now on instead (the awaited key changed, e.g. a new variant)."""
    waiting.handle = yield Watch(key)


def wait_for_lease(ctx: Context, waiting: LeaseWait, lease_remaining: float) -> Flow[bool]:
    """Sleep until woken or the holder's lease (``lease_remaining`` s) lapses.

    ``False`` when the caller's deadline has passed instead: then nothing was waited and
    one ``lock_timeouts`` is counted.
    """
    remaining = waiting.deadline - ctx.clock.monotonic()
    if remaining <= 0:
        ctx.stats.incr("lock_timeouts")
        return False
    if not waiting.waited:
        ctx.stats.incr("lock_waits")
        waiting.waited = True
    yield Wait(waiting.handle, min(remaining, lease_remaining + LEASE_MARGIN))
    return True
