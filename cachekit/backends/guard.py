"""The time budget and the circuit breaker around both halves of a backend.

Every operation gets one deadline (default 250 ms) that covers everything it waits for:
a free connection, the connect, the reply and the one reconnect-retry. A caller never
waits longer, however many other callers there are: operations in flight are bounded by
``slots`` (the pool's size), and a caller who cannot get a slot before the deadline fails
at the deadline instead of queueing behind the pool. The async backend enforces the
deadline by cancelling the call at it; the sync backend publishes it in :data:`DEADLINE`,
which the Redis connections read to bound each reply (see :mod:`cachekit.backends.redis`).

The breaker (:class:`~cachekit.backends.breaker.Breaker`) is asked before each call: while it is
open, the call raises :class:`~cachekit.exceptions.CircuitOpen` at once, without I/O.
Only failures to reach the server (unreachable, timed out) count against it; an error
*answer* such as ``OOM command not allowed`` proves the server is alive, and a caller who
got no slot never reached it. A timeout counts only if the call had its slot at once and
the server then answered nobody for at least half a deadline: a call that queued (for a
slot, or behind slow replies while other calls were answered: 10 connections, 500
callers, a server 40 ms away) met a congested client, not a failed server. A hung server
answers nobody: the calls that were in flight when it stopped, and had their slots at
once, time out within a deadline and open the breaker. A timed-out call drops its
connection, and the next call on it reconnects; when a link's round trip nears a quarter
of the deadline, a burst of such reconnects could take the rest of the replies' place and
read as silence. So the server's answer to a reconnect's handshake counts as an answer
too: a backend that holds its connections (:mod:`cachekit.backends.held`, every backend
built from a URL) reports it to the breaker (:meth:`~cachekit.backends.breaker.Breaker.heard`).

The guard sits on every cache hit, so its own cost is kept to a few hundred nanoseconds:
the sync slots are a :class:`queue.SimpleQueue` of tokens (taken and returned in C), and
the async backend, instead of one ``asyncio.timeout`` per call (a timer armed and cancelled
each time, ~5 µs), keeps one timer per event loop for the earliest deadline of the calls
in flight (:class:`_Slots`); it cancels a call at its deadline exactly as the timeout
would, and turns that cancellation into a :class:`~cachekit.exceptions.BackendTimeout`.

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
import queue
import time
from collections import deque
from contextvars import ContextVar
from typing import Final, TypeVar

from cachekit.backends.base import AsyncBackend, SyncBackend
from cachekit.backends.breaker import NORMAL, Breaker, Ticket
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


def _hear_handshakes(inner: object, breaker: Breaker) -> None:
    # A reconnect's handshake is the server answering: a burst of reconnects after
    # timeouts under congestion must not read as silence (see the module docstring).
    report = getattr(inner, "report_handshakes", None)  # Redis backends that hold connections
    if report is not None:
        report(breaker.heard)


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
        _hear_handshakes(inner, breaker)
        # One token per slot: a SimpleQueue is taken from and refilled in C, where a
        # threading.Semaphore runs a Condition in Python (~1 µs per call on the hit path).
        self._slots: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(slots):
            self._slots.put(None)

    def run(self, op: Op[T]) -> T:
        """Run ``op`` within the budget, unless the breaker is open."""
        guard = self._guard
        ticket = NORMAL if guard.breaker.closed else guard.admit()
        slot_at = time.monotonic()
        deadline = slot_at + guard.deadline  # the wait for a slot counts too
        slots = self._slots
        try:
            slots.get_nowait()  # the usual case: a free slot at once
        except queue.Empty:
            try:
                slots.get(timeout=guard.deadline)
            except queue.Empty:
                raise guard.no_slot(ticket) from None
            slot_at = time.monotonic()
        token = DEADLINE.set(deadline)
        try:
            reply = self.inner.run(op)
        except BackendError as exc:
            guard.failed(ticket, exc, slot_at, deadline)
            raise
        finally:
            DEADLINE.reset(token)
            slots.put(None)
        guard.breaker.success(ticket)
        return reply

    def close(self) -> None:
        """Close the wrapped backend."""
        self.inner.close()


class _Slots:
    """One event loop's share of an async guard: its slots and its deadline timer.

    Slots: ``free`` is taken without awaiting when positive; otherwise a caller queues (FIFO)
    and a released slot is handed to the first live waiter. Deadlines: every call in flight
    is in ``calls`` (task -> deadline; insertion order is deadline order, since every call
    of a guard gets the same budget), and one timer is armed for the earliest. When it fires
    it cancels the calls past their deadline, marks them ``fired``, and re-arms for the next.
    A call that ends first just leaves ``calls``: nothing is armed or cancelled per call.

    Usage::

        slots = _Slots(asyncio.get_running_loop(), size=10)
        await slots.acquire(); slots.release()
    """

    __slots__ = ("calls", "fired", "free", "loop", "timer", "waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.loop = loop
        self.free = size
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.calls: dict[asyncio.Task[object], float] = {}
        self.fired: set[asyncio.Task[object]] = set()
        self.timer: asyncio.TimerHandle | None = None

    async def acquire(self) -> None:
        """Take a slot, waiting in line for one if none is free."""
        if self.free > 0:
            self.free -= 1
            return
        waiter = self.loop.create_future()
        self.waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot while being cancelled: pass it on
            else:
                waiter.cancel()  # release() skips it
            raise

    def release(self) -> None:
        """Give a slot back: to the first caller still waiting, else to the free ones."""
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1

    def watch(self, task: asyncio.Task[object], deadline: float) -> None:
        """Cancel ``task`` at ``deadline`` unless :meth:`unwatch` comes first."""
        self.calls[task] = deadline
        if self.timer is None:
            self.timer = self.loop.call_later(deadline - time.monotonic(), self._fire)

    def _fire(self) -> None:
        self.timer = None
        now = time.monotonic()
        expired = []
        for task, deadline in self.calls.items():
            if deadline > now:  # the earliest still running: wake again at its deadline
                self.timer = self.loop.call_later(deadline - now, self._fire)
                break
            expired.append(task)
        for task in expired:
            del self.calls[task]
            self.fired.add(task)
            task.cancel()

    def expired(self, task: asyncio.Task[object], cancelling: int) -> bool:
        """Whether ``task`` was cancelled by its deadline alone (then it is uncancelled).

        Like ``asyncio.timeout``: a cancellation from anyone else as well (``cancelling``
        is the task's count when the call began) stays a cancellation.
        """
        if task not in self.fired:
            return False
        self.fired.discard(task)
        return task.uncancel() <= cancelling


class AsyncGuardedBackend:
    """An :class:`~cachekit.backends.base.AsyncBackend` whose calls keep a deadline and a breaker.

    Usage::

        backend = AsyncGuardedBackend(AsyncRedisBackend(aclient), Breaker(), Stats())
    """

    __slots__ = ("_guard", "_loop", "_size", "_state", "inner")

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
        _hear_handshakes(inner, breaker)
        self._size = slots
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state: _Slots | None = None

    def _slots(self) -> _Slots:
        # Slots and timers belong to one loop; a cache reused by a new loop (tests,
        # asyncio.run per job) gets fresh ones, as its pool does.
        loop = asyncio.get_running_loop()
        state = self._state
        if state is None or state.loop is not loop:
            state = self._state = _Slots(loop, self._size)
        return state

    async def run(self, op: Op[T]) -> T:
        """Run ``op`` within the budget, unless the breaker is open."""
        guard = self._guard
        ticket = NORMAL if guard.breaker.closed else guard.admit()
        slots = self._slots()
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("cachekit's async face runs inside an asyncio task")
        cancelling = task.cancelling()
        now = time.monotonic()
        deadline = now + guard.deadline
        slot_at = 0.0
        slots.watch(task, deadline)
        # The connections also read DEADLINE to bound each reply: redis-py may swallow a
        # cancellation that lands as a send completes (CPython gh-86296), and the read
        # after it must not then wait a whole socket_timeout of its own.
        token = DEADLINE.set(deadline)
        try:
            if slots.free > 0:  # the usual case: no await for a slot
                slots.free -= 1
                slot_at = now
            else:
                await slots.acquire()
                slot_at = time.monotonic()
            reply = await self.inner.run(op)
        except asyncio.CancelledError:
            if not slots.expired(task, cancelling):
                raise
            if not slot_at:
                raise guard.no_slot(ticket) from None
            exc = BackendTimeout(f"no reply within the {guard.deadline}s budget")
            guard.failed(ticket, exc, slot_at, deadline)
            raise exc from None
        except BackendError as exc:
            guard.failed(ticket, exc, slot_at, deadline)
            raise
        finally:
            # No await from here on: the timer cannot fire for this call any more.
            slots.calls.pop(task, None)
            DEADLINE.reset(token)
            if slot_at:
                slots.release()
            if slots.fired:  # cut at its deadline, but the cancellation was swallowed below
                slots.expired(task, cancelling)
        guard.breaker.success(ticket)
        return reply

    async def close(self) -> None:
        """Close the wrapped backend."""
        await self.inner.close()
