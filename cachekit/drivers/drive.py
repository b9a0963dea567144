"""The two drivers that perform what flows ask for: :class:`SyncDriver` and :class:`AsyncDriver`.

A driver drives a flow (:mod:`cachekit.flow.effects`): it runs backend operations on its
backend, calls the wrapped function for :data:`~cachekit.flow.effects.LOAD`, keeps the
process's coalesced reads and single flights (:mod:`cachekit.drivers.singleflight`),
registers wake-ups (:mod:`cachekit.drivers.notify`), and runs background rebuilds -
threads for the sync driver, tasks for the async one, both bounded in number,
deduplicated per key and finished at close. It decides nothing; the two drivers are
line-for-line the same loop, once with ``await``.

Usage::

    value = sync_face.drive(cached_read(ctx, policy, "k"), lambda: load(5))
    value = await async_face.drive(cached_read(ctx, policy, "k"), lambda: aload(5))
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from cachekit.backends.base import AsyncBackend, SyncBackend
from cachekit.backends.perloop import abandon
from cachekit.drivers.deferred import AsyncDeferred, SyncDeferred
from cachekit.drivers.loops import PerLoop
from cachekit.drivers.notify import READY_WAIT, AsyncWaiter, Listener, SyncWaiter, Waiters
from cachekit.drivers.singleflight import (
    WRITES,
    AsyncFlights,
    AsyncReads,
    SyncFlights,
    SyncReads,
)
from cachekit.drivers.watchdog import AsyncWatchdog, SyncWatchdog
from cachekit.exceptions import BackendError
from cachekit.flow.effects import (
    CONTROL,
    LOAD,
    Effect,
    Flow,
    Forget,
    Hold,
    Join,
    Later,
    Listen,
    Read,
    Spawn,
    Wait,
    Watch,
)
from cachekit.stats import LogOnce, Stats

__all__ = ["AsyncDriver", "SyncDriver"]

T = TypeVar("T")
DEFAULT_BACKGROUND = 32  # rebuilds in flight per driver; more stale reads just serve stale
_QUIET_LIMIT = 4096


def _no_load() -> Any:
    raise TypeError("this flow has no loader")


async def _no_async_load() -> Any:
    raise TypeError("this flow has no loader")


class _Shared:
    """What both drivers hold: waiters, listener, counters, the background bookkeeping."""

    def __init__(
        self,
        waiters: Waiters,
        listener: Listener | None,
        stats: Stats,
        log: LogOnce,
        background: int,
    ) -> None:
        self.waiters = waiters
        self.listener = listener
        self.stats = stats
        self.log = log
        self.background = background
        self.rebuilding: set[str] = set()
        self.quiet: dict[str, float] = {}  # key -> monotonic time before which not to try
        self.lock = threading.Lock()

    def claim(self, key: str) -> bool:
        """Whether a background rebuild of ``key`` may start now in this process."""
        with self.lock:
            if key in self.rebuilding or len(self.rebuilding) >= self.background:
                return False
            if self.quiet.get(key, 0.0) > time.monotonic():
                return False  # another process holds its lease: don't ask again yet
            self.rebuilding.add(key)
            return True

    def done(self, key: str, quiet_for: object) -> None:
        """A rebuild ended; ``quiet_for`` seconds (if a float) before trying ``key`` again."""
        with self.lock:
            self.rebuilding.discard(key)
            now = time.monotonic()
            if isinstance(quiet_for, float) and quiet_for > 0:
                if len(self.quiet) >= _QUIET_LIMIT:
                    self.quiet = {k: t for k, t in self.quiet.items() if t > now}
                self.quiet[key] = now + quiet_for
            else:
                self.quiet.pop(key, None)

    def renewal_failed(self, exc: BackendError) -> None:
        self.log.warning(("renew", type(exc)), "cachekit: lease renewal failed (%s)", exc)

    def failed(self, key: str, exc: BaseException) -> None:
        self.log.warning(("background", type(exc)), "cachekit: background work failed: %r", exc)


class SyncDriver(_Shared):
    """Drives flows with blocking calls; background rebuilds run on a small thread pool."""

    def __init__(
        self,
        backend: SyncBackend,
        waiters: Waiters,
        listener: Listener | None,
        stats: Stats,
        log: LogOnce,
        background: int = DEFAULT_BACKGROUND,
    ) -> None:
        super().__init__(waiters, listener, stats, log, background)
        self.backend = backend
        self.reads = SyncReads(stats)
        self.flights = SyncFlights(stats)
        self.deferred = SyncDeferred(backend, stats, log)
        self._pool: ThreadPoolExecutor | None = None

    def hold(
        self, key: str, token: bytes, ttl: float, probation: float | None = None
    ) -> SyncWatchdog:
        """Keep the lease ``key`` alive until the returned watchdog is stopped."""
        return SyncWatchdog(self.backend, key, token, ttl, self.renewal_failed, probation)

    def drive(self, flow: Flow[T], load: Callable[[], Any] = _no_load) -> T:
        """Run ``flow`` to completion and return its result."""
        # The fast path of a flow that ends after one read (a hit): nothing is allocated
        # for waiters or watchdogs, which only the other control effects create.
        try:
            effect = flow.send(None)
            kind = type(effect)
            if kind is not Read and (kind in CONTROL or effect is LOAD):
                return self._drive(flow, load, effect)
            try:
                if isinstance(effect, Read):
                    reply = self.reads.get(effect.key, self.backend.run)
                else:
                    reply = self.backend.run(effect)  # type: ignore[arg-type]
            except BaseException as exc:  # the flow decides what it can handle
                effect = flow.throw(exc)
            else:
                effect = flow.send(reply)
        except StopIteration as stop:
            result: T = stop.value
            return result
        return self._drive(flow, load, effect)

    def _drive(self, flow: Flow[T], load: Callable[[], Any], effect: Effect) -> T:
        """Perform ``effect`` (the flow's pending one), then the rest of the flow."""
        watched: list[tuple[str, SyncWaiter]] = []
        held: list[SyncWatchdog] = []
        try:
            while True:
                error: BaseException | None = None
                try:
                    if type(effect) in CONTROL:
                        reply = self._control(effect, load, watched, held)
                    elif effect is LOAD:
                        reply = load()
                    else:
                        reply = self.backend.run(effect)  # type: ignore[arg-type]
                except BaseException as exc:  # the flow decides what it can handle
                    reply, error = None, exc
                try:
                    effect = flow.send(reply) if error is None else flow.throw(error)
                except StopIteration as stop:
                    result: T = stop.value
                    return result
        finally:
            for dog in held:
                dog.stop()
            for key, waiter in watched:
                self.waiters.discard(key, waiter)

    def _control(
        self,
        effect: Effect,
        load: Callable[[], Any],
        watched: list[tuple[str, SyncWaiter]],
        held: list[SyncWatchdog],
    ) -> Any:
        if isinstance(effect, Read):
            return self.reads.get(effect.key, self.backend.run)
        if isinstance(effect, Join):
            return self.flights.run(effect.key, lambda: self.drive(effect.flow, load), effect.reuse)
        if isinstance(effect, Wait):
            return effect.handle.wait(effect.timeout)
        if isinstance(effect, Hold):
            held.append(self.hold(effect.key, effect.token, effect.ttl, effect.probation))
            return None
        if isinstance(effect, Later):
            return self.deferred.schedule(effect.op, effect.delay, backoff=effect.backoff)
        if isinstance(effect, Forget):
            WRITES.wrote(effect.key)
            return self.flights.forget(effect.key) if effect.flights else None
        if isinstance(effect, Listen):
            return self._listen()
        if isinstance(effect, Watch):
            self._listen()
            waiter = SyncWaiter()
            self.waiters.add(effect.key, waiter)
            watched.append((effect.key, waiter))
            return waiter
        assert isinstance(effect, Spawn)
        if not self.claim(effect.key):
            effect.flow.close()
            return None
        with self.lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(4, thread_name_prefix="cachekit-rebuild")
            self._pool.submit(self._background, effect.key, effect.flow, load)
        return None

    def _listen(self) -> None:
        if self.listener is not None and self.listener.ensure_started():
            self.listener.ready.wait(READY_WAIT)  # once: the first waiters must not miss

    def _background(self, key: str, flow: Flow[Any], load: Callable[[], Any]) -> None:
        quiet_for: object = None
        try:
            quiet_for = self.drive(flow, load)
        except Exception as exc:
            self.failed(key, exc)
        finally:
            self.done(key, quiet_for)

    def close(self) -> None:
        """Finish running rebuilds, drop queued ones, close the backend."""
        with self.lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        self.deferred.close()
        self.backend.close()


class _Loop:
    """The async driver's share of one event loop: its backend (client, pool) and the
    bookkeeping that is bound to the loop (single flights, deferred work, rebuild tasks)."""

    __slots__ = ("backend", "deferred", "flights", "reads", "tasks")

    def __init__(self, backend: AsyncBackend, stats: Stats, log: LogOnce) -> None:
        self.backend = backend
        self.reads = AsyncReads(stats)
        self.flights = AsyncFlights(stats)
        self.deferred = AsyncDeferred(backend, stats, log)
        self.tasks: dict[asyncio.Task[None], str] = {}  # rebuild -> its key


class AsyncDriver(_Shared):
    """Drives flows on the event loop; background rebuilds are tracked tasks.

    Everything bound to a loop is kept per event loop (:mod:`cachekit.drivers.loops`): the first
    loop to use the driver gets ``backend``, every other one a backend of its own from
    ``connect`` (``None``: ``backend`` is not bound to a loop and is shared), each with the
    same pool bounds, closed with its loop or by :meth:`close`.
    """

    def __init__(
        self,
        backend: AsyncBackend,
        waiters: Waiters,
        listener: Listener | None,
        stats: Stats,
        log: LogOnce,
        background: int = DEFAULT_BACKGROUND,
        *,
        connect: Callable[[], AsyncBackend] | None = None,
    ) -> None:
        super().__init__(waiters, listener, stats, log, background)
        self._backend: AsyncBackend | None = backend  # the first loop's, until it takes it
        self._shared = backend
        self._connect = connect
        self._loops: PerLoop[_Loop] = PerLoop(self._new_loop, self._retire, self._abandon)

    @property
    def backend(self) -> AsyncBackend:
        """The running loop's backend (outside a loop: the one the first loop gets)."""
        try:
            return self._loops.get().backend
        except RuntimeError:  # no running loop: for introspection
            return self._backend or self._shared

    @property
    def _tasks(self) -> set[asyncio.Task[None]]:
        """The rebuild tasks running on every loop."""
        return {task for state in self._loops.states() for task in state.tasks}

    @property
    def loops(self) -> int:
        """How many event loops hold a client of this driver now."""
        return len(self._loops)

    def _new_loop(self) -> _Loop:
        backend = self._shared
        if self._connect is not None:
            backend, self._backend = self._backend or self._connect(), None
        return _Loop(backend, self.stats, self.log)

    async def _retire(self, state: _Loop) -> None:
        try:
            tasks = list(state.tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await state.deferred.close()
            if self._connect is not None:
                await state.backend.close()
        except Exception as exc:  # at a loop's shutdown: report, never raise
            self.log.warning(("retire", type(exc)), "cachekit: closing a loop's client: %r", exc)

    def _abandon(self, state: _Loop) -> None:
        for key in state.tasks.values():  # rebuilds that died with their loop
            self.done(key, None)
        state.tasks.clear()
        state.deferred.drop()
        if self._connect is not None:
            abandon(state.backend)

    def hold(
        self, key: str, token: bytes, ttl: float, probation: float | None = None
    ) -> AsyncWatchdog:
        """Keep the lease ``key`` alive until the returned watchdog is stopped."""
        backend = self._loops.get().backend
        return AsyncWatchdog(backend, key, token, ttl, self.renewal_failed, probation)

    async def drive(self, flow: Flow[T], load: Callable[[], Awaitable[Any]] = _no_async_load) -> T:
        """Run ``flow`` to completion and return its result."""
        state = self._loops.get()
        # The fast path of a flow that ends after one backend operation (a hit), as in
        # SyncDriver.drive.
        try:
            effect = flow.send(None)
            kind = type(effect)
            if kind is not Read and (kind in CONTROL or effect is LOAD):
                return await self._drive(state, flow, load, effect)
            try:
                if isinstance(effect, Read):
                    reply = await state.reads.get(effect.key, state.backend.run)
                else:
                    reply = await state.backend.run(effect)  # type: ignore[arg-type]
            except BaseException as exc:  # the flow decides what it can handle
                effect = flow.throw(exc)
            else:
                effect = flow.send(reply)
        except StopIteration as stop:
            result: T = stop.value
            return result
        return await self._drive(state, flow, load, effect)

    async def _drive(
        self, state: _Loop, flow: Flow[T], load: Callable[[], Awaitable[Any]], effect: Effect
    ) -> T:
        """Perform ``effect`` (the flow's pending one), then the rest of the flow."""
        run = state.backend.run
        watched: list[tuple[str, AsyncWaiter]] = []
        held: list[AsyncWatchdog] = []
        try:
            while True:
                error: BaseException | None = None
                try:
                    if type(effect) in CONTROL:
                        reply = await self._control(state, effect, load, watched, held)
                    elif effect is LOAD:
                        reply = await load()
                    else:
                        reply = await run(effect)  # type: ignore[arg-type]
                except BaseException as exc:  # the flow decides what it can handle
                    reply, error = None, exc
                try:
                    effect = flow.send(reply) if error is None else flow.throw(error)
                except StopIteration as stop:
                    result: T = stop.value
                    return result
        finally:
            for dog in held:
                dog.stop()
            for key, waiter in watched:
                self.waiters.discard(key, waiter)

    async def _control(
        self,
        state: _Loop,
        effect: Effect,
        load: Callable[[], Awaitable[Any]],
        watched: list[tuple[str, AsyncWaiter]],
        held: list[AsyncWatchdog],
    ) -> Any:
        if isinstance(effect, Read):
            return await state.reads.get(effect.key, state.backend.run)
        if isinstance(effect, Join):
            return await state.flights.run(
                effect.key, lambda: self.drive(effect.flow, load), effect.reuse
            )
        if isinstance(effect, Wait):
            return await effect.handle.wait(effect.timeout)
        if isinstance(effect, Hold):
            dog = AsyncWatchdog(
                state.backend,
                effect.key,
                effect.token,
                effect.ttl,
                self.renewal_failed,
                effect.probation,
            )
            held.append(dog)
            return None
        if isinstance(effect, Later):
            return state.deferred.schedule(effect.op, effect.delay, backoff=effect.backoff)
        if isinstance(effect, Forget):
            WRITES.wrote(effect.key)
            return state.flights.forget(effect.key) if effect.flights else None
        if isinstance(effect, Listen):
            return await self._listen()
        if isinstance(effect, Watch):
            await self._listen()
            waiter = AsyncWaiter()
            self.waiters.add(effect.key, waiter)
            watched.append((effect.key, waiter))
            return waiter
        assert isinstance(effect, Spawn)
        if not self.claim(effect.key):
            effect.flow.close()
            return None
        task = asyncio.get_running_loop().create_task(
            self._background(effect.key, effect.flow, load), name=f"cachekit-rebuild {effect.key}"
        )
        state.tasks[task] = effect.key
        task.add_done_callback(lambda done: state.tasks.pop(done, None))
        return None

    async def _listen(self) -> None:
        if self.listener is not None and self.listener.ensure_started():
            await asyncio.to_thread(self.listener.ready.wait, READY_WAIT)

    async def _background(
        self, key: str, flow: Flow[Any], load: Callable[[], Awaitable[Any]]
    ) -> None:
        quiet_for: object = None
        try:
            quiet_for = await self.drive(flow, load)
        except Exception as exc:
            self.failed(key, exc)
        finally:
            self.done(key, quiet_for)

    async def close(self) -> None:
        """Retire every loop's client (rebuilds cancelled, deferred work run once); the
        driver may be used again after, with new clients."""
        await self._loops.aclose()
        await self._close_unused()

    def close_sync(self) -> None:
        """:meth:`close` from sync code: a closed loop's client is closed here, quietly; a
        loop running in another thread closes its own; an idle loop at its shutdown."""
        self._loops.close_sync()
        backend, self._backend = self._backend, None
        if backend is not None and self._connect is not None:
            abandon(backend)  # never used by a loop: it holds no connection

    async def _close_unused(self) -> None:
        backend, self._backend = self._backend, None
        if self._connect is None:
            await self._shared.close()
        elif backend is not None:
            await backend.close()
