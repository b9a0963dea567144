"""One of a thing per event loop: what the async driver keeps for each loop that uses it.

A Redis connection pool, a lock, a future or a task belongs to the event loop it was made
on. A cache outlives loops: ``asyncio.run`` per script or job, pytest-asyncio's loop per
test, Starlette's ``TestClient`` without ``with`` (a loop per request). So the async driver
keeps its loop-bound parts in a :class:`PerLoop`: one state per running loop, made on the
loop's first use, and retired with it:

* **with the loop** - a guard (an async generator the loop knows of) is started on the
  loop; ``asyncio.run``, ``asyncio.Runner``, anyio and pytest-asyncio close such
  generators (``loop.shutdown_asyncgens()``) before they close the loop, so the state is
  retired *on* its loop: connections closed properly, nothing left for the collector;
* **found dead** - a loop closed without that (``loop.close()`` by hand) is noticed when
  another loop next uses the driver, or at close: its state is *abandoned*, its sockets
  closed without the dead loop's help (which would raise, or warn);
* **by close()** - the running loop's state is retired there, a loop running in another
  thread retires its own, an idle loop keeps its guard until it shuts down.

The hot path costs one ``asyncio.get_running_loop()`` and an identity test: the last
(loop, state) pair is kept.

Usage::

    clients = PerLoop(make=new_client, retire=close_client, abandon=drop_client)
    client = clients.get()          # inside a coroutine: this loop's client
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Final, Generic, TypeVar

__all__ = ["CLOSE_WAIT", "PerLoop"]

S = TypeVar("S")
logger = logging.getLogger("cachekit")
#: Seconds ``close()`` gives a loop running in another thread to retire its state.
CLOSE_WAIT: Final = 5.0
# Guards whose loop is idle (alive, not running) when the driver closes: kept alive here so
# that the loop's own shutdown still retires them (a loop only holds them weakly).
_PARKED: dict[int, AsyncGenerator[None, None]] = {}
_CLOSING: set[asyncio.Task[None]] = set()


class PerLoop(Generic[S]):
    """One ``S`` per running event loop, made lazily and retired with its loop.

    **Parameters:**

    * **make** - builds the state of a loop, on that loop, without I/O.
    * **retire** - closes a state on its own (running) loop; must not raise.
    * **abandon** - releases a state whose loop is closed, without it; must not raise.
    """

    __slots__ = ("_abandon", "_entries", "_last", "_lock", "_make", "_retire")

    def __init__(
        self,
        make: Callable[[], S],
        retire: Callable[[S], Awaitable[None]],
        abandon: Callable[[S], None],
    ) -> None:
        self._make = make
        self._retire = retire
        self._abandon = abandon
        self._lock = threading.Lock()
        self._entries: dict[asyncio.AbstractEventLoop, tuple[S, AsyncGenerator[None, None]]] = {}
        # The last (loop, state) pair looked up: one tuple, so threads never see it torn.
        self._last: tuple[asyncio.AbstractEventLoop | None, Any] = (None, None)

    def get(self) -> S:
        """The running loop's state (made now if this loop is new to it)."""
        loop = _current_loop()
        last = self._last
        if last[0] is loop:
            return last[1]  # type: ignore[no-any-return]
        return self._enter(loop)

    def states(self) -> list[S]:
        """Every live state (a snapshot, for introspection)."""
        with self._lock:
            return [state for state, _ in self._entries.values()]

    def __len__(self) -> int:
        return len(self._entries)

    def _enter(self, loop: asyncio.AbstractEventLoop) -> S:
        dead: list[S] = []
        with self._lock:
            entry = self._entries.get(loop)
            if entry is None:
                dead = self._sweep()
                state = self._make()
                guard = self._guard(loop, state)
                self._entries[loop] = (state, guard)
                _start(guard)
            else:
                state = entry[0]
            self._last = (loop, state)
        for old in dead:
            self._abandon(old)
        return state

    def _sweep(self) -> list[S]:
        """Take out the states of loops that closed without retiring them (lock held)."""
        closed = [loop for loop in self._entries if loop.is_closed()]
        if self._last[0] in closed:
            self._last = (None, None)
        return [self._entries.pop(loop)[0] for loop in closed]

    async def _guard(self, loop: asyncio.AbstractEventLoop, state: S) -> AsyncGenerator[None, None]:
        # Started on ``loop`` (which then knows of it, weakly); closed by the loop's
        # shutdown_asyncgens() or by close(): either way the state retires on its loop.
        try:
            yield
        finally:
            with self._lock:
                if self._entries.get(loop, (None,))[0] is state:
                    del self._entries[loop]
                if self._last[0] is loop:
                    self._last = (None, None)
            _PARKED.pop(id(state), None)
            await self._retire(state)

    async def aclose(self) -> None:
        """Retire every state: this loop's here, the others' as :meth:`close_sync` does."""
        here = asyncio.get_running_loop()
        for loop, state, guard in self._take():
            if loop is here:
                await guard.aclose()
            elif loop.is_running():
                future = asyncio.run_coroutine_threadsafe(_close(guard), loop)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.wrap_future(future), CLOSE_WAIT)
            else:
                self._leave(loop, state, guard)

    def close_sync(self) -> None:
        """Retire or release every state without a running loop of one's own.

        A closed loop's state is abandoned; a loop running in another thread retires its
        own (waited for up to :data:`CLOSE_WAIT`); an idle loop retires it when it shuts
        down (``asyncio.run`` and the like do).
        """
        here = _running_loop()
        for loop, state, guard in self._take():
            if loop.is_running() and loop is not here:
                future = asyncio.run_coroutine_threadsafe(_close(guard), loop)
                with contextlib.suppress(FutureTimeout, Exception):
                    future.result(CLOSE_WAIT)
            elif loop is here:  # called from sync code on the loop: retire it soon
                _PARKED[id(state)] = guard
                task = loop.create_task(_close(guard))
                _CLOSING.add(task)  # a loop holds its tasks weakly
                task.add_done_callback(_CLOSING.discard)
            else:
                self._leave(loop, state, guard)

    def _take(
        self,
    ) -> list[tuple[asyncio.AbstractEventLoop, S, AsyncGenerator[None, None]]]:
        with self._lock:
            entries = [(loop, state, guard) for loop, (state, guard) in self._entries.items()]
            self._entries.clear()
            self._last = (None, None)
        return entries

    def _leave(
        self, loop: asyncio.AbstractEventLoop, state: S, guard: AsyncGenerator[None, None]
    ) -> None:
        if loop.is_closed():
            self._abandon(state)
        else:
            _PARKED[id(state)] = guard  # the loop's own shutdown retires it


_current_loop = asyncio.get_running_loop  # one global lookup on the hot path


async def _close(guard: AsyncGenerator[None, None]) -> None:
    await guard.aclose()  # a coroutine, for run_coroutine_threadsafe and create_task


def _start(guard: AsyncGenerator[None, None]) -> None:
    """Run ``guard`` to its ``yield`` now, without suspending the caller."""
    step = guard.__anext__()  # the loop's first-iteration hook registers it here
    try:
        step.send(None)
    except StopIteration:
        return
    raise RuntimeError("a loop guard must not await before its yield")  # pragma: no cover


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
