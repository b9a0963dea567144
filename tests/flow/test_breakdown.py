"""Breakdown protection: single flight, cold-miss leases, no stale sets, stale-while-rebuild,
early refresh (XFetch), bounded lease waits and notified waiters.

Most scenarios run deterministically on the memory backend with the fake clock; the claims
that only mean something across processes (one load per cold key for a fleet, one rebuild
per stale key for a fleet, a lease that dies with a Redis restart) run against real Redis
servers and real worker processes (``tests/workers/herd_worker.py``), and print what they measured.

"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis

from cachekit import BackendUnavailable, Cache, LockTimeout
from cachekit.backends.memory import AsyncMemoryBackend
from cachekit.backends.ops import Delete, Get, Op
from cachekit.testing import FakeClock
from tests.support.fleet import run_fleet
from tests.support.servers import PrivateServer
from tests.support.waiting import WAIT, eventually, eventually_sync

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- helpers


@pytest.fixture
async def fake_cache(clock: FakeClock) -> AsyncIterator[Cache]:
    """A memory cache on the fake clock whose background rebuilds can run."""
    cache = Cache.from_url("memory://", clock=clock, jitter=0)
    yield cache
    await cache.close()


@pytest.fixture
async def other_cache(redis_url: str, prefix: str) -> AsyncIterator[Cache]:
    """A second cache on the same Redis and prefix: another process, as far as leases go."""
    cache = Cache.from_url(redis_url, prefix=prefix)
    yield cache
    await cache.close()


def value_key(prefix: str, logical: str) -> str:
    return f"{prefix}:{{{logical}}}"


def lease_key(prefix: str, logical: str) -> str:
    return f"{prefix}:{{{logical}}}:lease"


class Row:
    """A database row: loads read it, the write path changes it."""

    def __init__(self, value: str) -> None:
        self.value = value
        self.reads = 0

    def read(self) -> str:
        self.reads += 1
        return self.value


# ------------------------------------------------ 1. single flight inside one process


async def test_hundred_coroutines_on_a_cold_key_load_once(any_cache: Cache) -> None:
    loads = 0

    @any_cache.cached(ttl=60, key="product:{pid}")
    async def product(pid: int) -> dict[str, int]:
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.05)
        return {"id": pid, "load": loads}

    started = time.perf_counter()
    values = await asyncio.gather(*(product(5) for _ in range(100)))
    elapsed = time.perf_counter() - started

    assert loads == 1
    assert values == [{"id": 5, "load": 1}] * 100
    stats = any_cache.stats()
    assert stats["loads"] == 1
    assert stats["misses"] == 100  # every caller saw the cold key...
    assert stats["coalesced"] == 99  # ...and all but the leader followed its flight
    print(f"\n100 coroutines, one 50 ms load: all answered in {elapsed * 1000:.1f} ms")


def test_twenty_threads_on_a_cold_key_load_once(any_cache: Cache) -> None:
    loads = 0
    count_lock = threading.Lock()
    barrier = threading.Barrier(20)

    @any_cache.cached(ttl=60, key="product:{pid}")
    def product(pid: int) -> dict[str, int]:
        nonlocal loads
        with count_lock:
            loads += 1
        time.sleep(0.05)
        return {"id": pid}

    def call(_: int) -> tuple[dict[str, int], float]:
        barrier.wait()
        started = time.perf_counter()
        value = product(5)
        return value, time.perf_counter() - started

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(call, range(20)))

    assert loads == 1
    assert [value for value, _ in results] == [{"id": 5}] * 20
    stats = any_cache.stats()
    assert stats["loads"] == 1
    # A thread that reached the cache after the fill got a plain hit instead of joining.
    assert stats["coalesced"] + stats["hits"] == 19
    slowest = max(latency for _, latency in results)
    print(
        f"\n20 threads: 1 load, coalesced={stats['coalesced']} hits={stats['hits']}, "
        f"slowest caller {slowest * 1000:.1f} ms"
    )


# ------------------------------------------------ 2. one load across processes


def run_workers(
    mode: str,
    cfg: dict[str, Any],
    processes: int,
    raw_redis: redis.Redis,
    before_go: Callable[[], None] = lambda: None,
) -> list[dict[str, Any]]:
    """Start ``processes`` workers, release them together, return their reports."""
    argvs = [[mode, json.dumps(cfg)]] * processes
    return run_fleet(
        "tests.workers.herd_worker",
        argvs,
        raw_redis,
        ready=cfg["ready"],
        go=cfg["go"],
        before_go=before_go,
    )


def worker_config(redis_url: str, prefix: str, **extra: Any) -> dict[str, Any]:
    return {
        "url": redis_url,
        "prefix": prefix,
        "counter": f"{prefix}:loads",
        "ready": f"{prefix}:ready",
        "go": f"{prefix}:go",
        **extra,
    }


@pytest.mark.slow
def test_four_processes_of_25_coroutines_load_a_cold_key_once(
    redis_url: str, prefix: str, raw_redis: redis.Redis
) -> None:
    cfg = worker_config(redis_url, prefix, key="herd", ttl=60, load_seconds=0.1, callers=25)
    reports = run_workers("herd", cfg, 4, raw_redis)

    assert int(raw_redis.get(cfg["counter"]) or 0) == 1  # one load in the whole fleet
    values = [value for report in reports for value in report["values"]]
    assert len(values) == 100
    assert all(value == values[0] for value in values)  # the one loader's value, everywhere
    assert values[0]["n"] == 1
    assert sum(report["stats"]["loads"] for report in reports) == 1
    winner = [report for report in reports if report["stats"]["loads"] == 1]
    assert len(winner) == 1
    assert winner[0]["pid"] == values[0]["pid"]

    latencies = sorted(latency for report in reports for latency in report["latencies"])
    waits = sum(report["stats"]["lock_waits"] for report in reports)
    coalesced = sum(report["stats"]["coalesced"] for report in reports)
    print(
        f"\n4 processes x 25 coroutines, one 100 ms load: loads=1, lock_waits={waits}, "
        f"coalesced={coalesced}, median {latencies[50] * 1000:.1f} ms, "
        f"slowest caller {latencies[-1] * 1000:.1f} ms"
    )
    for report in reports:
        print(
            f"  pid {report['pid']}: slowest {max(report['latencies']) * 1000:.1f} ms, "
            f"loads={report['stats']['loads']} lock_waits={report['stats']['lock_waits']} "
            f"coalesced={report['stats']['coalesced']} lock_timeouts="
            f"{report['stats']['lock_timeouts']}"
        )


# ------------------------------------------------ 3. no stale set after invalidate


class GatedLoader:
    """Reads the row, then (on its first call only) blocks until released."""

    def __init__(self, row: Row) -> None:
        self.row = row
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        value = self.row.read()
        if self.calls == 1:
            self.started.set()
            await self.release.wait()
        return value


@pytest.mark.parametrize("via", ["cache.invalidate", "f.invalidate"])
async def test_invalidate_during_a_load_refuses_its_write_back(
    memory_cache: Cache, via: str
) -> None:
    row = Row("old")
    loader = GatedLoader(row)

    @memory_cache.cached(ttl=60, key="row:{rid}")
    async def read_row(rid: int) -> str:
        return await loader()

    first = asyncio.create_task(read_row(1))
    await loader.started.wait()  # the load has read the old row and is still running
    row.value = "new"  # the write path: commit, then invalidate
    if via == "cache.invalidate":
        await memory_cache.invalidate("row:1")
    else:
        await read_row.invalidate(1)
    loader.release.set()

    assert await first == "old"  # its own caller gets what it read...
    assert memory_cache.stats()["stale_sets_refused"] == 1  # ...but it is not cached
    assert await memory_cache.get("row:1") is None
    assert await read_row(1) == "new"  # the next call loads again
    assert await read_row(1) == "new"
    assert row.reads == 2
    stats = memory_cache.stats()
    assert (stats["loads"], stats["hits"], stats["stale_sets_refused"]) == (2, 1, 1)


async def test_lock_false_still_never_writes_the_old_value_back(memory_cache: Cache) -> None:
    """lock=False only stops callers from waiting on others' loads: writes stay leased."""
    row = Row("old")
    loader = GatedLoader(row)

    @memory_cache.cached(ttl=60, key="row:{rid}", lock=False)
    async def read_row(rid: int) -> str:
        return await loader()

    first = asyncio.create_task(read_row(1))
    await loader.started.wait()
    row.value = "new"
    await read_row.invalidate(1)
    loader.release.set()

    assert await first == "old"
    assert memory_cache.stats()["stale_sets_refused"] == 1
    assert await read_row(1) == "new"  # the invalidation stands
    assert row.reads == 2


async def test_a_read_after_invalidate_never_joins_a_load_begun_before_it(
    memory_cache: Cache,
) -> None:
    """Read-your-writes in one process: invalidate() detaches the key's running flight."""
    row = Row("old")
    loader = GatedLoader(row)

    @memory_cache.cached(ttl=60, key="row:{rid}")
    async def read_row(rid: int) -> str:
        return await loader() if row.reads == 0 else row.read()

    first = asyncio.create_task(read_row(1))
    await loader.started.wait()  # a load of the old row is in flight
    row.value = "new"
    await read_row.invalidate(1)  # the write path, after the commit
    assert await read_row(1) == "new"  # a new flight, not the old one
    loader.release.set()
    assert await first == "old"
    assert await read_row(1) == "new"


async def test_a_caller_whose_read_failed_gets_a_value_when_the_flight_it_joined_was_refused(
    memory_cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller whose GET fails joins the key's running flight. When that flight's write-back
    is refused (its lease was lost meanwhile) the joiner loads for itself and gets a value,
    never the flight's internal wrapper (seen once under cut replies in the chaos tests)."""
    row = Row("v")
    loader = GatedLoader(row)

    @memory_cache.cached(ttl=60, key="row:{rid}")
    async def read_row(rid: int) -> str:
        return await loader()

    first = asyncio.create_task(read_row(1))
    await loader.started.wait()  # the flight holds the lease and is loading
    backend = memory_cache.bound().aio.backend
    assert isinstance(backend, AsyncMemoryBackend)
    real_run = AsyncMemoryBackend.run
    lease = lease_key(memory_cache.bound().ctx.keyspace.prefix, "row:1")
    assert await real_run(backend, Delete([lease])) == 1  # the lease is lost (not invalidated)

    async def reads_fail(self: AsyncMemoryBackend, op: Op[Any]) -> Any:
        if isinstance(op, Get):
            raise BackendUnavailable("test: this read fails")
        return await real_run(self, op)

    monkeypatch.setattr(AsyncMemoryBackend, "run", reads_fail)
    second = asyncio.create_task(read_row(1))
    await eventually(lambda: memory_cache.stats()["coalesced"] >= 1, "the second call joins")
    monkeypatch.setattr(AsyncMemoryBackend, "run", real_run)
    loader.release.set()
    assert await first == "v"
    assert await second == "v"
    assert memory_cache.stats()["stale_sets_refused"] == 1


def test_invalidate_during_a_sync_load_refuses_its_write_back(memory_cache: Cache) -> None:
    row = Row("old")
    started, release = threading.Event(), threading.Event()

    @memory_cache.cached(ttl=60, key="row:{rid}")
    def read_row(rid: int) -> str:
        value = row.read()
        if row.reads == 1:
            started.set()
            assert release.wait(WAIT)
        return value

    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(read_row, 1)
        assert started.wait(WAIT)
        row.value = "new"
        memory_cache.sync.invalidate("row:1")
        release.set()
        assert first.result(WAIT) == "old"

    assert memory_cache.stats()["stale_sets_refused"] == 1
    assert read_row(1) == "new"
    assert row.reads == 2


async def test_invalidate_during_a_load_refuses_its_write_back_on_redis(
    redis_cache: Cache, prefix: str, raw_redis: redis.Redis
) -> None:
    row = Row("old")
    loader = GatedLoader(row)

    @redis_cache.cached(ttl=60, key="row:{rid}")
    async def read_row(rid: int) -> str:
        return await loader()

    first = asyncio.create_task(read_row(1))
    await loader.started.wait()
    assert raw_redis.exists(lease_key(prefix, "row:1")) == 1  # the load holds the lease
    row.value = "new"
    await read_row.invalidate(1)
    assert raw_redis.exists(lease_key(prefix, "row:1")) == 0  # voided
    loader.release.set()

    assert await first == "old"
    assert redis_cache.stats()["stale_sets_refused"] == 1
    assert raw_redis.exists(value_key(prefix, "row:1")) == 0
    assert await read_row(1) == "new"
    assert await read_row(1) == "new"
    assert row.reads == 2


# ------------------------------------------------ 4. Redis restart during a load


async def reconnect(cache: Cache) -> None:
    """Read until a read no longer fails: the pooled connections of the dead server are gone.

    The client is configured without retries, so the first command on each connection that
    predates a restart fails (a read fails open: counted as ``fallbacks``).
    """
    for _ in range(20):
        before = cache.stats()["fallbacks"]
        await cache.get("probe")
        if cache.stats()["fallbacks"] == before:
            return
    raise AssertionError("the cache did not reconnect")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("second_writer", "first_reconnected"),
    [
        ("decorated call", True),
        ("raw set", True),
        ("nobody", True),
        ("decorated call", False),
    ],
)
async def test_lease_dies_with_a_restart_so_the_write_back_is_refused(
    private_redis: PrivateServer, second_writer: str, first_reconnected: bool
) -> None:
    first = Cache.from_url(private_redis.url, prefix="restart")
    second = Cache.from_url(private_redis.url, prefix="restart")
    gate = GatedLoader(Row("old"))

    @first.cached(ttl=60, key="row")
    async def read_first() -> str:
        return await gate()

    @second.cached(ttl=60, key="row")
    async def read_second() -> str:
        return "new"

    try:
        task = asyncio.create_task(read_first())
        await gate.started.wait()  # the first load holds its lease...
        private_redis.kill()  # ...which dies with the server (no persistence)
        private_redis.start()
        await reconnect(second)
        if second_writer == "decorated call":
            assert await read_second() == "new"
        elif second_writer == "raw set":
            await second.set("row", "new", ttl=60)
        if first_reconnected:
            await reconnect(first)
        gate.release.set()

        assert await task == "old"  # the caller still gets its value
        stats = first.stats()
        # The fill reached the new server (a connection that died with the old one is
        # replaced by one immediate retry), whose lease check refused it.
        assert (stats["stale_sets_refused"], stats["write_errors"]) == (1, 0), stats
        expected = None if second_writer == "nobody" else "new"
        assert await first.get("row") == expected  # never "old"
        assert await second.get("row") == expected
    finally:
        await first.close()
        await second.close()


# ------------------------------------------------ 5. stale-while-rebuild


async def test_background_rebuild_is_counted(clock: FakeClock) -> None:
    cache = Cache.from_url("memory://", clock=clock, jitter=0)  # no workaround
    loads = 0

    @cache.cached(ttl=10, stale=60, key="k")
    async def f() -> int:
        nonlocal loads
        loads += 1
        return loads

    try:
        assert await f() == 1
        clock.advance(15)
        assert await f() == 1  # stale hit, rebuild spawned
        for _ in range(50):
            await asyncio.sleep(0)
        assert loads == 2  # fails: the rebuild raised KeyError('rebuilds')
        assert cache.stats()["rebuilds"] == 1
    finally:
        await cache.close()


async def test_stale_value_is_served_while_one_rebuild_runs(
    fake_cache: Cache, clock: FakeClock
) -> None:
    row = Row("v1")

    @fake_cache.cached(ttl=10, stale=60, key="row")
    async def read_row() -> str:
        return row.read()

    assert await read_row() == "v1"
    row.value = "v2"
    clock.advance(15)  # past ttl, inside the stale window

    assert await read_row() == "v1"  # at once: the old value
    stats = fake_cache.stats()
    assert (stats["stale_hits"], stats["loads"]) == (1, 1)  # the rebuild has not run yet
    await eventually(lambda: fake_cache.stats()["loads"] == 2, "the rebuild loads")
    await eventually(lambda: not fake_cache.bound().aio._tasks, "the rebuild task ends")
    assert fake_cache.stats()["rebuilds"] == 1
    assert await read_row() == "v2"  # a fresh hit now
    stats = fake_cache.stats()
    assert (stats["hits"], stats["stale_hits"], stats["loads"], stats["rebuilds"]) == (1, 1, 2, 1)
    assert row.reads == 2


async def test_many_concurrent_stale_reads_start_one_rebuild(
    fake_cache: Cache, clock: FakeClock
) -> None:
    row = Row("v1")

    @fake_cache.cached(ttl=10, stale=60, key="row")
    async def read_row() -> str:
        value = row.read()
        await asyncio.sleep(0.02)  # the rebuild overlaps the reads
        return value

    assert await read_row() == "v1"
    row.value = "v2"
    clock.advance(15)
    values = await asyncio.gather(*(read_row() for _ in range(50)))

    assert values == ["v1"] * 50
    await eventually(lambda: fake_cache.stats()["loads"] == 2, "the rebuild loads")
    await eventually(lambda: not fake_cache.bound().aio._tasks, "the rebuild task ends")
    stats = fake_cache.stats()
    assert (stats["stale_hits"], stats["rebuilds"], stats["loads"]) == (50, 1, 2)
    assert await read_row() == "v2"
    assert row.reads == 2


def test_many_threads_reading_a_stale_value_start_one_rebuild(clock: FakeClock) -> None:
    cache = Cache.from_url("memory://", clock=clock, jitter=0)
    row = Row("v1")
    reads_lock = threading.Lock()
    barrier = threading.Barrier(20)

    @cache.cached(ttl=10, stale=60, key="row")
    def read_row() -> str:
        with reads_lock:
            value = row.read()
        time.sleep(0.05)
        return value

    def call(_: int) -> str:
        barrier.wait()
        return read_row()

    try:
        assert read_row() == "v1"
        row.value = "v2"
        clock.advance(15)
        with ThreadPoolExecutor(20) as pool:
            values = list(pool.map(call, range(20)))
        assert values == ["v1"] * 20  # nobody waited for the 50 ms rebuild
        eventually_sync(lambda: read_row() == "v2", "the rebuild fills the key")
        stats = cache.stats()
        assert (stats["rebuilds"], stats["loads"]) == (1, 2)
        assert stats["stale_hits"] >= 20
        assert row.reads == 2
    finally:
        cache.sync.close()


async def test_past_ttl_plus_stale_is_a_plain_miss(fake_cache: Cache, clock: FakeClock) -> None:
    row = Row("v1")

    @fake_cache.cached(ttl=10, stale=60, key="row")
    async def read_row() -> str:
        return row.read()

    assert await read_row() == "v1"
    row.value = "v2"
    clock.advance(70.01)
    assert await read_row() == "v2"  # loaded inline, no stale value served
    stats = fake_cache.stats()
    assert (stats["misses"], stats["stale_hits"], stats["rebuilds"], stats["loads"]) == (2, 0, 0, 2)


async def test_stale_if_error_keeps_serving_the_old_value(
    fake_cache: Cache, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    row = Row("v1")
    down = False

    @fake_cache.cached(ttl=10, stale=60, key="row")
    async def read_row() -> str:
        if down:
            raise ConnectionError("database down")
        return row.read()

    assert await read_row() == "v1"
    down = True
    clock.advance(15)
    for attempt in range(1, 4):
        assert await read_row() == "v1"  # no exception reaches the caller
        errors = functools.partial(lambda n: fake_cache.stats()["load_errors"] == n, attempt)
        await eventually(errors, "the rebuild fails")
        await eventually(lambda: not fake_cache.bound().aio._tasks, "the rebuild task ends")
    stats = fake_cache.stats()
    assert (stats["stale_hits"], stats["rebuilds"], stats["load_errors"]) == (3, 3, 3)
    assert stats["loads"] == 1
    assert "background rebuild" in caplog.text
    assert "database down" in caplog.text

    down, row.value = False, "v2"  # the database is back: the next stale read rebuilds
    assert await read_row() == "v1"
    await eventually(lambda: fake_cache.stats()["loads"] == 2, "the rebuild loads")
    await eventually(lambda: not fake_cache.bound().aio._tasks, "the rebuild task ends")
    assert await read_row() == "v2"


@pytest.mark.slow
def test_one_rebuild_across_two_processes(
    redis_url: str, prefix: str, raw_redis: redis.Redis
) -> None:
    cfg = worker_config(
        redis_url, prefix, key="stale", ttl=0.2, stale=5, load_seconds=0.3, callers=20
    )
    primer = Cache.from_url(redis_url, prefix=prefix)

    @primer.cached(ttl=0.2, stale=5, key="stale")
    def prime() -> dict[str, int]:
        return {"pid": 0, "n": int(raw_redis.incr(cfg["counter"]))}

    try:
        primed = prime()
        primed_at = time.monotonic()
    finally:
        primer.sync.close()

    def let_it_go_stale() -> None:
        time.sleep(max(0.0, 0.25 - (time.monotonic() - primed_at)))

    reports = run_workers("stale", cfg, 2, raw_redis, before_go=let_it_go_stale)

    assert primed == {"pid": 0, "n": 1}
    assert int(raw_redis.get(cfg["counter"]) or 0) == 2  # the priming load + one rebuild
    values = [value for report in reports for value in report["values"]]
    assert values == [primed] * 40  # every caller got the old value at once
    assert all(report["changed"] for report in reports)  # both saw the one rebuild land
    assert sum(report["stats"]["rebuilds"] for report in reports) == 1
    assert sum(report["stats"]["loads"] for report in reports) == 1
    slowest = max(latency for report in reports for latency in report["latencies"])
    stale_hits = [report["stats"]["stale_hits"] for report in reports]
    print(
        f"\n2 processes x 20 stale reads (300 ms rebuild): rebuilds=1 fleet-wide, "
        f"stale_hits={stale_hits}, slowest stale read {slowest * 1000:.1f} ms"
    )


# ------------------------------------------------ 6. early refresh (XFetch)


def xfetch(now: float, expires: float, delta: float, beta: float, rng: random.Random) -> bool:
    """The decision the cache should take, drawn from a twin of its random source."""
    u = 1.0 - rng.random()
    return now - delta * beta * math.log(u) >= expires


@pytest.mark.parametrize("seed", [7, 9, 2024])
async def test_early_refresh_triggers_only_near_expiry(seed: int) -> None:
    clock = FakeClock()
    cache = Cache.from_url("memory://", clock=clock, rng=random.Random(seed), jitter=0)
    oracle = random.Random(seed)
    load_time, ttl = 2.0, 100.0
    loads = 0

    @cache.cached(ttl=ttl, early=1.0, key="report")
    async def report() -> int:
        nonlocal loads
        clock.advance(load_time)  # the load takes 2 s of fake time
        loads += 1
        return loads

    try:
        assert await report() == 1
        expires = clock.time() + ttl

        # Far from expiry (remaining 90 s .. 20 s): never refreshed early.
        for _ in range(8):
            clock.advance(10)
            assert not xfetch(clock.time(), expires, load_time, 1.0, oracle)
            assert await report() == 1
        await asyncio.sleep(0)
        assert loads == 1
        assert cache.stats()["rebuilds"] == 0

        # Step towards expiry one fake second at a time: the first call whose draw says
        # "refresh" (predicted by the twin generator) triggers it, and still returns at once.
        clock.advance(expires - clock.time() - 20)
        triggered_at = None
        while clock.time() < expires:
            predicted = xfetch(clock.time(), expires, load_time, 1.0, oracle)
            assert await report() == 1  # the old value, immediately
            assert loads == 1  # the refresh runs in the background
            if predicted:
                triggered_at = expires - clock.time()
                break
            await asyncio.sleep(0)
            assert cache.stats()["rebuilds"] == 0
            clock.advance(1)
        assert triggered_at is not None, "no early refresh before expiry"
        await eventually(lambda: loads == 2, "the early refresh loads")
        await eventually(lambda: not cache.bound().aio._tasks, "the refresh task ends")
        stats = cache.stats()
        assert (stats["rebuilds"], stats["stale_hits"], stats["misses"]) == (1, 0, 1)
        assert await report() == 2  # the refreshed value, before the old one ever expired
        print(f"\nseed {seed}: early refresh {triggered_at:.0f} s before expiry (load 2 s)")
    finally:
        await cache.close()


async def test_no_early_refresh_when_early_is_zero(fake_cache: Cache, clock: FakeClock) -> None:
    loads = 0

    @fake_cache.cached(ttl=100, key="report", lock_ttl=60)
    async def report() -> int:
        nonlocal loads
        clock.advance(50)  # a very slow load: with early=1 this would refresh at once
        loads += 1
        return loads

    await report()
    for _ in range(99):
        clock.advance(0.5)
        assert await report() == 1
    await asyncio.sleep(0)
    assert fake_cache.stats()["rebuilds"] == 0
    assert loads == 1


@pytest.mark.parametrize("face", ["async", "sync"])
async def test_a_load_slower_than_its_lease_is_still_cached(redis_cache: Cache, face: str) -> None:
    """The lease is renewed (every lock_ttl / 3) while the load runs, so it never lapses."""
    loads = 0

    def slow() -> int:
        nonlocal loads
        loads += 1
        time.sleep(1.0)  # more than three lease lifetimes
        return loads

    if face == "async":

        @redis_cache.cached(ttl=600, key="report", lock_ttl=0.3)
        async def report() -> int:
            return await asyncio.to_thread(slow)

        assert await report() == 1
        assert await report() == 1
    else:

        @redis_cache.cached(ttl=600, key="report", lock_ttl=0.3)
        def report_sync() -> int:
            return slow()

        assert await asyncio.to_thread(report_sync) == 1
        assert await asyncio.to_thread(report_sync) == 1
    assert loads == 1
    assert redis_cache.stats()["stale_sets_refused"] == 0


# ------------------------------------------------ 7, 8. leases held by someone else


async def test_lock_timeout_load_serves_without_caching(
    redis_cache: Cache, prefix: str, raw_redis: redis.Redis
) -> None:
    raw_redis.set(lease_key(prefix, "row:1"), b"someone-else", px=30_000)

    @redis_cache.cached(ttl=60, key="row:{rid}", lock_wait=0.3, on_lock_timeout="load")
    async def read_row(rid: int) -> str:
        return f"row {rid}"

    started = time.perf_counter()
    assert await read_row(1) == "row 1"
    elapsed = time.perf_counter() - started
    assert raw_redis.exists(value_key(prefix, "row:1")) == 0  # the fill is the holder's
    assert raw_redis.get(lease_key(prefix, "row:1")) == b"someone-else"
    stats = redis_cache.stats()
    assert (stats["lock_waits"], stats["lock_timeouts"], stats["loads"]) == (1, 1, 1)
    print(f"\nlock_wait=0.3: gave up and loaded after {elapsed * 1000:.0f} ms")


@pytest.mark.parametrize("face", ["async", "sync"])
async def test_lock_timeout_raise(
    redis_cache: Cache, prefix: str, raw_redis: redis.Redis, face: str
) -> None:
    raw_redis.set(lease_key(prefix, "row:1"), b"someone-else", px=30_000)
    loads = 0

    def load() -> str:
        nonlocal loads
        loads += 1
        return "row"

    policy: dict[str, Any] = {"key": "row:{rid}", "lock_wait": 0.3, "on_lock_timeout": "raise"}
    if face == "async":

        @redis_cache.cached(**policy)
        async def aread(rid: int) -> str:
            return load()

        with pytest.raises(LockTimeout):
            await aread(1)
    else:

        @redis_cache.cached(**policy)
        def read(rid: int) -> str:
            return load()

        with pytest.raises(LockTimeout):
            await asyncio.to_thread(read, 1)
    assert loads == 0
    stats = redis_cache.stats()
    assert (stats["lock_waits"], stats["lock_timeouts"], stats["loads"]) == (1, 1, 0)


async def test_a_stale_value_seen_beats_a_lock_timeout(
    redis_cache: Cache, prefix: str, raw_redis: redis.Redis
) -> None:
    """A miss that saw an expired value serves it when its wait runs out (no load, no raise).

    The entry was written by a function with a stale window; this one has none, so to it
    the entry is expired: a miss, with the old value "seen".
    """
    loads = 0

    @redis_cache.cached(ttl=0.05, stale=30, key="row")
    async def writer() -> str:
        return "old"

    @redis_cache.cached(ttl=60, key="row", lock_wait=0.3, on_lock_timeout="raise")
    async def reader() -> str:
        nonlocal loads
        loads += 1
        return "new"

    assert await writer() == "old"
    await asyncio.sleep(0.1)  # logically expired; physically kept for the stale window
    raw_redis.set(lease_key(prefix, "row"), b"someone-else", px=30_000)
    assert await reader() == "old"
    stats = redis_cache.stats()
    assert (stats["lock_waits"], stats["lock_timeouts"], loads) == (1, 1, 0)


async def test_a_dead_holders_lease_lapses_and_the_waiter_loads(
    redis_cache: Cache, prefix: str, raw_redis: redis.Redis
) -> None:
    raw_redis.set(lease_key(prefix, "row:1"), b"crashed-process", px=300)

    @redis_cache.cached(ttl=60, key="row:{rid}", lock_wait=5)
    async def read_row(rid: int) -> str:
        return f"row {rid}"

    started = time.perf_counter()
    assert await read_row(1) == "row 1"
    elapsed = time.perf_counter() - started
    stats = redis_cache.stats()
    assert (stats["lock_waits"], stats["lock_timeouts"], stats["loads"]) == (1, 0, 1)
    assert raw_redis.exists(value_key(prefix, "row:1")) == 1  # it filled under its own lease
    assert raw_redis.exists(lease_key(prefix, "row:1")) == 0
    print(f"\nlease PX 300 of a dead holder: the waiter loaded after {elapsed * 1000:.0f} ms")


# ------------------------------------------------ 9. refresh() and wake-ups


async def test_refresh_overwrites(memory_cache: Cache) -> None:
    row = Row("v1")

    @memory_cache.cached(ttl=60, key="row")
    async def read_row() -> str:
        return row.read()

    assert await read_row() == "v1"
    row.value = "v2"
    assert await read_row() == "v1"
    assert await read_row.refresh() == "v2"
    assert await read_row() == "v2"
    stats = memory_cache.stats()
    assert (stats["loads"], stats["hits"]) == (2, 2)


async def test_refresh_voids_a_load_that_began_earlier(memory_cache: Cache) -> None:
    row = Row("old")
    gate = GatedLoader(row)

    @memory_cache.cached(ttl=60, key="row")
    async def read_row() -> str:
        return await gate()

    first = asyncio.create_task(read_row())
    await gate.started.wait()
    row.value = "new"
    assert await read_row.refresh() == "new"
    gate.release.set()
    assert await first == "old"
    assert memory_cache.stats()["stale_sets_refused"] == 1
    assert await read_row() == "new"


async def test_a_fill_wakes_a_waiter_in_another_process(
    redis_cache: Cache, other_cache: Cache
) -> None:
    gate = GatedLoader(Row("loaded by the first"))
    other_loads = 0

    @redis_cache.cached(ttl=60, key="row")
    async def first() -> str:
        return await gate()

    @other_cache.cached(ttl=60, key="row", lock_wait=5)
    async def second() -> str:
        nonlocal other_loads
        other_loads += 1
        return "loaded by the second"

    holder = asyncio.create_task(first())
    await gate.started.wait()
    waiter = asyncio.create_task(second())
    await eventually(lambda: other_cache.stats()["lock_waits"] == 1, "the second waits")
    released = time.perf_counter()
    gate.release.set()
    assert await waiter == "loaded by the first"
    woke = time.perf_counter() - released
    assert await holder == "loaded by the first"
    assert other_loads == 0
    stats = other_cache.stats()
    assert (stats["lock_waits"], stats["lock_timeouts"], stats["loads"]) == (1, 0, 0)
    print(f"\nfill -> waiter in another cache answered {woke * 1000:.1f} ms later")


async def test_invalidate_wakes_a_waiter(
    redis_cache: Cache, other_cache: Cache, prefix: str, raw_redis: redis.Redis
) -> None:
    raw_redis.set(lease_key(prefix, "row"), b"someone-else", px=30_000)

    @other_cache.cached(ttl=60, key="row", lock_wait=3)
    async def read_row() -> str:
        return "loaded"

    waiter = asyncio.create_task(read_row())
    await eventually(lambda: other_cache.stats()["lock_waits"] == 1, "the waiter waits")
    invalidated = time.perf_counter()
    await redis_cache.invalidate("row")  # voids the lease and announces the key
    assert await waiter == "loaded"
    woke = time.perf_counter() - invalidated
    stats = other_cache.stats()
    # Woken, it took the (voided) lease and filled; a timed-out waiter would not have.
    assert (stats["lock_waits"], stats["lock_timeouts"], stats["loads"]) == (1, 0, 1)
    assert raw_redis.exists(value_key(prefix, "row")) == 1
    print(f"\ninvalidate -> waiter loaded {woke * 1000:.1f} ms later (lock_wait 3 s)")
