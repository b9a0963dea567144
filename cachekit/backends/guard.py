"""The time budget and the circuit breaker around both halves of a backend.

Every operation gets one deadline (default 250 ms) that covers everything it waits for:
a free connection, the connect, the reply and the one reconnect-retry. A caller never
waits longer, however many other callers there are: operations in flight are bounded by
``slots`` (the pool's size), and a caller who cannot get a slot before the deadline fails
at the deadline instead of queueing behind the pool. The async backend enforces the deadline
with ``asyncio.timeout``; the sync backend publishes it in :data:`DEADLINE`, which the Redis
connections read to bound each reply (see :mod:`cachekit.backends.redis`).

The breaker (:class:`~cachekit.backends.breaker.Breaker`) is asked before each call: while it is
open, the call raises :class:`~cachekit.exceptions.CircuitOpen` at once, without I/O.
Only failures to reach the server (unreachable, timed out) count against it; an error
*answer* such as ``OOM command not allowed`` proves the server is alive, and a caller who
got no slot never reached it. A timeout counts only if the call had its slot at once and
the server then answered nobody for at least half a deadline: a call that queued (for a
slot, or behind slow replies while other calls were answered: 10 connections, 500
callers, a server 50 ms away) met a congested client, not a failed server. A hung server
answers nobody: the calls that were in flight when it stopped, and had their slots at
once, time out within a deadline and open the breaker.

Usage::

    breaker = Breaker(on_transition=stats.incr)
    sync_backend = SyncGuardedBackend(
        SyncRedisBackend(client), breaker, stats, deadline=0.25, slots=64
    )
    async_backend = AsyncGuardedBackend(AsyncRedisBackend(aclient), breaker, stats,
                                        deadline=0.25, slots=64)
"""

from __future__ import annotations

import asyncio
import threading
import time
from contextvars import ContextVar
from typing import Final, TypeVar

from cachekit.backends.base import AsyncBackend, SyncBackend
from cachekit.backends.breaker import Breaker, Ticket
from cachekit.backends.ops import Op
from cachekit.exceptions import BackendError, BackendTimeout, BackendUnavailable, CircuitOpen
from cachekit.stats import Stats

__all__ = ["DEADLINE", "DEFAULT_DEADLINE", "AsyncGuardedBackend", "SyncGuardedBackend", "time_left"]

T = TypeVar("T")

DEFAULT_DEADLINE: Final = 0.25
# A timeout charges the breaker only if the call had at least this share of its budget
# left when it got its slot, and nobody was answered for SILENCE of a deadline before it.
_CHARGED_SHARE: Final = 0.9
_SILENCE: Final = 0.5

#: The ``time.monotonic()`` by which the operation running in this context must end.
DEADLINE: ContextVar[float | None] = ContextVar("cachekit_deadline", default=None)


def time_left() -> float | None:
    """Seconds left of the running operation's budget (``None`` outside a guarded call).

    Usage::

        left = time_left()
        sock.settimeout(left if left is not None else default)
    """
    deadline = DEADLINE.get()
    return None if deadline is None else deadline - time.monotonic()


class _Guard:
    """What both backends decide alike: admission, and what an outcome means."""

    __slots__ = ("breaker", "deadline", "stats")

    def __init__(self, breaker: Breaker, stats: Stats, deadline: float) -> None:
        self.breaker = breaker
        self.stats = stats
        self.deadline = deadline

    def admit(self) -> Ticket:
        ticket = self.breaker.allow()
        if not ticket:
            self.stats.incr("breaker_rejects")
            raise CircuitOpen(f"circuit breaker for {self.breaker.name} is open")
        return ticket

    def no_slot(self, ticket: Ticket) -> BackendTimeout:
        self.breaker.release(ticket)
        self.stats.incr("pool_exhausted")
        return BackendTimeout(f"no free connection within the {self.deadline}s budget")

    def failed(self, ticket: Ticket, exc: BackendError, slot_at: float, deadline: float) -> None:
        if not isinstance(exc, BackendUnavailable):
            self.breaker.success(ticket)  # the server answered, with an error
            return
        if isinstance(exc, BackendTimeout):
            self.stats.incr("deadline_exceeded")
            queued = deadline - slot_at < self.deadline * _CHARGED_SHARE
            if queued or self.breaker.answered_within(self.deadline * _SILENCE):
                # Part of the budget went to waiting for a slot, or others were answered
                # while this call waited (it queued behind their replies): this process is
                # congested, the server alive, so the breaker is not charged. Half a
                # deadline: the calls in flight when a server hangs were answered until
                # it stopped, so a whole one would excuse all of them.
                self.stats.incr("pool_exhausted")
                self.breaker.release(ticket)
                return
        self.breaker.failure(ticket)


class SyncGuardedBackend:
    """A :class:`~cachekit.backends.base.SyncBackend` whose calls keep a deadline and a breaker.

    Usage::

        backend = SyncGuardedBackend(SyncRedisBackend(client), Breaker(), Stats(), deadline=0.25)
    """

    __slots__ = ("_guard", "_slots", "inner")

    def __init__(
        self,
        inner: SyncBackend,
        breaker: Breaker,
        stats: Stats,
        *,
        deadline: float = DEFAULT_DEADLINE,
        slots: int = 64,
    ) -> None:
        self.inner = inner
        self._guard = _Guard(breaker, stats, deadline)
        self._slots = threading.BoundedSemaphore(slots)

    def run(self, op: Op[T]) -> T:
        """Run ``op`` within the budget, unless the breaker is open."""
        guard = self._guard
        ticket = guard.admit()
        deadline = time.monotonic() + guard.deadline  # the wait for a slot counts too
        if not self._slots.acquire(timeout=guard.deadline):
            raise guard.no_slot(ticket)
        slot_at = time.monotonic()
        token = DEADLINE.set(deadline)
        try:
            reply = self.inner.run(op)
        except BackendError as exc:
            guard.failed(ticket, exc, slot_at, deadline)
            raise
        finally:
            DEADLINE.reset(token)
            self._slots.release()
        guard.breaker.success(ticket)
        return reply

    def close(self) -> None:
        """Close the wrapped backend."""
        self.inner.close()


class AsyncGuardedBackend:
    """An :class:`~cachekit.backends.base.AsyncBackend` whose calls keep a deadline and a breaker.

    Usage::

        backend = AsyncGuardedBackend(AsyncRedisBackend(client), Breaker(), Stats())
    """

    __slots__ = ("_guard", "_loop", "_semaphore", "_size", "inner")

    def __init__(
        self,
        inner: AsyncBackend,
        breaker: Breaker,
        stats: Stats,
        *,
        deadline: float = DEFAULT_DEADLINE,
        slots: int = 64,
    ) -> None:
        self.inner = inner
        self._guard = _Guard(breaker, stats, deadline)
        self._size = slots
        self._loop: asyncio.AbstractEventLoop | None = None
        self._semaphore = asyncio.Semaphore(slots)

    def _slots(self) -> asyncio.Semaphore:
        # An asyncio.Semaphore belongs to one loop; a cache reused by a new loop (tests,
        # asyncio.run per job) gets a fresh one, as its pool does.
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._semaphore = loop, asyncio.Semaphore(self._size)
        return self._semaphore

    async def run(self, op: Op[T]) -> T:
        """Run ``op`` within the budget, unless the breaker is open."""
        guard = self._guard
        ticket = guard.admit()
        slots = self._slots()
        deadline = time.monotonic() + guard.deadline
        slot_at = 0.0
        # The connections also read DEADLINE to bound each reply: redis-py may swallow a
        # cancellation that lands as a send completes (CPython gh-86296), and the read
        # after it must not then wait a whole socket_timeout of its own.
        token = DEADLINE.set(deadline)
        try:
            async with asyncio.timeout(guard.deadline):
                await slots.acquire()
                slot_at = time.monotonic()
                reply = await self.inner.run(op)
        except TimeoutError:
            if not slot_at:
                raise guard.no_slot(ticket) from None
            exc = BackendTimeout(f"no reply within the {guard.deadline}s budget")
            guard.failed(ticket, exc, slot_at, deadline)
            raise exc from None
        except BackendError as exc:
            guard.failed(ticket, exc, slot_at, deadline)
            raise
        finally:
            DEADLINE.reset(token)
            if slot_at:
                slots.release()
        guard.breaker.success(ticket)
        return reply

    async def close(self) -> None:
        """Close the wrapped backend."""
        await self.inner.close()
