"""The async guard's deadline without a per-call ``asyncio.timeout``: one timer per loop.

What ``asyncio.timeout`` guaranteed must still hold: a call is cut at its deadline and
fails as a timeout; a cancellation from anyone else stays a cancellation; the task is left
with no pending cancellation either way; every call in flight gets its own deadline; and a
slot freed by a call is handed on in order. Unit tests on fake backends (no timing bound).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from cachekit.backends.breaker import Breaker
from cachekit.backends.guard import AsyncGuardedBackend
from cachekit.backends.ops import Get, Op
from cachekit.exceptions import BackendTimeout
from cachekit.stats import Stats


class Fake:
    """An async backend whose every call awaits ``behaviour()``."""

    def __init__(self, behaviour: Callable[[], Awaitable[Any]]) -> None:
        self.behaviour = behaviour

    async def run(self, op: Op[Any]) -> Any:
        return await self.behaviour()

    async def close(self) -> None:
        return None


async def hang() -> Any:
    await asyncio.Event().wait()


def guarded(behaviour: Callable[[], Awaitable[Any]], **kw: Any) -> AsyncGuardedBackend:
    breaker = Breaker(failures=10**6)
    return AsyncGuardedBackend(Fake(behaviour), breaker, Stats(), **kw)


async def test_a_call_cut_at_its_deadline_leaves_its_task_uncancelled() -> None:
    backend = guarded(hang, deadline=0.05)
    with pytest.raises(BackendTimeout):
        await backend.run(Get("k"))
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0
    slots = backend._slots()
    assert slots.calls == {}
    assert slots.fired == set()
    assert await asyncio.wait_for(asyncio.sleep(0, "still cancellable"), 1) == "still cancellable"


async def test_every_call_in_flight_is_cut_at_its_own_deadline() -> None:
    backend = guarded(hang, deadline=0.05)
    results = await asyncio.gather(
        *(backend.run(Get(f"k{i}")) for i in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, BackendTimeout) for r in results)
    slots = backend._slots()
    assert slots.calls == {}
    assert slots.timer is None
    assert slots.free == 64  # every slot came back


async def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    started = asyncio.Event()

    async def wait() -> Any:
        started.set()
        await asyncio.Event().wait()

    backend = guarded(wait, deadline=10)
    call = asyncio.create_task(backend.run(Get("k")))
    await started.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    slots = backend._slots()
    assert slots.calls == {}
    assert slots.fired == set()
    assert slots.free == 64


async def test_a_call_that_ends_in_time_is_not_cancelled_later() -> None:
    backend = guarded(lambda: asyncio.sleep(0, b"v"), deadline=0.05)
    assert await backend.run(Get("k")) == b"v"
    await asyncio.sleep(0.1)  # past the deadline the timer was armed for
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0


async def test_a_freed_slot_goes_to_the_first_caller_waiting() -> None:
    gate = asyncio.Event()
    order: list[int] = []

    async def held() -> Any:
        await gate.wait()
        return b"v"

    backend = guarded(held, deadline=10, slots=1)

    async def call(i: int) -> None:
        await backend.run(Get(f"k{i}"))
        order.append(i)

    tasks = [asyncio.create_task(call(i)) for i in range(3)]
    for _ in range(5):
        await asyncio.sleep(0)  # all three are in: one holds the slot, two wait in line
    assert len(backend._slots().waiters) == 2
    gate.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]
    assert backend._slots().free == 1
