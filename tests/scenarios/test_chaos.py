"""Chaos: Redis crashes, hangs, pauses, fills up and lies on the wire while callers keep calling.

Issue 8's promise is that the cache never makes an app fail or crawl. Every scenario runs
many concurrent callers of a decorated function against a private server (never the
shared one) and checks, per call:

* no error reaches a caller, and every value is the right one (values embed their key);
* the latency a call *adds* (its latency minus one load) stays within the operation
  deadlines plus :data:`SLACK`, plus the time the process itself could not run during the
  call (see :meth:`Recorder.starved`);
* once the server is back, caching resumes (the ``hits`` counter moves again) within the
  breaker's cool-down plus 1 s, without restarting anything.

Scenarios: SIGKILL and restart (async, sync), SIGSTOP for 5 s, ``CLIENT PAUSE 2000 ALL``,
``DEBUG SLEEP 2``, pool
exhaustion behind a slow link, ``maxmemory`` with ``noeviction``, and a proxy that cuts
replies mid-way while callers are cancelled at random. The figures each test measured are
printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import gc
import itertools
import random
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cachekit import Cache
from cachekit.backends.breaker import DEFAULT_COOLDOWN
from cachekit.backends.guard import DEFAULT_DEADLINE
from cachekit.backends.ops.leases import LEASE_PROBATION
from tests.support.chaos_proxy import ChaosProxy
from tests.support.servers import PrivateServer

pytestmark = pytest.mark.slow

DEADLINE = DEFAULT_DEADLINE  # 0.25 s: one operation's whole budget (the defaults are tested)
COOLDOWN = DEFAULT_COOLDOWN  # 2 s without calling Redis once the breaker opens
LOAD = 0.002  # the "database": each load sleeps this long
# Scheduling slack on this 2-core box, shared with other test runs: a timer that fires at
# the deadline runs only when the event loop (or the GIL) gets to it, behind hundreds of
# ready callers, and an outage makes every caller load at once. 100 ms covers that; any
# real wait (a second timeout, a pool queue, a lease of 5 s) is far above it.
SLACK = 0.1
# The samplers of ``hits`` tick every TICK: a tick later than that (plus TICK_SLACK) means
# the process (its event loop, or the GIL) did not run for the difference.
TICK = 0.01
TICK_SLACK = 0.005
# After the server is back, hits again within this. The bound is COOLDOWN + 1 s;
# a probe that lands while the resumed server still drains its backlog can time out once
# and cost one more cool-down (4.3 s measured once in a clean-clone CI run), so the test
# allows that one retry and reports the figure.
RESUME_WITHIN = 2 * COOLDOWN + 1.0
TTL = 1.0  # short: keys keep expiring, so leases and fills are in flight at any instant
KEYS = [f"k{i}" for i in range(20)]


def expected(key: str) -> dict[str, Any]:
    """The one right value of ``key``: it names its key."""
    return {"key": key, "payload": f"value of {key}"}


# --------------------------------------------------------------------------- recording


@dataclass
class Call:
    """One caller's call: when it ran and what went wrong, if anything."""

    began: float
    ended: float
    key: str
    problem: str | None = None  # an exception, or a wrong value

    @property
    def added(self) -> float:
        """The latency the cache added: all of it but one load (never negative)."""
        return max(0.0, self.ended - self.began - LOAD)


@dataclass
class Recorder:
    """Every call of a run, the loads per key, and the ``hits`` counter over time."""

    calls: list[Call] = field(default_factory=list)
    loads: Counter[str] = field(default_factory=Counter)
    hits: list[tuple[float, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # tick times and cumulative lag, computed once the run is over
    _lag: tuple[list[float], list[float]] | None = field(default=None, init=False, repr=False)

    def record(self, began: float, key: str, value: object, exc: BaseException | None) -> None:
        problem = None
        if exc is not None:
            problem = f"{type(exc).__name__}: {exc}"
        elif value != expected(key):
            problem = f"wrong value {value!r}"
        call = Call(began, time.monotonic(), key, problem)
        with self.lock:
            self.calls.append(call)

    def problems(self) -> list[str]:
        return [f"{c.key}: {c.problem}" for c in self.calls if c.problem is not None]

    def between(self, start: float, end: float) -> list[Call]:
        """Calls that were running at some instant of ``[start, end]``."""
        return [c for c in self.calls if c.ended >= start and c.began <= end]

    def starved(self, call: Call) -> float:
        """Seconds during ``call`` in which the process did not run (late sampler ticks).

        A box shared with other CPU-bound work (2 cores here) can stop the whole process
        for a while: every call running then is late by as much, whatever the cache does.
        A call the cache stalls (a lease waited for) is late while the process runs on,
        so it is not excused.
        """
        if self._lag is None:
            ticks = [t for t, _ in self.hits]
            lags = [max(0.0, b - a - TICK - TICK_SLACK) for a, b in itertools.pairwise(ticks)]
            self._lag = (ticks, [0.0, *itertools.accumulate(lags)])
        ticks, total = self._lag
        # Ticks ending within the call (a late tick's lag was spent just before it).
        first = bisect.bisect_right(ticks, call.began)
        last = bisect.bisect_right(ticks, call.ended)
        if first == 0 or last <= first:
            return 0.0
        return total[last - 1] - total[first - 1]

    def longest_starvation(self) -> float:
        """The longest single stretch, in seconds, in which the process did not run."""
        ticks = [t for t, _ in self.hits]
        lags = [b - a - TICK - TICK_SLACK for a, b in itertools.pairwise(ticks)]
        return max([0.0, *lags])

    def resumed(self, since: float) -> float | None:
        """Seconds after ``since`` at which ``hits`` first moved again; ``None``: never."""
        before = max((n for t, n in self.hits if t <= since), default=0)
        for t, n in self.hits:
            if t > since and n > before:
                return t - since
        return None


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def summary(name: str, calls: list[Call]) -> tuple[float, float]:
    """Print and return ``(max, p99)`` of the added latency of ``calls``, in seconds."""
    added = [c.added for c in calls]
    worst, p99 = max(added), percentile(added, 99)
    print(f"\n{name}: {len(calls)} calls, added latency max {worst * 1000:.1f} ms, "
          f"p99 {p99 * 1000:.1f} ms")  # fmt: skip
    return worst, p99


def check_calls(
    rec: Recorder,
    name: str,
    stats: dict[str, int],
    origin: float | None = None,
    operations: int = 1,
) -> None:
    """No caller saw an error or a wrong value; no call added more than its budget.

    The deadline bounds each Redis operation; ``operations`` is how many a call may make
    one after the other while Redis is slow but up (a miss: the GET, then the lease).
    A call is also excused the time the process itself could not run meanwhile
    (:meth:`Recorder.starved`; 0 when nothing sampled). A failure lists the slowest calls,
    timed from ``origin`` (default: the first call), and the counters that tell why
    (``lock_waits``: callers waited for a lease).
    """
    assert rec.problems() == []
    assert rec.calls, "no call was made"
    origin = rec.calls[0].began if origin is None else origin
    summary(f"{name}, whole run", rec.calls)
    budget = operations * DEADLINE + SLACK
    over = [(c, c.added - budget - rec.starved(c)) for c in rec.calls if c.added > budget]
    slow = sorted(((c, x) for c, x in over if x > 0), key=lambda cx: -cx[1])
    starved = max((rec.starved(c) for c, _ in over), default=0.0)
    print(f"{name}: {len(over)} calls over {budget * 1000:.0f} ms, each excused at most "
          f"{starved * 1000:.0f} ms of process starvation; {len(slow)} left over")  # fmt: skip
    assert not slow, (
        [
            f"{c.key}: {c.added * 1000:.0f} ms at {c.began - origin:+.2f} s "
            f"({rec.starved(c) * 1000:.0f} ms starved)"
            for c, _ in slow[:8]
        ],
        f"{len(slow)} slow calls",
        {k: stats[k] for k in ("lock_waits", "lock_timeouts", "deadline_exceeded")},
    )


# --------------------------------------------------------------------------- callers


def item_functions(cache: Cache, rec: Recorder) -> tuple[Any, Any]:
    """The decorated ``async def`` and ``def`` under test; each load is counted."""

    @cache.cached(ttl=TTL, key="item:{key}")
    async def item(key: str) -> dict[str, Any]:
        rec.loads[key] += 1
        await asyncio.sleep(LOAD)
        return expected(key)

    @cache.cached(ttl=TTL, key="item:{key}")
    def sync_item(key: str) -> dict[str, Any]:
        with rec.lock:
            rec.loads[key] += 1
        time.sleep(LOAD)
        return expected(key)

    return item, sync_item


async def async_callers(
    call: Callable[[str], Awaitable[Any]], rec: Recorder, stop: asyncio.Event, callers: int
) -> None:
    """``callers`` coroutines calling ``call`` on random keys, with short pauses, until ``stop``."""

    async def caller(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            key = rng.choice(KEYS)
            began = time.monotonic()
            try:
                value = await call(key)
            except Exception as exc:
                rec.record(began, key, None, exc)
            else:
                rec.record(began, key, value, None)
            await asyncio.sleep(rng.uniform(0, 0.01))  # think time: the box has 2 cores

    await asyncio.gather(*(caller(i) for i in range(callers)))


async def sample_hits(cache: Cache, rec: Recorder, stop: asyncio.Event) -> None:
    while not stop.is_set():
        rec.hits.append((time.monotonic(), cache.stats()["hits"]))
        await asyncio.sleep(TICK)


@contextlib.contextmanager
def thread_callers(
    call: Callable[[str], Any], cache: Cache, rec: Recorder, callers: int
) -> Iterator[None]:
    """``callers`` threads calling ``call`` (and one sampling ``hits``) inside the block."""
    stop = threading.Event()

    def caller(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            key = rng.choice(KEYS)
            began = time.monotonic()
            try:
                value = call(key)
            except Exception as exc:
                rec.record(began, key, None, exc)
            else:
                rec.record(began, key, value, None)
            time.sleep(rng.uniform(0, 0.01))

    def sampler() -> None:
        while not stop.is_set():
            rec.hits.append((time.monotonic(), cache.stats()["hits"]))
            time.sleep(TICK)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    threads.append(threading.Thread(target=sampler))
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)


async def wait_resumed(rec: Recorder, since: float) -> float:
    """Seconds until ``hits`` moved again after ``since`` (fails past the promise + 2 s)."""
    resumed = None
    for _ in range(int((RESUME_WITHIN + 2.0) / 0.02)):
        if (resumed := rec.resumed(since)) is not None:
            break
        await asyncio.sleep(0.02)
    assert resumed is not None, f"caching did not resume within {RESUME_WITHIN + 2:g} s"
    return resumed


def wait_resumed_blocking(rec: Recorder, since: float) -> float:
    resumed = None
    for _ in range(int((RESUME_WITHIN + 2.0) / 0.02)):
        if (resumed := rec.resumed(since)) is not None:
            break
        time.sleep(0.02)
    assert resumed is not None, f"caching did not resume within {RESUME_WITHIN + 2:g} s"
    return resumed


def check_resumed(name: str, resumes: list[float]) -> None:
    print(f"\n{name}: caching resumed after " + ", ".join(f"{r:.2f} s" for r in resumes))
    assert max(resumes) <= RESUME_WITHIN, resumes


# --------------------------------------------------------------------------- outages


@dataclass(frozen=True)
class Outage:
    """A way for the server to fail: ``begin`` it, wait ``length`` s, ``end`` it (blocking)."""

    name: str
    begin: Callable[[], None]
    end: Callable[[], object]  # returns once the server answers again
    length: float


def sigkill(server: PrivateServer) -> Outage:
    """A crash, and a restart on the same port with an empty dataset."""
    return Outage("SIGKILL", server.kill, server.start, 1.0)


def sigstop(server: PrivateServer) -> Outage:
    """A hung server: connections stay open, nothing answers, for 5 s."""
    return Outage("SIGSTOP", server.pause, server.resume, 5.0)


def client_pause(server: PrivateServer) -> Outage:
    """``CLIENT PAUSE 2000 ALL``: the server holds every client's commands for 2 s."""
    admin = redis.Redis(port=server.port, socket_timeout=10)

    def begin() -> None:
        admin.client_pause(2000, all=True)

    def end() -> None:
        admin.ping()  # held by the pause like everyone else's commands, then answered
        admin.close()

    return Outage("CLIENT PAUSE", begin, end, 0.0)


def debug_sleep(server: PrivateServer) -> Outage:
    """``DEBUG SLEEP 2``: the server itself blocks for 2 s, reading nothing meanwhile."""
    admin = redis.Redis(port=server.port, socket_timeout=10)
    admin.ping()  # connected before the sleep: the sleep blocks new connections too
    sleeper: list[threading.Thread] = []

    def begin() -> None:
        thread = threading.Thread(target=admin.execute_command, args=("DEBUG", "SLEEP", "2"))
        thread.start()
        sleeper.append(thread)
        time.sleep(0.05)  # the command is on its way: the outage has begun

    def end() -> None:
        sleeper.pop().join()  # DEBUG SLEEP answers when it is over
        admin.ping()
        admin.close()

    return Outage("DEBUG SLEEP", begin, end, 0.0)


async def async_outages(server: PrivateServer, outage: Outage, rounds: int) -> None:
    """200 coroutines call a decorated ``async def`` through ``rounds`` outages."""
    rec = Recorder()
    cache = Cache.from_url(server.url, prefix="chaos")
    item, _ = item_functions(cache, rec)
    stop = asyncio.Event()
    workers = asyncio.gather(async_callers(item, rec, stop, 200), sample_hits(cache, rec, stop))
    windows, resumes = [], []
    try:
        await asyncio.sleep(1.0)  # warm: connections open, keys cached
        for _ in range(rounds):
            down = time.monotonic()
            await asyncio.to_thread(outage.begin)
            await asyncio.sleep(outage.length)
            await asyncio.to_thread(outage.end)
            up = time.monotonic()
            resumes.append(await wait_resumed(rec, up))
            windows.append((down, up + resumes[-1]))
            await asyncio.sleep(0.5)
    finally:
        stop.set()
        await workers
        await cache.close()
    report(f"{outage.name}, async, 200 coroutines", rec, cache, windows, resumes)


def sync_outages(server: PrivateServer, outage: Outage, rounds: int) -> None:
    """32 threads call a decorated ``def`` through ``rounds`` outages."""
    rec = Recorder()
    cache = Cache.from_url(server.url, prefix="chaos")
    _, sync_item = item_functions(cache, rec)
    windows, resumes = [], []
    try:
        with thread_callers(sync_item, cache, rec, 32):
            time.sleep(1.0)
            for _ in range(rounds):
                down = time.monotonic()
                outage.begin()
                time.sleep(outage.length)
                outage.end()
                up = time.monotonic()
                resumes.append(wait_resumed_blocking(rec, up))
                windows.append((down, up + resumes[-1]))
                time.sleep(0.5)
    finally:
        cache.sync.close()
    report(f"{outage.name}, sync, 32 threads", rec, cache, windows, resumes)


def report(
    name: str,
    rec: Recorder,
    cache: Cache,
    windows: list[tuple[float, float]],
    resumes: list[float],
) -> None:
    """Print the figures of a run, then check every promise."""
    stats = cache.stats()
    print(f"\n{name}: " + ", ".join(f"{k}={v}" for k, v in stats.items() if v))
    during = [c for window in windows for c in rec.between(*window)]
    summary(f"{name}, during the outages", during)
    # The deadline bounds each operation; a miss makes two (its GET, then its lease).
    check_calls(rec, name, stats, origin=windows[0][0], operations=2)
    check_resumed(name, resumes)
    assert stats["breaker_opened"] >= len(windows)


# --------------------------------------------------------------------------- 1. SIGKILL


async def test_sigkill_during_200_concurrent_async_calls(private_redis: PrivateServer) -> None:
    """Three crashes and restarts on the same port: 0 errors, bounded latency, hits resume."""
    await async_outages(private_redis, sigkill(private_redis), rounds=3)


def test_sigkill_during_32_threads_of_sync_calls(private_redis: PrivateServer) -> None:
    sync_outages(private_redis, sigkill(private_redis), rounds=2)


# --------------------------------------------------------------------------- 2. SIGSTOP


async def test_sigstop_for_5_s_async(private_redis: PrivateServer) -> None:
    """A hung server: callers are bounded by the deadline, never by the 5 s hang.

    Slow calls here have had two causes, each pinned by a deterministic test:
    ``test_a_lease_taken_after_the_deadline_does_not_stall_the_next_caller`` (after the
    resume, a lease taken by a timed-out call holds its key up to ``lock_ttl``) and
    ``test_the_async_deadline_holds_when_the_backend_swallows_a_cancellation``
    (``test_breaker.py``: 510 ms calls as the hang begins).
    """
    await async_outages(private_redis, sigstop(private_redis), rounds=1)


def test_sigstop_for_5_s_sync(private_redis: PrivateServer) -> None:
    sync_outages(private_redis, sigstop(private_redis), rounds=1)


# --------------------------------------------------------------------------- 3. CLIENT PAUSE


async def test_client_pause_all_async(private_redis: PrivateServer) -> None:
    """The server holds every command 3 s; the same causes as SIGSTOP's slow calls."""
    await async_outages(private_redis, client_pause(private_redis), rounds=1)


def test_client_pause_all_sync(private_redis: PrivateServer) -> None:
    """A fill cut off by the pause leaves its lease behind: the key's next caller after
    the pause may wait for it (the sync face's share of the SIGSTOP causes)."""
    sync_outages(private_redis, client_pause(private_redis), rounds=1)


# --------------------------------------------------------------------------- 3b. DEBUG SLEEP


@pytest.fixture
def debuggable_redis() -> Iterator[PrivateServer]:
    """A private server that accepts ``DEBUG`` (off by default since Redis 7)."""
    server = PrivateServer("--enable-debug-command", "yes").start()
    try:
        yield server
    finally:
        server.stop()


async def test_debug_sleep_async(debuggable_redis: PrivateServer) -> None:
    """The server blocks for 2 s inside one command: every other client's commands wait."""
    await async_outages(debuggable_redis, debug_sleep(debuggable_redis), rounds=1)


def test_debug_sleep_sync(debuggable_redis: PrivateServer) -> None:
    sync_outages(debuggable_redis, debug_sleep(debuggable_redis), rounds=1)


# --------------------------------------------------------------------------- the proxy itself


def test_the_proxy_delays_cuts_and_pauses(private_redis: PrivateServer) -> None:
    """The instrument first: each knob does what the scenarios below rely on."""
    with ChaosProxy(private_redis.port) as proxy:
        no_retry = Retry(NoBackoff(), 0)  # see each failure, not redis-py's second try
        client = redis.Redis(port=proxy.port, socket_timeout=2, retry=no_retry)
        client.set("big", b"x" * 200_000)
        began = time.monotonic()
        assert client.ping()
        fast = time.monotonic() - began
        proxy.latency = 0.1
        began = time.monotonic()
        assert client.ping()
        assert time.monotonic() - began >= 0.1 > fast
        proxy.latency = 0.0
        proxy.cut_after = 1000  # a connection dies 1000 bytes into its replies
        with pytest.raises(redis.ConnectionError):
            client.get("big")
        proxy.cut_after = None
        proxy.cut_next(b"$")  # the next bulk reply stops mid-way, once
        with pytest.raises(redis.ConnectionError):
            client.get("big")
        assert client.get("big") == b"x" * 200_000
        proxy.pause()
        hung = redis.Redis(port=proxy.port, socket_timeout=0.2, retry=no_retry)
        with pytest.raises(redis.TimeoutError):
            hung.ping()
        hung.close()
        proxy.resume()
        assert client.ping()
        assert proxy.cuts == 2
        client.close()


def test_the_proxy_stops_with_no_socket_left_open(private_redis: PrivateServer) -> None:
    """Stopped while clients reconnect as fast as they can, the proxy closes every socket it
    accepted, even one accepted in its last moment: a socket left to the collector warns
    in whatever test runs next (it failed unrelated tests in CI)."""
    rng = random.Random(5)
    for _ in range(15):
        proxy = ChaosProxy(private_redis.port, cut_rate=0.05, seed=rng.randrange(1 << 30)).start()
        done = threading.Event()

        def client_loop(port: int = proxy.port, done: threading.Event = done) -> None:
            client = redis.Redis(port=port, socket_timeout=1, retry=Retry(NoBackoff(), 0))
            while not done.is_set():
                with contextlib.suppress(redis.RedisError):
                    client.set("churn", b"x" * 5000)
            client.close()

        threads = [threading.Thread(target=client_loop) for _ in range(6)]
        for thread in threads:
            thread.start()
        time.sleep(rng.uniform(0.01, 0.06))
        proxy.stop()
        done.set()
        for thread in threads:
            thread.join(5)
    gc.collect()  # a leaked socket warns now, in this test (warnings are errors here)


# --------------------------------------------------------------------------- 4. pool exhaustion


# Enough keys that shared reads do not absorb the load: ~100 reads in flight for 10
# connections queue past the deadline on their own, not only after a cascade of timeouts.
POOL_KEYS = [f"p{i}" for i in range(100)]


async def test_pool_exhaustion_500_callers_10_connections(private_redis: PrivateServer) -> None:
    """A healthy server 40 ms away, 10 connections, 500 callers of 100 keys at once: nobody queues
    past the deadline, everyone gets the right value, and the breaker stays closed.

    Each call that times out drops its connection, and the next one on it reconnects: a
    handshake round trip that the breaker does not count as an answer. At 50 ms a burst of
    such reconnects left the breaker no answer for half a deadline in about half the runs
    on a slower machine (the breaker opened); at 40 ms a reconnect fits with a margin, and
    the pool is still exhausted (with 20 keys, shared reads absorbed the load in some runs
    and the pool was never exhausted; with 100 it was in every run)."""
    rec = Recorder()
    with ChaosProxy(private_redis.port) as proxy:
        cache = Cache.from_url(proxy.url, prefix="pool", max_connections=10)
        item, _ = item_functions(cache, rec)
        try:
            for key in POOL_KEYS[::2]:  # half the keys are cached: hits and misses both
                await item(key)
            proxy.latency = 0.04

            async def caller(seed: int) -> None:
                rng = random.Random(seed)
                for _ in range(3):
                    key = rng.choice(POOL_KEYS)
                    began = time.monotonic()
                    try:
                        rec.record(began, key, await item(key), None)
                    except Exception as exc:
                        rec.record(began, key, None, exc)

            stop = asyncio.Event()
            sampler = asyncio.ensure_future(sample_hits(cache, rec, stop))  # starvation
            await asyncio.gather(*(caller(i) for i in range(500)))
            stop.set()
            await sampler
            state = cache.breaker.state if cache.breaker else "closed"
        finally:
            await cache.close()
    stats = cache.stats()
    print("\npool exhaustion: " + ", ".join(f"{k}={v}" for k, v in stats.items() if v))
    summary("pool exhaustion", rec.calls)
    assert rec.problems() == []
    assert stats["pool_exhausted"] > 0
    # The breaker is charged only when nobody was answered for half a deadline: a process
    # that itself did not run that long (a loaded CI box) is indistinguishable, to its own
    # calls, from a hung server. Anything else opening it is the congestion bug.
    starved = rec.longest_starvation()
    assert (state, stats["breaker_opened"]) == ("closed", 0) or starved >= 0.125, (
        f"pool congestion opened the breaker: {stats['deadline_exceeded']} operations that "
        "got a slot late in their budget timed out on a healthy server and were charged "
        f"(longest process starvation {starved * 1000:.0f} ms)"
    )
    # A miss waits for a slot twice (its GET, then its lease) before it loads, and a third
    # time for its fill after the load: here every operation may queue its whole deadline.
    check_calls(rec, "pool exhaustion, 500 coroutines on 10 connections", stats, operations=3)


# --------------------------------------------------------------------------- 5. maxmemory


async def test_maxmemory_noeviction_writes_fail_and_reads_are_served(
    private_redis: PrivateServer,
) -> None:
    """Redis out of memory: hits keep being served, new values cannot be stored (counted),
    and callers never see an error; the breaker stays closed (the server answers)."""
    rec = Recorder()
    admin = redis.Redis(port=private_redis.port)
    cache = Cache.from_url(private_redis.url, prefix="oom")
    item, sync_item = item_functions(cache, rec)
    cached, new = KEYS[:10], KEYS[10:]
    try:
        for key in cached:
            await item(key)
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", "1mb")
        filler = 0
        with contextlib.suppress(redis.exceptions.OutOfMemoryError):
            while True:  # fill until the server refuses writes
                admin.set(f"filler:{filler}", b"x" * 8192)
                filler += 1
        before = cache.stats()
        loads = sum(rec.loads.values())
        calls = [*cached, *new] * 5

        async def one(key: str) -> None:
            began = time.monotonic()
            try:
                rec.record(began, key, await item(key), None)
            except Exception as exc:
                rec.record(began, key, None, exc)

        await asyncio.gather(*(one(key) for key in calls))
        for key in calls[:20]:  # and the sync face
            began = time.monotonic()
            rec.record(began, key, await asyncio.to_thread(sync_item, key), None)
        after = cache.stats()
    finally:
        await cache.close()
        admin.close()
    delta = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    print(f"\nmaxmemory 1mb noeviction ({filler} filler writes before OOM): {delta}")
    assert rec.problems() == []
    assert delta["hits"] >= 5 * len(cached) + 10  # every read of a stored key was a hit
    assert sum(rec.loads.values()) - loads >= len(new)  # the new keys were loaded ...
    assert after["breaker_opened"] == 0  # an error answer is not an outage
    # ... and could not be stored: the refused writes are counted as write errors.
    assert delta.get("write_errors", 0) >= len(new), (
        "OOM refusals were counted as read fallbacks instead: "
        f"fallbacks +{delta.get('fallbacks', 0)}, write_errors +{delta.get('write_errors', 0)}"
    )
    check_calls(rec, "maxmemory", after)


# --------------------------------------------------------------------------- 6. the wire lies


def keyed_value(key: str, size: int) -> dict[str, Any]:
    """A value that names its key, ``size`` bytes of padding (some span several chunks)."""
    return {"key": key, "pad": key[-1] * size}


SIZES = [16, 300, 4_000, 100_000]  # the largest ones arrive in several TCP chunks
MANY_KEYS = [f"m{i}:{SIZES[i % len(SIZES)]}" for i in range(200)]


def size_of(key: str) -> int:
    return int(key.rpartition(":")[2])


async def test_cut_replies_and_random_cancellation_never_return_another_keys_value(
    private_redis: PrivateServer,
) -> None:
    """Coroutines cancelled at random (``wait_for`` with short timeouts, ``task.cancel()``)
    while the proxy cuts replies mid-way: every value that is returned is its own key's."""
    returned, cancelled, wrong = Counter[str](), 0, []
    with ChaosProxy(private_redis.port, jitter=0.003, cut_rate=0.02, seed=7) as proxy:
        cache = Cache.from_url(proxy.url, prefix="wire", max_connections=32)

        # Short leases: a lease left behind by a cancelled loader (see
        # test_a_caller_cancelled_during_its_load_does_not_stall_the_next_one) holds its
        # key up only briefly; this test is about which values come back.
        @cache.cached(ttl=0.5, key="v:{key}", lock_ttl=0.3)
        async def value(key: str) -> dict[str, Any]:
            await asyncio.sleep(random.uniform(0, 0.003))
            return keyed_value(key, size_of(key))

        async def caller(seed: int) -> None:
            nonlocal cancelled
            rng = random.Random(seed)
            for _ in range(60):
                key = rng.choice(MANY_KEYS)
                how = rng.randrange(3)  # wait_for with a short timeout, cancel(), or neither
                try:
                    if how == 0:
                        got = await asyncio.wait_for(value(key), rng.uniform(0.001, 0.03))
                    else:
                        task = asyncio.ensure_future(value(key))
                        if how == 1:
                            loop = asyncio.get_running_loop()
                            loop.call_later(rng.uniform(0, 0.03), task.cancel)
                        got = await task
                except (asyncio.CancelledError, TimeoutError):
                    cancelled += 1
                    continue
                returned[key] += 1
                if got.get("key") != key or got != keyed_value(key, size_of(key)):
                    wrong.append((key, str(got)[:80]))

        try:
            await asyncio.gather(*(caller(i) for i in range(100)))
            proxy.cut_rate = 0.0
            for key in MANY_KEYS:  # afterwards, every key reads back right
                assert await value(key) == keyed_value(key, size_of(key))
        finally:
            await cache.close()
        cuts = proxy.cuts
    stats = cache.stats()
    print(f"\nasync cancellation storm: {sum(returned.values())} values returned, {cancelled} "
          f"calls cancelled, {cuts} replies cut: "
          + ", ".join(f"{k}={v}" for k, v in stats.items() if v))  # fmt: skip
    assert wrong == []
    assert cuts > 0
    assert cancelled > 0
    assert sum(returned.values()) > 1000
    assert stats["invalid_payloads"] == 0  # not even a mismatch the envelope had to catch


def test_cut_replies_and_deadlines_on_threads_never_return_another_keys_value(
    private_redis: PrivateServer,
) -> None:
    """Threads whose reads are cut short by a 60 ms deadline on a link with 0-15 ms of
    jitter per chunk, while replies are cut mid-way: every value returned is its own key's.

    The deadline covers a reconnect too (connect, handshake, command: three jittered round
    trips through an in-process proxy that 24 threads contend with for the GIL); at 40 ms
    nearly every call after a timeout timed out again on a slower machine, and no value
    came back from Redis at all."""
    returned, wrong, errors = Counter[str](), [], []
    lock = threading.Lock()
    with ChaosProxy(private_redis.port, jitter=0.015, cut_rate=0.02, seed=11) as proxy:
        # A breaker that never opens: the point is to keep reads on the wire being cut.
        cache = Cache.from_url(proxy.url, prefix="wire", deadline=0.06, breaker_failures=10**6)

        # Short leases: a lease abandoned by a timed-out call only delays its key briefly.
        @cache.cached(ttl=0.5, key="v:{key}", lock_ttl=0.3)
        def value(key: str) -> dict[str, Any]:
            return keyed_value(key, size_of(key))

        def caller(seed: int) -> None:
            rng = random.Random(seed)
            for _ in range(100):
                key = rng.choice(MANY_KEYS)
                try:
                    got = value(key)
                except Exception as exc:
                    with lock:
                        errors.append(repr(exc))
                    continue
                with lock:
                    returned[key] += 1
                    if got != keyed_value(key, size_of(key)):
                        wrong.append((key, str(got)[:80]))

        try:
            threads = [threading.Thread(target=caller, args=(i,)) for i in range(24)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            cuts = proxy.cuts
        finally:
            cache.sync.close()
    stats = cache.stats()
    print(f"\nsync deadline storm: {sum(returned.values())} values returned, {cuts} replies "
          "cut: " + ", ".join(f"{k}={v}" for k, v in stats.items() if v))  # fmt: skip
    assert errors == []
    assert wrong == []
    assert cuts > 0
    assert stats["deadline_exceeded"] > 0
    assert sum(returned.values()) == 24 * 100
    assert stats["hits"] > 0  # values did come back from Redis through the chaos
    assert stats["invalid_payloads"] == 0


# --------------------------------------------------------------------------- 6b. one lost reply


@pytest.fixture
async def proxied(private_redis: PrivateServer) -> AsyncIterator[tuple[Cache, ChaosProxy]]:
    """A cache whose connections go through a proxy, warmed up (scripts loaded, listening)."""
    with ChaosProxy(private_redis.port) as proxy:
        cache = Cache.from_url(proxy.url, prefix="lost")

        @cache.cached(ttl=60, key="warm")
        async def warm() -> int:
            return 1

        await warm()
        await cache.invalidate("warm")
        try:
            yield cache, proxy
        finally:
            await cache.close()


async def test_a_lease_whose_reply_was_lost_is_not_waited_for(
    proxied: tuple[Cache, ChaosProxy],
) -> None:
    """The lease is taken, its reply is cut; redis-py sends the script once more and finds
    the lease taken (by us): the caller must not wait for its own lease to lapse."""
    cache, proxy = proxied

    @cache.cached(ttl=60, key="item:{key}", lock_ttl=2)
    async def item(key: str) -> dict[str, Any]:
        return expected(key)

    proxy.cut_next(b"*2")  # TakeLease answers a two-element array
    began = time.monotonic()
    assert await item("a") == expected("a")
    took = time.monotonic() - began
    print(f"\nlost TakeLease reply: the call took {took * 1000:.0f} ms")
    assert took <= DEADLINE + SLACK, f"waited {took:.2f} s for its own lease ({cache.stats()})"


async def test_a_lease_taken_after_the_deadline_does_not_stall_the_next_caller(
    proxied: tuple[Cache, ChaosProxy],
) -> None:
    """The server takes the lease but answers after the deadline (a stall right after the
    command, as in SIGSTOP): the caller loads without it; the lease must not then make the
    key's next caller wait for it to lapse (the SIGSTOP and CLIENT PAUSE slow calls)."""
    cache, proxy = proxied

    @cache.cached(ttl=60, key="item:{key}", lock_ttl=2)
    async def item(key: str) -> dict[str, Any]:
        return expected(key)

    proxy.delay_next(b"*2", DEADLINE + 0.2)
    assert await item("b") == expected("b")
    await asyncio.sleep(DEADLINE + 0.3)  # the late reply has come and gone; Redis is fine
    began = time.monotonic()
    assert await item("b") == expected("b")
    took = time.monotonic() - began
    print(f"\norphaned lease: the next call took {took * 1000:.0f} ms")
    assert took <= DEADLINE + SLACK, f"waited {took:.2f} s for an abandoned lease"


async def test_a_lease_request_run_after_its_release_lapses_within_the_probation(
    proxied: tuple[Cache, ChaosProxy],
) -> None:
    """The server runs the lease request late, after the caller gave up on it and after
    its token-checked release already ran (found nothing): the lease it takes belongs to
    nobody. It must lapse within the probation, not hold the key for ``lock_ttl``."""
    cache, proxy = proxied

    @cache.cached(ttl=60, key="item:{key}", lock_ttl=5)
    async def item(key: str) -> dict[str, Any]:
        return expected(key)

    late = DEADLINE + 0.3
    proxy.hold_next_request(b"{item:d}:lease", late)  # only the lease request has that key
    assert await item("d") == expected("d")  # loaded without the lease, within its budget
    raw = redis.Redis(port=proxy.upstream_port)
    try:
        for _ in range(200):  # the held request reaches the server ~0.55 s after it was sent
            if (ttl_ms := raw.pttl("lost:{item:d}:lease")) > 0:
                break
            await asyncio.sleep(0.005)
    finally:
        raw.close()
    assert 0 < ttl_ms <= LEASE_PROBATION * 1000, f"the orphaned lease lives {ttl_ms} ms"
    began = time.monotonic()
    assert await item("d") == expected("d")
    took = time.monotonic() - began
    print(f"\nlease run after its release: {ttl_ms} ms left; next call {took * 1000:.0f} ms")
    assert took <= LEASE_PROBATION + SLACK, f"waited {took:.2f} s for an orphaned lease"


@pytest.mark.parametrize("face", ["async", "sync"])
async def test_a_load_longer_than_the_probation_keeps_its_lease(
    proxied: tuple[Cache, ChaosProxy], face: str
) -> None:
    """The holder's watchdog confirms a lease taken on probation: a load three probations
    long still fills (no refused write), and the next call is a hit."""
    cache, _ = proxied
    loads = Counter[str]()

    @cache.cached(ttl=60, key="slow:{key}", lock_ttl=5)
    async def slow(key: str) -> dict[str, Any]:
        loads[key] += 1
        await asyncio.sleep(3 * LEASE_PROBATION)
        return expected(key)

    @cache.cached(ttl=60, key="slow:{key}", lock_ttl=5)
    def sync_slow(key: str) -> dict[str, Any]:
        loads[key] += 1
        time.sleep(3 * LEASE_PROBATION)
        return expected(key)

    async def call(key: str) -> dict[str, Any]:
        if face == "async":
            return await slow(key)
        return await asyncio.to_thread(sync_slow, key)

    assert await call("e") == expected("e")
    assert await call("e") == expected("e")
    stats = cache.stats()
    assert loads["e"] == 1, stats
    assert stats["stale_sets_refused"] == 0


async def test_a_caller_cancelled_during_its_load_does_not_stall_the_next_one(
    private_redis: PrivateServer,
) -> None:
    """The loading caller is cancelled (a client went away, a ``wait_for`` ran out): its
    lease must not make the key's next caller wait for the lease to lapse."""
    cache = Cache.from_url(private_redis.url, prefix="cancel")

    @cache.cached(ttl=60, key="item:{key}", lock_ttl=2)
    async def item(key: str) -> dict[str, Any]:
        await asyncio.sleep(0.2)  # a slow query
        return expected(key)

    try:
        loading = asyncio.create_task(item("c"))
        await asyncio.sleep(0.05)
        loading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loading
        began = time.monotonic()
        assert await item("c") == expected("c")
        took = time.monotonic() - began
    finally:
        await cache.close()
    print(f"\ncancelled loader: the next call took {took * 1000:.0f} ms (its load: 200 ms)")
    assert took <= 0.2 + DEADLINE + SLACK, f"waited {took:.2f} s for the cancelled caller's lease"


async def test_a_lock_whose_acquire_reply_was_lost_is_still_ours(
    proxied: tuple[Cache, ChaosProxy],
) -> None:
    """The lock is set, its reply is cut; redis-py's retry must not turn that into a
    LockTimeout on a lock this very caller holds (and that then stays held for its TTL)."""
    cache, proxy = proxied
    proxy.cut_next(b":")  # Acquire answers the fencing token, an integer
    async with cache.lock("report", ttl=2, wait=0.5) as lock:
        assert lock.fencing_token is not None


async def test_a_release_whose_reply_was_lost_does_not_raise(
    proxied: tuple[Cache, ChaosProxy],
) -> None:
    """The lock is released, the reply is cut; the retry finds it gone: that is not
    "lost before release" (LockNotOwnedError), it is the release having worked."""
    cache, proxy = proxied
    lock = await cache.lock("report", ttl=5, wait=0).acquire()
    proxy.cut_next(b":")  # Release answers 1
    await lock.release()
    async with cache.lock("report", ttl=5, wait=0):  # and it really is free
        pass
