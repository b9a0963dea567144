"""Work for later: delayed second deletes and retries of writes that failed.

An invalidation must happen even when Redis is briefly unreachable, yet the request that
asked for it must not wait. So a failed delete is handed to a :class:`SyncDeferred` (one
worker thread) or :class:`AsyncDeferred` (timer callbacks and tasks on the loop), which
retries it with backoff (1 s, 5 s, 30 s, then every 60 s, at most ``attempts`` times).
The same machinery runs ``double_delete``: the second delete of a key some time after the
first, for replicas that lag. Both are bounded (``limit`` operations pending; beyond it new
work is dropped, counted and logged once). ``close`` runs what is still pending once, at
once (a second delete scheduled for 0.5 s later still happens when the app stops sooner),
and counts what fails then as dropped.

Usage::

    deferred = SyncDeferred(backend, stats, log)
    deferred.schedule(Invalidate([key], channel), delay=0.5)
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from typing import Any

from cachekit.backends.base import AsyncBackend, SyncBackend
from cachekit.backends.ops import Op
from cachekit.exceptions import BackendError
from cachekit.flow.effects import BACKOFF
from cachekit.stats import LogOnce, Stats

__all__ = ["AsyncDeferred", "SyncDeferred"]

_LIMIT = 10_000
_ATTEMPTS = 10


class _Policy:
    """Counting, dropping and backoff, shared by both schedulers."""

    def __init__(self, stats: Stats, log: LogOnce, limit: int, attempts: int) -> None:
        self.stats = stats
        self.log = log
        self.limit = limit
        self.attempts = attempts

    def refuse(self, pending: int) -> bool:
        if pending < self.limit:
            self.stats.incr("deferred")
            return False
        self.stats.incr("deferred_dropped")
        self.log.warning(("deferred-full",), "cachekit: %d writes pending; dropping more", pending)
        return True

    def retry_in(
        self, op: Op[Any], attempt: int, exc: BackendError, backoff: tuple[float, ...]
    ) -> float | None:
        """Seconds until the next try (by ``backoff``), or ``None`` to give up on ``op``."""
        if attempt >= self.attempts:
            self.stats.incr("deferred_dropped")
            self.log.warning(("deferred-gave-up",), "cachekit: gave up on %r: %s", op, exc)
            return None
        self.stats.incr("deferred_retries")
        return backoff[min(attempt, len(backoff) - 1)]


class SyncDeferred(_Policy):
    """Runs operations later on one daemon thread (started on first use)."""

    def __init__(
        self,
        backend: SyncBackend,
        stats: Stats,
        log: LogOnce,
        *,
        limit: int = _LIMIT,
        attempts: int = _ATTEMPTS,
    ) -> None:
        super().__init__(stats, log, limit, attempts)
        self._backend = backend
        self._heap: list[tuple[float, int, int, Op[Any], tuple[float, ...]]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def schedule(
        self, op: Op[Any], delay: float, attempt: int = 0, backoff: tuple[float, ...] = BACKOFF
    ) -> None:
        """Run ``op`` in ``delay`` seconds (``attempt`` failures so far), retried by ``backoff``."""
        with self._wake:
            if self._closed or (attempt == 0 and self.refuse(len(self._heap))):
                return
            heapq.heappush(
                self._heap, (time.monotonic() + delay, next(self._order), attempt, op, backoff)
            )
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="cachekit-later", daemon=True
                )
                self._thread.start()
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closed and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._wake.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                if self._closed:
                    return
                _, _, attempt, op, backoff = heapq.heappop(self._heap)
            try:
                self._backend.run(op)
            except BackendError as exc:
                delay = self.retry_in(op, attempt + 1, exc, backoff)
                if delay is not None:
                    self.schedule(op, delay, attempt + 1, backoff)

    @property
    def pending(self) -> int:
        """Operations waiting to run."""
        with self._wake:
            return len(self._heap)

    def close(self) -> None:
        """Stop; run what is still pending once, now (what fails is counted as dropped)."""
        with self._wake:
            self._closed = True
            pending, self._heap = [entry[3] for entry in self._heap], []
            self._wake.notify()
        for op in pending:
            try:
                self._backend.run(op)
            except BackendError:
                self.stats.incr("deferred_dropped")


class AsyncDeferred(_Policy):
    """Runs operations later as tasks of the event loop that scheduled them."""

    def __init__(
        self,
        backend: AsyncBackend,
        stats: Stats,
        log: LogOnce,
        *,
        limit: int = _LIMIT,
        attempts: int = _ATTEMPTS,
    ) -> None:
        super().__init__(stats, log, limit, attempts)
        self._backend = backend
        self._timers: dict[asyncio.TimerHandle, Op[Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def schedule(
        self, op: Op[Any], delay: float, attempt: int = 0, backoff: tuple[float, ...] = BACKOFF
    ) -> None:
        """Run ``op`` in ``delay`` seconds (``attempt`` failures so far), retried by ``backoff``."""
        if attempt == 0 and self.refuse(self.pending):
            return
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle | None = None

        def due() -> None:
            if timer is not None:
                self._timers.pop(timer, None)
            task = loop.create_task(self._attempt(op, attempt, backoff))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        timer = loop.call_later(delay, due)
        self._timers[timer] = op

    async def _attempt(self, op: Op[Any], attempt: int, backoff: tuple[float, ...]) -> None:
        try:
            await self._backend.run(op)
        except BackendError as exc:
            delay = self.retry_in(op, attempt + 1, exc, backoff)
            if delay is not None:
                self.schedule(op, delay, attempt + 1, backoff)

    @property
    def pending(self) -> int:
        """Operations waiting or running."""
        return len(self._timers) + len(self._tasks)

    def drop(self) -> None:
        """Forget what is pending, counted as dropped: its event loop is closed."""
        if self.pending:
            self.stats.incr("deferred_dropped", self.pending)
        self._timers.clear()
        self._tasks.clear()

    async def close(self) -> None:
        """Run what is still waiting once, now; wait for running attempts; count failures."""
        waiting = list(self._timers.items())
        self._timers.clear()
        for timer, _ in waiting:
            timer.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for _, op in waiting:
            try:
                await self._backend.run(op)
            except BackendError:
                self.stats.incr("deferred_dropped")
