"""The circuit breaker, the backend guards, and the cache in degraded mode (issue 8).

Covered, fast and on a :class:`~cachekit.testing.FakeClock`: the breaker opens after
exactly N consecutive failures, a success resets the streak, open refuses, half-open lets
one probe through, the probe's outcome closes or re-opens for a new cool-down,
``release()`` frees the probe slot, every transition is counted and logged once (and
refusals not at all), and threads hammering it never get two probes out at once.

The guards over fake backends: an open breaker refuses without calling the backend, an
error *answer* is not a failure, no pool slot in time is a timeout that does not charge
the breaker, the async deadline cuts a slow backend, the sync deadline is published for
the connections to read, and half-open sends a single probe.

On a private server that is stopped: decorated functions keep answering right, one load
per key at a time in a process, an invalidation is queued and applied after recovery,
locks fail closed (or open when asked), and sessions and the response cache answer 200
while the breaker is open. The chaos scenarios are in ``test_chaos.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cachekit import Cache
from cachekit.backends.breaker import Breaker
from cachekit.backends.guard import (
    DEFAULT_DEADLINE,
    AsyncGuardedBackend,
    SyncGuardedBackend,
    time_left,
)
from cachekit.backends.ops import Get, Op
from cachekit.drivers.notify import READY_WAIT
from cachekit.exceptions import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    CacheKitError,
    CircuitOpen,
    ConfigurationError,
)
from cachekit.middleware import ResponseCacheMiddleware
from cachekit.sessions import RedisSessionStore, SessionMiddleware, load_session
from cachekit.stats import Stats
from cachekit.testing import FakeClock
from tests.support.response_cache_apps import client_for
from tests.support.servers import PrivateServer

COOLDOWN = 2.0
# The real-time guard tests below assert no upper bound on elapsed time (a loaded 2-core
# box delays any timer): what proves a call did not wait is that it returned while what
# it would have waited for is still held, and lower bounds (a sleep never ends early).


class Transitions:
    """The breaker's ``on_transition`` callback: the counter names, in order."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(self, name: str) -> None:
        self.names.append(name)


def make_breaker(failures: int = 3) -> tuple[Breaker, FakeClock, Transitions]:
    clock, seen = FakeClock(), Transitions()
    breaker = Breaker(failures=failures, cooldown=COOLDOWN, clock=clock, on_transition=seen)
    return breaker, clock, seen


def state(breaker: Breaker) -> str:
    """The breaker's state, read afresh (a call, so type checkers do not narrow it)."""
    return breaker.state


def open_breaker(breaker: Breaker, failures: int = 3) -> None:
    for _ in range(failures):
        assert breaker.allow()
        breaker.failure()
    assert state(breaker) == "open"


# --------------------------------------------------------------------------- the breaker


@pytest.mark.parametrize("failures", [1, 2, 5])
def test_it_opens_after_exactly_n_consecutive_failures(failures: int) -> None:
    breaker, _, seen = make_breaker(failures)
    for _ in range(failures - 1):
        assert breaker.allow()
        breaker.failure()
        assert state(breaker) == "closed"
    assert breaker.allow()
    breaker.failure()
    assert state(breaker) == "open"
    assert not breaker.allow()
    assert seen.names == ["breaker_opened"]


def test_a_success_resets_the_failure_streak() -> None:
    breaker, _, seen = make_breaker(3)
    for outcome in ["failure", "failure", "success", "failure", "failure"]:
        assert breaker.allow()
        getattr(breaker, outcome)()
    assert state(breaker) == "closed"  # never three in a row
    breaker.failure()
    assert state(breaker) == "open"
    assert seen.names == ["breaker_opened"]


def test_a_handshake_heard_proves_the_server_alive_but_is_no_calls_outcome() -> None:
    breaker, clock, _ = make_breaker(3)
    assert not breaker.answered_within(1.0)
    breaker.heard()
    assert breaker.answered_within(1.0)
    clock.advance(1.5)
    assert not breaker.answered_within(1.0)
    for _ in range(2):
        assert breaker.allow()
        breaker.failure()
    breaker.heard()  # does not end the streak: only a call's answer does
    assert breaker.allow()
    breaker.failure()
    assert state(breaker) == "open"
    clock.advance(COOLDOWN)
    assert breaker.allow()  # the probe
    breaker.heard()  # nor does it close a half-open breaker
    assert state(breaker) == "half_open"


def test_open_refuses_for_the_whole_cooldown() -> None:
    breaker, clock, seen = make_breaker()
    open_breaker(breaker)
    for _ in range(100):
        assert not breaker.allow()
    clock.advance(COOLDOWN - 0.001)
    assert not breaker.allow()
    assert state(breaker) == "open"
    assert seen.names == ["breaker_opened"]


def test_half_open_lets_exactly_one_probe_through() -> None:
    breaker, clock, seen = make_breaker()
    open_breaker(breaker)
    clock.advance(COOLDOWN)
    assert breaker.allow()  # the probe
    assert state(breaker) == "half_open"
    assert [breaker.allow() for _ in range(50)] == [False] * 50
    clock.advance(COOLDOWN * 10)  # however long the probe takes
    assert not breaker.allow()
    assert seen.names == ["breaker_opened", "breaker_half_opened"]


def test_a_successful_probe_closes_the_breaker() -> None:
    breaker, clock, seen = make_breaker()
    open_breaker(breaker)
    clock.advance(COOLDOWN)
    assert breaker.allow()
    breaker.success()
    assert state(breaker) == "closed"
    assert all(breaker.allow() for _ in range(10))
    assert seen.names == ["breaker_opened", "breaker_half_opened", "breaker_closed"]


def test_a_failed_probe_reopens_for_a_whole_new_cooldown() -> None:
    breaker, clock, seen = make_breaker()
    open_breaker(breaker)
    clock.advance(COOLDOWN)
    assert breaker.allow()
    clock.advance(0.5)  # the probe took a while, then failed
    breaker.failure()
    assert state(breaker) == "open"
    clock.advance(COOLDOWN - 0.1)  # past the first cool-down's end, not the new one's
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.allow()
    assert state(breaker) == "half_open"
    assert seen.names == [
        "breaker_opened",
        "breaker_half_opened",
        "breaker_opened",
        "breaker_half_opened",
    ]


def test_release_frees_the_probe_slot() -> None:
    """A probe that never reached the server (no pool slot) lets the next caller probe."""
    breaker, clock, seen = make_breaker()
    open_breaker(breaker)
    clock.advance(COOLDOWN)
    assert breaker.allow()
    assert not breaker.allow()
    breaker.release()
    assert state(breaker) == "half_open"
    assert breaker.allow()  # the next probe
    assert not breaker.allow()
    assert seen.names == ["breaker_opened", "breaker_half_opened"]


def test_release_and_late_reports_while_closed_or_open_change_nothing() -> None:
    breaker, _, seen = make_breaker()
    breaker.release()
    assert state(breaker) == "closed"
    open_breaker(breaker)
    breaker.failure()  # a call that started before the breaker opened
    breaker.release()
    assert state(breaker) == "open"
    assert seen.names == ["breaker_opened"]


def test_each_transition_is_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cachekit")
    stats = Stats()
    clock = FakeClock()
    breaker = Breaker(
        failures=2, cooldown=COOLDOWN, clock=clock, on_transition=stats.incr, name="db:6379"
    )
    open_breaker(breaker, 2)
    for _ in range(1000):  # refused calls: no log line, no count
        assert not breaker.allow()
    clock.advance(COOLDOWN)
    assert breaker.allow()
    for _ in range(1000):
        assert not breaker.allow()
    breaker.failure()  # the probe fails
    clock.advance(COOLDOWN)
    assert breaker.allow()
    breaker.success()  # the next one succeeds
    for _ in range(1000):
        assert breaker.allow()
        breaker.success()
    counts = {k: v for k, v in stats.snapshot().items() if v}
    assert counts == {"breaker_opened": 2, "breaker_half_opened": 2, "breaker_closed": 1}
    records = [r for r in caplog.records if r.name == "cachekit"]
    assert [(r.levelname, r.getMessage()) for r in records] == [
        ("WARNING", "cachekit: circuit breaker for db:6379 opened: Redis is not called for 2.0s"),
        ("INFO", "cachekit: circuit breaker for db:6379 half-open: one probe"),
        ("WARNING", "cachekit: circuit breaker for db:6379 opened: Redis is not called for 2.0s"),
        ("INFO", "cachekit: circuit breaker for db:6379 half-open: one probe"),
        ("WARNING", "cachekit: circuit breaker for db:6379 closed: Redis is back"),
    ]
    assert all(r.exc_info is None for r in records)  # one line each, never a traceback


@pytest.mark.parametrize(("failures", "cooldown"), [(0, 1.0), (-1, 1.0), (3, 0.0), (3, -2.0)])
def test_nonsense_settings_are_refused(failures: int, cooldown: float) -> None:
    with pytest.raises(ConfigurationError):
        Breaker(failures=failures, cooldown=cooldown)


def test_threads_hammering_it_never_get_two_probes_out_at_once() -> None:
    """16 threads ask, hold a little, report failure or release, while the clock runs."""
    breaker, clock, seen = make_breaker(failures=2)
    open_breaker(breaker, 2)  # from here every call let through is a probe (none succeeds)
    gauge_lock = threading.Lock()
    out = 0
    most = 0
    probes = 0
    start = threading.Barrier(16)

    def hammer(seed: int) -> None:
        nonlocal out, most, probes
        rng = random.Random(seed)
        start.wait()
        # Until enough probes went out, however the scheduler interleaves the threads (a
        # thread descheduled while its probe is out holds every other one off meanwhile).
        for _ in range(200_000):
            with gauge_lock:
                if probes >= 40:
                    return
            clock.advance(rng.uniform(0, COOLDOWN / 20))
            ticket = breaker.allow()
            if not ticket:
                continue
            with gauge_lock:
                out += 1
                most = max(most, out)
                probes += 1
            time.sleep(0)  # let the others ask while this probe is out
            with gauge_lock:
                out -= 1
            breaker.failure(ticket) if rng.random() < 0.7 else breaker.release(ticket)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert probes >= 40  # the hammer did reach half-open many times
    assert most == 1
    assert state(breaker) in ("open", "half_open")
    assert "breaker_closed" not in seen.names


def test_threads_hammering_allow_failure_success_follow_the_state_machine() -> None:
    """Any mix of outcomes from any number of threads: every transition is a legal one."""
    breaker, clock, seen = make_breaker(failures=3)
    legal = {
        ("closed", "breaker_opened"): "open",
        ("open", "breaker_half_opened"): "half_open",
        ("half_open", "breaker_opened"): "open",
        ("half_open", "breaker_closed"): "closed",
    }

    def hammer(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(3000):
            clock.advance(rng.uniform(0, COOLDOWN / 10))
            if ticket := breaker.allow():
                breaker.failure(ticket) if rng.random() < 0.6 else breaker.success(ticket)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    state = "closed"
    for name in seen.names:  # on_transition runs under the breaker's lock: in order
        assert (state, name) in legal, (state, name)
        state = legal[(state, name)]
    assert state == breaker.state
    assert {"breaker_opened", "breaker_half_opened", "breaker_closed"} <= set(seen.names)


def test_a_late_report_from_before_the_opening_does_not_free_the_probe_slot() -> None:
    """A call let through while closed reports failure only once the breaker is half-open
    (it outlived the cool-down, e.g. ``deadline`` >= ``breaker_cooldown``): that is not
    the probe's outcome, so a second probe must not go out while the first one is."""
    breaker, clock, _ = make_breaker(failures=2)
    slow = breaker.allow()  # a slow call, let through while closed
    assert slow
    open_breaker(breaker, 2)  # the others' failures open the breaker
    clock.advance(COOLDOWN)
    assert breaker.allow()  # the probe goes out
    breaker.failure(slow)  # ... and the slow call's late failure comes in
    clock.advance(COOLDOWN)
    assert not breaker.allow(), "a second probe went out while the first is still out"


# --------------------------------------------------------------------------- the guards


class FakeSync:
    """A sync backend whose every call runs ``behaviour`` (and is counted)."""

    def __init__(self, behaviour: Callable[[], Any] = lambda: b"v") -> None:
        self.behaviour = behaviour
        self.calls = 0

    def run(self, op: Op[Any]) -> Any:
        self.calls += 1
        return self.behaviour()

    def close(self) -> None:
        return None


class FakeAsync:
    """An async backend whose every call awaits ``behaviour()`` (and is counted)."""

    def __init__(self, behaviour: Callable[[], Any]) -> None:
        self.behaviour = behaviour
        self.calls = 0

    async def run(self, op: Op[Any]) -> Any:
        self.calls += 1
        return await self.behaviour()

    async def close(self) -> None:
        return None


def raises(exc: BaseException) -> Callable[[], Any]:
    def behaviour() -> Any:
        raise exc

    return behaviour


def guarded(
    inner: FakeSync, *, failures: int = 2, deadline: float = 0.25, slots: int = 8
) -> tuple[SyncGuardedBackend, Breaker, Stats]:
    stats = Stats()
    breaker = Breaker(failures=failures, cooldown=COOLDOWN, on_transition=stats.incr)
    return SyncGuardedBackend(inner, breaker, stats, deadline=deadline, slots=slots), breaker, stats


def aguarded(
    inner: FakeAsync, *, failures: int = 2, deadline: float = 0.25, slots: int = 8
) -> tuple[AsyncGuardedBackend, Breaker, Stats]:
    stats = Stats()
    breaker = Breaker(failures=failures, cooldown=COOLDOWN, on_transition=stats.incr)
    backend = AsyncGuardedBackend(inner, breaker, stats, deadline=deadline, slots=slots)
    return backend, breaker, stats


def test_an_open_breaker_refuses_without_calling_the_backend() -> None:
    inner = FakeSync(raises(BackendUnavailable("connection refused")))
    backend, breaker, stats = guarded(inner, failures=2)
    for _ in range(2):
        with pytest.raises(BackendUnavailable):
            backend.run(Get("k"))
    assert breaker.state == "open"
    for _ in range(10):
        with pytest.raises(CircuitOpen):
            backend.run(Get("k"))
    assert inner.calls == 2
    assert stats.snapshot()["breaker_rejects"] == 10


async def test_an_open_breaker_refuses_async_calls_without_calling_the_backend() -> None:
    async def refused() -> Any:
        raise BackendUnavailable("connection refused")

    inner = FakeAsync(refused)
    backend, breaker, stats = aguarded(inner, failures=2)
    for _ in range(2):
        with pytest.raises(BackendUnavailable):
            await backend.run(Get("k"))
    assert state(breaker) == "open"
    for _ in range(10):
        with pytest.raises(CircuitOpen):
            await backend.run(Get("k"))
    assert inner.calls == 2
    assert stats.snapshot()["breaker_rejects"] == 10


def test_an_error_answer_is_not_a_failure_and_ends_a_streak() -> None:
    """``OOM command not allowed``: the server is alive, so the breaker stays closed."""
    answer = BackendError("OutOfMemoryError: command not allowed")
    inner = FakeSync(raises(answer))
    backend, breaker, stats = guarded(inner, failures=2)
    for _ in range(10):
        with pytest.raises(BackendError) as info:
            backend.run(Get("k"))
        assert not isinstance(info.value, BackendUnavailable)
    assert breaker.state == "closed"
    inner.behaviour = raises(BackendUnavailable("reset"))
    with pytest.raises(BackendUnavailable):
        backend.run(Get("k"))
    inner.behaviour = raises(answer)
    with pytest.raises(BackendError):
        backend.run(Get("k"))
    inner.behaviour = raises(BackendUnavailable("reset"))
    with pytest.raises(BackendUnavailable):
        backend.run(Get("k"))
    assert breaker.state == "closed"  # the answer in between ended the streak
    assert stats.snapshot()["breaker_opened"] == 0


def test_no_pool_slot_in_time_is_a_timeout_that_does_not_charge_the_breaker() -> None:
    holding, done = threading.Event(), threading.Event()

    def hold() -> bytes:
        holding.set()
        done.wait(5)
        return b"v"

    inner = FakeSync(hold)
    backend, breaker, stats = guarded(inner, failures=1, deadline=0.1, slots=1)
    holder = threading.Thread(target=backend.run, args=(Get("k"),))
    holder.start()
    try:
        assert holding.wait(5)
        began = time.monotonic()
        with pytest.raises(BackendTimeout):
            backend.run(Get("k"))
        waited = time.monotonic() - began
        assert not done.is_set()  # returned while the slot was still held: it did not queue
    finally:
        done.set()
        holder.join(5)
    assert waited >= 0.1  # it did wait its budget for a slot
    assert inner.calls == 1  # the second call never reached the backend
    assert stats.snapshot()["pool_exhausted"] == 1
    assert breaker.state == "closed"  # failures=1: one charge would have opened it


async def test_no_async_pool_slot_in_time_is_a_timeout_that_does_not_charge_the_breaker() -> None:
    async def never() -> None:
        raise AssertionError("the backend was called")

    inner = FakeAsync(never)
    backend, breaker, stats = aguarded(inner, failures=1, deadline=0.1, slots=1)
    # An operation in flight holds the only slot for longer than anyone's budget (taken
    # by hand: a real one would itself be cut at the deadline, and charged for it).
    slot = backend._slots()
    await slot.acquire()
    began = time.monotonic()
    try:
        with pytest.raises(BackendTimeout):  # returned although the slot is still taken
            await backend.run(Get("k"))
        waited = time.monotonic() - began
    finally:
        slot.release()
    assert waited >= 0.1
    assert inner.calls == 0
    assert stats.snapshot()["pool_exhausted"] == 1
    assert breaker.state == "closed"


async def test_a_slow_async_backend_is_cut_at_the_deadline_and_counted() -> None:
    async def hang() -> Any:
        await asyncio.Event().wait()  # never answers: only the deadline ends the call

    backend, breaker, stats = aguarded(FakeAsync(hang), failures=1, deadline=0.1)
    with pytest.raises(BackendTimeout):
        await backend.run(Get("k"))
    assert stats.snapshot()["deadline_exceeded"] == 1
    assert breaker.state == "open"  # a timeout is a failure to reach the server


def test_the_sync_guard_publishes_its_deadline_to_the_connections() -> None:
    left: list[float | None] = []
    backend, _, _ = guarded(FakeSync(lambda: left.append(time_left())), deadline=0.2)
    assert time_left() is None  # outside a guarded call: no budget
    backend.run(Get("k"))
    assert time_left() is None
    assert left[0] is not None
    assert 0.15 < left[0] <= 0.2


def test_a_half_open_guard_sends_one_probe_and_refuses_the_others() -> None:
    clock, stats = FakeClock(), Stats()
    breaker = Breaker(failures=1, cooldown=COOLDOWN, clock=clock, on_transition=stats.incr)
    probing, answer = threading.Event(), threading.Event()
    fail = True

    def behaviour() -> bytes:
        if fail:
            raise BackendUnavailable("refused")
        probing.set()
        answer.wait(5)
        return b"v"

    inner = FakeSync(behaviour)
    backend = SyncGuardedBackend(inner, breaker, stats, deadline=0.25, slots=8)
    with pytest.raises(BackendUnavailable):
        backend.run(Get("k"))
    clock.advance(COOLDOWN)
    fail = False
    results: list[bytes | None] = []
    probe = threading.Thread(target=lambda: results.append(backend.run(Get("k"))))
    probe.start()
    try:
        assert probing.wait(5)
        for _ in range(5):
            with pytest.raises(CircuitOpen):
                backend.run(Get("k"))
        assert inner.calls == 2  # the failure and the probe, nothing else
    finally:
        answer.set()
        probe.join(5)
    assert results == [b"v"]
    assert breaker.state == "closed"
    assert backend.run(Get("k")) == b"v"


def test_the_sync_deadline_includes_the_wait_for_a_pool_slot() -> None:
    """One budget per operation, slot wait included (as on the async face): a caller who
    waited 150 ms for a slot has 50 ms of a 200 ms budget left for its reply, not 200."""
    holding, started = threading.Event(), threading.Event()
    budgets: list[float | None] = []

    def behaviour() -> bytes:
        if not started.is_set():  # the first call holds the only slot for 150 ms
            started.set()
            holding.set()
            time.sleep(0.15)
            return b"v"
        left = time_left()  # a read of a server that never answers, as _Budgeted bounds it
        budgets.append(left)
        time.sleep(max(0.0, left if left is not None else 1.0))
        raise BackendTimeout("no reply")

    backend, _, _ = guarded(FakeSync(behaviour), deadline=0.2, slots=1, failures=100)
    holder = threading.Thread(target=backend.run, args=(Get("k"),))
    holder.start()
    assert holding.wait(5)
    with pytest.raises(BackendTimeout):
        backend.run(Get("k"))
    holder.join(5)
    # It waited at least 150 ms for its slot (a sleep never ends early), so at most 50 ms
    # of its budget were left for the reply; load can only leave it less.
    [left] = budgets
    assert left is not None
    assert left <= 0.2 - 0.15, f"{left:.3f} s left for the reply after the slot wait"


async def test_the_async_deadline_holds_when_the_backend_swallows_a_cancellation() -> None:
    """redis-py 8.1 on Python 3.11 sends with ``asyncio.wait_for``, which returns the
    finished send instead of raising a cancellation that lands as it completes (CPython
    gh-86296); the read that follows then waits its own ``socket_timeout``. Seen in
    ``test_client_pause_all_async``: calls of 510 ms against a 250 ms deadline. The guard
    must still hand the caller a BackendTimeout at its deadline."""

    async def swallowing() -> Any:
        with contextlib.suppress(asyncio.CancelledError):  # as wait_for does on 3.11 ...
            await asyncio.sleep(10)  # ... when the send it waited for had just finished
        # then the reply, which the budgeted async connection class of
        # cachekit.backends.redis refuses to wait for once the published deadline passed
        left = time_left()
        lefts.append(left)
        if left is not None and left > 0:
            await asyncio.sleep(left)  # what _Budgeted does: wait out the budget, no more
        raise BackendTimeout("the operation's deadline passed before its reply")

    lefts: list[float | None] = []
    backend, _, _ = aguarded(FakeAsync(swallowing), deadline=0.1)
    with pytest.raises(BackendTimeout):
        await backend.run(Get("k"))
    # The cancellation landed at the deadline (not before it; 1 ms for timer resolution,
    # and load only makes it later), with the deadline published for the reply to respect.
    [left] = lefts
    assert left is not None, "the async guard must publish its deadline"
    assert left <= 0.001


async def test_waiting_for_a_slot_then_a_healthy_reply_does_not_charge_the_breaker() -> None:
    """A caller gets the pool's only slot 180 ms into a 200 ms budget and the healthy
    server answers in 50 ms: the deadline passes, but the server did not fail (pool
    congestion, as in ``test_pool_exhaustion_500_callers_10_connections``)."""
    first = True

    async def behaviour() -> bytes:
        nonlocal first
        if first:
            first = False
            await asyncio.sleep(0.18)
        else:
            await asyncio.sleep(0.05)
        return b"v"

    backend, breaker, stats = aguarded(FakeAsync(behaviour), failures=1, deadline=0.2, slots=1)
    results = await asyncio.gather(
        backend.run(Get("a")), backend.run(Get("b")), return_exceptions=True
    )
    assert results[0] == b"v"
    assert isinstance(results[1], BackendTimeout)
    assert breaker.state == "closed", stats.snapshot()


def test_answered_within_tells_a_silent_endpoint_from_a_busy_one() -> None:
    breaker, clock, _ = make_breaker()
    assert not breaker.answered_within(1.0)  # never answered yet
    breaker.success(breaker.allow())
    clock.advance(0.2)
    assert breaker.answered_within(0.25)
    clock.advance(0.1)
    assert not breaker.answered_within(0.25)  # silent for more than a whole deadline


async def test_a_timeout_while_others_are_answered_does_not_charge_the_breaker() -> None:
    """A call that got its slot at once and then queued behind slow replies (redis-py's
    own pool, a loaded client) times out while other calls are being answered: the server
    is alive. The same timeout after a whole deadline of silence is charged."""
    clock = FakeClock()

    async def behaviour() -> bytes:
        if answering:
            return b"v"
        await asyncio.sleep(1)  # held: the guard's deadline ends the call
        return b"never"

    stats = Stats()
    breaker = Breaker(failures=1, cooldown=COOLDOWN, clock=clock, on_transition=stats.incr)
    backend = AsyncGuardedBackend(FakeAsync(behaviour), breaker, stats, deadline=0.05)
    answering = True
    assert await backend.run(Get("answered")) == b"v"
    answering = False
    with pytest.raises(BackendTimeout):
        await backend.run(Get("queued"))  # the fake clock says: answered just now
    assert state(breaker) == "closed"
    assert stats.snapshot()["deadline_exceeded"] == 1
    clock.advance(1.0)  # nobody answered for longer than a deadline: the server is hung
    with pytest.raises(BackendTimeout):
        await backend.run(Get("hung"))
    assert state(breaker) == "open"


def test_the_sync_face_charges_a_timeout_only_after_a_whole_deadline_of_silence() -> None:
    clock = FakeClock()
    stats = Stats()
    breaker = Breaker(failures=1, cooldown=COOLDOWN, clock=clock, on_transition=stats.incr)
    replies: list[Any] = [b"v", BackendTimeout("queued"), BackendTimeout("hung")]

    def behaviour() -> Any:
        reply = replies.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        return reply

    backend = SyncGuardedBackend(FakeSync(behaviour), breaker, stats, deadline=0.25)
    assert backend.run(Get("k")) == b"v"
    with pytest.raises(BackendTimeout):
        backend.run(Get("k"))
    assert state(breaker) == "closed"
    clock.advance(0.15)  # more than half a deadline of silence
    with pytest.raises(BackendTimeout):
        backend.run(Get("k"))
    assert state(breaker) == "open"


def test_a_call_that_queued_for_its_slot_is_not_charged_even_after_silence() -> None:
    """A client too busy to read its replies (500 callers starting on 2 loaded cores) can
    hear nothing for a deadline or two; a call that waited for its slot met that
    congestion. A hung server is caught by the calls that had their slots at once."""
    clock = FakeClock()
    stats = Stats()
    breaker = Breaker(failures=1, cooldown=COOLDOWN, clock=clock, on_transition=stats.incr)
    silence = [0.3, 1.0]  # fake seconds without an answer when each queued call times out
    holding = threading.Event()

    def behaviour() -> bytes:
        if threading.current_thread().name == "holder":
            holding.set()
            time.sleep(0.05)  # holds the only slot: the other call queues (25 % of its budget)
            return b"v"
        clock.advance(silence.pop(0))
        raise BackendTimeout("no reply")

    backend = SyncGuardedBackend(FakeSync(behaviour), breaker, stats, deadline=0.2, slots=1)
    for expected_state in ("closed", "closed"):
        holding.clear()
        holder = threading.Thread(target=backend.run, args=(Get("k"),), name="holder")
        holder.start()
        assert holding.wait(5)
        with pytest.raises(BackendTimeout):
            backend.run(Get("k"))
        holder.join(5)
        assert state(breaker) == expected_state, stats.snapshot()


# --------------------------------------------------------------------------- degraded mode


def expected(key: str) -> dict[str, str]:
    return {"key": key, "value": f"value of {key}"}


@pytest.fixture
async def stopped(private_redis: PrivateServer) -> AsyncIterator[tuple[Cache, PrivateServer]]:
    """A cache whose private server has been killed (after a first, cached call)."""
    cache = Cache.from_url(private_redis.url, prefix="degraded")
    await cache.set("before", 1)
    private_redis.kill()
    yield cache, private_redis
    await cache.close()


def _settle_open(cache: Cache) -> None:
    """Fail reads until the breaker is open (each costs microseconds: refused)."""
    for _ in range(10):
        cache.sync.get("x")
    assert cache.breaker is not None
    assert cache.breaker.state == "open"


async def test_decorated_functions_keep_answering_correctly(
    stopped: tuple[Cache, PrivateServer], caplog: pytest.LogCaptureFixture
) -> None:
    cache, _ = stopped
    loads: list[str] = []

    @cache.cached(ttl=60, key="a:{key}")
    async def aload(key: str) -> dict[str, str]:
        loads.append(key)
        return expected(key)

    @cache.cached(ttl=60, key="s:{key}")
    def sload(key: str) -> dict[str, str]:
        loads.append(key)
        return expected(key)

    keys = [f"k{i}" for i in range(5)] * 20
    assert [await aload(k) for k in keys] == [expected(k) for k in keys]
    assert [sload(k) for k in keys] == [expected(k) for k in keys]
    assert len(loads) == 2 * len(keys)  # nothing could be cached: every call loaded
    stats = cache.stats()
    assert stats["breaker_opened"] == 1
    assert stats["breaker_rejects"] >= 2 * len(keys) - 10
    assert stats["load_errors"] == 0
    assert cache.breaker is not None
    assert cache.breaker.state == "open"
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert tracebacks == []  # degraded mode logs one line per kind of failure, no traceback
    assert len(caplog.records) < 10


async def test_concurrent_async_callers_of_a_key_load_it_once_at_a_time(
    stopped: tuple[Cache, PrivateServer],
) -> None:
    cache, _ = stopped
    running, most, loads = 0, 0, 0

    @cache.cached(ttl=60, key="hot:{key}")
    async def hot(key: str) -> dict[str, str]:
        nonlocal running, most, loads
        running += 1
        loads += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        running -= 1
        return expected(key)

    for _ in range(5):  # first with the breaker closed (refused connects), then open
        results = await asyncio.gather(*(hot("one") for _ in range(100)))
        assert results == [expected("one")] * 100
    assert most == 1
    assert loads <= 5 * 10  # coalesced: far fewer loads than the 500 calls
    assert cache.stats()["coalesced"] > 0


def test_concurrent_threads_calling_a_key_load_it_once_at_a_time(
    stopped: tuple[Cache, PrivateServer],
) -> None:
    cache, _ = stopped
    gauge = threading.Lock()
    running, most, loads = 0, 0, 0

    @cache.cached(ttl=60, key="hot:{key}")
    def hot(key: str) -> dict[str, str]:
        nonlocal running, most, loads
        with gauge:
            running += 1
            loads += 1
            most = max(most, running)
        time.sleep(0.01)
        with gauge:
            running -= 1
        return expected(key)

    wrong: list[object] = []

    def caller() -> None:
        for _ in range(20):
            if (value := hot("one")) != expected("one"):
                wrong.append(value)

    threads = [threading.Thread(target=caller) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert wrong == []
    assert most == 1
    assert loads < 16 * 20


@pytest.mark.parametrize("face", ["async", "sync"])
async def test_an_invalidation_during_the_outage_is_applied_after_recovery(
    private_redis: PrivateServer, face: str
) -> None:
    """Invalidated while Redis is down and the breaker open: the call returns at once, the
    delete is queued, and the first retry after the restart removes the entry. (The
    private server keeps no data across a restart, so the entry a persistent server would
    still hold is written back by hand.) A short cool-down lets the retry (1 s after the
    invalidation) find the breaker half-open rather than open."""
    cache = Cache.from_url(private_redis.url, prefix="inval", breaker_cooldown=0.5)
    raw = redis.Redis(port=private_redis.port)
    try:
        await cache.set("product:1", {"price": 10})
        key = next(iter(raw.scan_iter("inval:*")))
        stored = raw.get(key)
        assert stored is not None
        private_redis.kill()
        _settle_open(cache)
        began = time.monotonic()
        if face == "async":
            await cache.invalidate("product:1")
        else:
            await asyncio.to_thread(cache.sync.invalidate, "product:1")
        # Nobody waits for a queued delete: far below its first retry, 1 s later (the
        # margin is for a loaded box; a call that waited would take a second or more).
        assert time.monotonic() - began < 0.5
        stats = cache.stats()
        assert (stats["write_errors"], stats["deferred"]) == (1, 1)
        await asyncio.to_thread(private_redis.start)
        raw = redis.Redis(port=private_redis.port)
        raw.set(key, stored)  # what a persistent server would still hold
        for _ in range(400):  # retries are due 1 s, then 5 s more, after the invalidation
            if not raw.exists(key):
                break
            await asyncio.sleep(0.02)
        assert not raw.exists(key), "the queued invalidation was never applied"
        stats = cache.stats()
        assert stats["deferred_dropped"] == 0
        assert stats["breaker_closed"] == 1
        assert await cache.get("product:1") is None
    finally:
        raw.close()
        await cache.close()


async def test_locks_fail_closed_unless_asked_to_fail_open(
    stopped: tuple[Cache, PrivateServer],
) -> None:
    cache, _ = stopped
    _settle_open(cache)
    entered = []
    with pytest.raises(CacheKitError) as info:
        async with cache.lock("nightly", ttl=5, wait=0.1):
            entered.append("closed")
    assert isinstance(info.value, BackendUnavailable)
    with pytest.raises(CacheKitError), cache.sync.lock("nightly", ttl=5, wait=0.1):
        entered.append("closed")
    async with cache.lock("nightly", ttl=5, wait=0.1, fail_open=True) as lock:
        entered.append("open")
        assert lock.fencing_token is None  # no fence: nothing was acquired in Redis
    with cache.sync.lock("nightly", ttl=5, wait=0.1, fail_open=True):
        entered.append("open")
    assert entered == ["open", "open"]


@pytest.mark.parametrize("face", ["async", "sync"])
async def test_a_lock_fails_closed_within_the_deadline(
    stopped: tuple[Cache, PrivateServer], face: str
) -> None:
    """The process's first lock (its first use of notifications) while Redis is down:
    failing closed must not first wait for the notification subscription to come up
    (``READY_WAIT``), since it never will."""
    cache, _ = stopped
    began = time.monotonic()
    if face == "async":
        with pytest.raises(BackendUnavailable):
            await cache.lock("nightly", ttl=5, wait=0.1).acquire()
    else:
        with pytest.raises(BackendUnavailable):
            cache.sync.lock("nightly", ttl=5, wait=0.1).acquire()
    took = time.monotonic() - began
    # The deadline alone, not READY_WAIT first and then the deadline: a quarter second of
    # margin for a loaded box.
    assert took < DEFAULT_DEADLINE + READY_WAIT, f"failing closed took {took:.2f} s"


async def test_sessions_and_the_response_cache_answer_while_the_breaker_is_open(
    private_redis: PrivateServer,
) -> None:
    cache = Cache.from_url(private_redis.url, prefix="web")
    page_calls = 0

    async def page(request: Request) -> Response:
        nonlocal page_calls
        page_calls += 1
        return JSONResponse({"page": page_calls}, headers={"cache-control": "public, max-age=60"})

    async def visit(request: Request) -> Response:
        session = await load_session(request)
        session["visits"] = session.get("visits", 0) + 1
        return JSONResponse({"visits": session["visits"]})

    app = Starlette(
        routes=[Route("/page", page), Route("/visit", visit)],
        middleware=[
            Middleware(SessionMiddleware, store=RedisSessionStore(cache)),
            Middleware(ResponseCacheMiddleware, cache=cache),
        ],
    )
    try:
        async with client_for(app) as client:
            assert (await client.get("/page")).status_code == 200
            assert (await client.get("/page")).headers["x-cache"] == "HIT"
            assert (await client.get("/visit")).status_code == 200
            private_redis.kill()
            responses = []
            for _ in range(20):
                responses.append(await client.get("/page"))
                responses.append(await client.get("/visit"))
            assert cache.breaker is not None
            assert state(cache.breaker) == "open"
            for _ in range(20):  # and with the breaker open all along
                responses.append(await client.get("/page"))
                responses.append(await client.get("/visit"))
            assert state(cache.breaker) == "open"
    finally:
        await cache.close()
    assert {r.status_code for r in responses} == {200}
    assert {r.headers["x-cache"] for r in responses[::2]} == {"BYPASS"}
    assert page_calls == 1 + 40  # the app answered every page request itself
    assert cache.stats()["breaker_rejects"] >= 20  # Redis was not called while open
