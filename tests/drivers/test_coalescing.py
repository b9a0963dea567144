"""Coalesced reads: the callers of one process that ask for a key while a GET of it is in
flight share that GET's reply, never one older than a write this process completed
before they asked.

The units drive the read path (:func:`cachekit.flow.read.cached_read`) on the two faces over
the memory backend, wrapped so that a GET can be held "on the wire": the store answers it
at once, the caller gets the reply only when the test releases it. Who shares what is
then decided by the order of events alone, never by timing. The fleet tests count what a
herd of worker processes (``tests/workers/herd_worker.py``) sends to a private server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
import redis

from cachekit import Cache
from cachekit.backends.memory import AsyncMemoryBackend, MemoryStore, SyncMemoryBackend
from cachekit.backends.ops import Get, Op
from cachekit.drivers.drive import AsyncDriver, SyncDriver
from cachekit.drivers.notify import Waiters
from cachekit.drivers.singleflight import WRITES, SyncReads
from cachekit.exceptions import BackendUnavailable
from cachekit.flow.context import Context, Policy
from cachekit.flow.effects import Flow
from cachekit.flow.keys import KeySpace
from cachekit.flow.raw import delete, invalidate, set_value
from cachekit.flow.read import cached_read, refresh
from cachekit.serializers import JsonSerializer
from cachekit.stats import LogOnce, Stats
from cachekit.testing import FakeClock
from tests.support.fleet import run_fleet
from tests.support.servers import PrivateServer
from tests.support.waiting import WAIT, eventually, eventually_sync

T = TypeVar("T")
KEY = "product:5"
POLICY = Policy(name="tests.product", ttl=60, stale=30)


class Hold:
    """The next GET it is armed for is answered by the store at once (the reply is "on the
    wire") and handed to its caller only when released, with ``error`` if one is set."""

    def __init__(self) -> None:
        self.gets = 0
        self.armed = False
        self.held = threading.Event()
        self.released = threading.Event()
        self.error: Exception | None = None
        self._lock = threading.Lock()

    def arm(self) -> None:
        self.armed = True

    def release(self, error: Exception | None = None) -> None:
        self.error = error
        self.released.set()

    def count(self) -> bool:
        """Count a GET; whether it is the one to hold."""
        with self._lock:
            self.gets += 1
            hold, self.armed = self.armed, False
            return hold


class HeldSync:
    """A sync backend whose GETs go through a :class:`Hold`."""

    def __init__(self, inner: SyncMemoryBackend, hold: Hold) -> None:
        self.inner, self.hold = inner, hold

    def run(self, op: Op[T]) -> T:
        reply = self.inner.run(op)
        if isinstance(op, Get) and self.hold.count():
            self.hold.held.set()
            assert self.hold.released.wait(2 * WAIT)
            if self.hold.error is not None:
                raise self.hold.error
        return reply

    def close(self) -> None:
        self.inner.close()


class HeldAsync:
    """An async backend whose GETs go through a :class:`Hold`."""

    def __init__(self, inner: AsyncMemoryBackend, hold: Hold) -> None:
        self.inner, self.hold = inner, hold

    async def run(self, op: Op[T]) -> T:
        reply = await self.inner.run(op)
        if isinstance(op, Get) and self.hold.count():
            self.hold.held.set()
            deadline = time.monotonic() + 2 * WAIT  # the test's own waits give up first
            while not self.hold.released.is_set():
                assert time.monotonic() < deadline, "the test never released the held GET"
                await asyncio.sleep(0.001)
            if self.hold.error is not None:
                raise self.hold.error
        return reply

    async def close(self) -> None:
        await self.inner.close()


@dataclass
class Rig:
    """Both faces of one process over one memory store, and the data the loader reads."""

    clock: FakeClock = field(default_factory=FakeClock)
    hold: Hold = field(default_factory=Hold)
    stats: Stats = field(default_factory=Stats)
    source: str = "loaded"  # what a load returns

    def __post_init__(self) -> None:
        store = MemoryStore(clock=self.clock)
        waiters = Waiters()
        store.subscribers.append(waiters.on_message)
        log = LogOnce(logging.getLogger("tests.coalescing"))
        shared = (waiters, None, self.stats, log)
        self.sync = SyncDriver(HeldSync(SyncMemoryBackend(store), self.hold), *shared)
        self.aio = AsyncDriver(HeldAsync(AsyncMemoryBackend(store), self.hold), *shared)
        self.ctx = Context(
            keyspace=KeySpace("t"),
            serializer=JsonSerializer(),
            default_ttl=60,
            clock=self.clock,
            stats=self.stats,
            log=log,
            jitter=0,
        )

    def load(self) -> str:
        return self.source

    async def aload(self) -> str:
        await asyncio.sleep(0)  # a load that suspends, as a real one does
        return self.source

    def read(self) -> Any:
        return self.sync.drive(cached_read(self.ctx, POLICY, KEY), self.load)

    async def aread(self) -> Any:
        return await self.aio.drive(cached_read(self.ctx, POLICY, KEY), self.aload)

    def count(self, name: str) -> int:
        return self.stats.snapshot()[name]


@pytest.fixture
def rig() -> Iterator[Rig]:
    rig = Rig()
    yield rig
    rig.hold.release()  # never leave a thread parked
    rig.sync.close()
    rig.aio.close_sync()


# ------------------------------------------------ one GET for a herd of one process


async def test_a_loops_herd_shares_one_get(rig: Rig) -> None:
    await rig.aio.drive(set_value(rig.ctx, KEY, "v1", 60))
    rig.hold.arm()
    first = asyncio.create_task(rig.aread())
    await eventually(rig.hold.held.is_set, "the first GET is on the wire")
    others = [asyncio.create_task(rig.aread()) for _ in range(19)]
    await eventually(lambda: rig.count("reads_coalesced") == 19, "19 callers join it")
    rig.hold.release()

    assert await asyncio.gather(first, *others) == ["v1"] * 20
    assert rig.hold.gets == 1
    assert rig.count("hits") == 20  # each caller decoded the shared reply itself


def test_threads_share_one_get(rig: Rig) -> None:
    rig.sync.drive(set_value(rig.ctx, KEY, "v1", 60))
    rig.hold.arm()
    with ThreadPoolExecutor(10) as pool:
        first = pool.submit(rig.read)
        eventually_sync(rig.hold.held.is_set, "the first GET is on the wire")
        others = [pool.submit(rig.read) for _ in range(9)]
        eventually_sync(lambda: rig.count("reads_coalesced") == 9, "9 threads join it")
        rig.hold.release()
        values = [f.result(WAIT) for f in [first, *others]]

    assert values == ["v1"] * 10
    assert rig.hold.gets == 1
    assert rig.count("hits") == 10


async def test_a_stale_herd_shares_one_get_and_one_rebuild(rig: Rig) -> None:
    await rig.aio.drive(cached_read(rig.ctx, POLICY, KEY), rig.aload)  # loads "loaded"
    rig.clock.advance(61)  # past ttl, inside the stale window
    rig.source = "rebuilt"
    gets_before = rig.hold.gets
    rig.hold.arm()
    first = asyncio.create_task(rig.aread())
    await eventually(rig.hold.held.is_set, "the first GET is on the wire")
    others = [asyncio.create_task(rig.aread()) for _ in range(9)]
    await eventually(lambda: rig.count("reads_coalesced") == 9, "9 callers join it")
    rig.hold.release()

    assert await asyncio.gather(first, *others) == ["loaded"] * 10  # served stale at once
    assert rig.hold.gets - gets_before == 1
    assert rig.count("stale_hits") == 10
    # The memory store answers without suspending: once the rebuild has loaded, it has filled.
    await eventually(lambda: rig.count("loads") == 2, "the one rebuild loads")
    assert rig.count("rebuilds") == 1
    assert await rig.aread() == "rebuilt"


# ------------------------------------------------ never older than a completed write


def _set(rig: Rig) -> Flow[Any]:
    return set_value(rig.ctx, KEY, "v2", 60)


def _delete(rig: Rig) -> Flow[Any]:
    return delete(rig.ctx, KEY)


def _invalidate(rig: Rig) -> Flow[Any]:
    return invalidate(rig.ctx, KEY)


def _refresh(rig: Rig) -> Flow[Any]:
    return refresh(rig.ctx, POLICY, KEY)


# writer -> (its flow, whether the other face runs it, what a caller after it must get)
WRITERS: dict[str, tuple[Callable[[Rig], Flow[Any]], bool, str]] = {
    "set": (_set, False, "v2"),
    "delete": (_delete, False, "v2"),
    "invalidate": (_invalidate, False, "v2"),
    "refresh (a fill)": (_refresh, False, "v2"),
    "set on the other face": (_set, True, "v2"),
    "invalidate on the other face": (_invalidate, True, "v2"),
}


@pytest.mark.parametrize("writer", list(WRITERS))
async def test_a_caller_after_a_write_never_shares_a_get_sent_before_it(
    rig: Rig, writer: str
) -> None:
    flow, other_face, expected = WRITERS[writer]
    await rig.aio.drive(set_value(rig.ctx, KEY, "v1", 60))
    rig.source = "v2"  # the database after the write (loads and refreshes read it)
    rig.hold.arm()
    first = asyncio.create_task(rig.aread())  # its GET read "v1", the reply is held
    await eventually(rig.hold.held.is_set, "the first GET is on the wire")
    early = asyncio.create_task(rig.aread())  # asks before the write: may share it
    await eventually(lambda: rig.count("reads_coalesced") == 1, "a caller joins it")

    if other_face:
        await asyncio.to_thread(rig.sync.drive, flow(rig), rig.load)
    else:
        await rig.aio.drive(flow(rig), rig.aload)
    # Asked after the write returned: its own GET (not held), while the first is still held.
    assert await asyncio.wait_for(rig.aread(), WAIT) == expected
    assert not first.done()
    assert rig.count("reads_coalesced") == 1

    rig.hold.release()
    assert await first == "v1"  # asked before the write completed: either answer is right
    assert await early == "v1"


@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_thread_after_a_write_never_shares_a_get_sent_before_it(rig: Rig, writer: str) -> None:
    flow, other_face, expected = WRITERS[writer]
    rig.sync.drive(set_value(rig.ctx, KEY, "v1", 60))
    rig.source = "v2"
    rig.hold.arm()
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(rig.read)
        eventually_sync(rig.hold.held.is_set, "the first GET is on the wire")
        early = pool.submit(rig.read)
        eventually_sync(lambda: rig.count("reads_coalesced") == 1, "a thread joins it")

        if other_face:
            asyncio.run(rig.aio.drive(flow(rig), rig.aload))
        else:
            rig.sync.drive(flow(rig), rig.load)
        assert pool.submit(rig.read).result(WAIT) == expected
        assert not first.done()
        assert rig.count("reads_coalesced") == 1

        rig.hold.release()
        assert first.result(WAIT) == "v1"
        assert early.result(WAIT) == "v1"


async def test_a_fill_voids_the_sharing_of_a_stale_read(rig: Rig) -> None:
    """After this process's flight filled a newer value, a caller must not be served the
    stale value that a GET sent before the fill read (monotonic reads)."""
    await rig.aio.drive(cached_read(rig.ctx, POLICY, KEY), rig.aload)  # "loaded"
    rig.clock.advance(61)  # stale now
    rig.hold.arm()
    first = asyncio.create_task(rig.aread())  # reads the stale "loaded", held
    await eventually(rig.hold.held.is_set, "the first GET is on the wire")
    rig.source = "v2"
    assert await rig.aio.drive(refresh(rig.ctx, POLICY, KEY), rig.aload) == "v2"

    assert await asyncio.wait_for(rig.aread(), WAIT) == "v2"
    rig.hold.release()
    assert await first == "loaded"


# ------------------------------------------------ a reader that fails or is cancelled


async def test_a_cancelled_reader_leaves_its_followers_to_read_again(rig: Rig) -> None:
    await rig.aio.drive(set_value(rig.ctx, KEY, "v1", 60))
    rig.hold.arm()
    first = asyncio.create_task(rig.aread())
    await eventually(rig.hold.held.is_set, "the first GET is on the wire")
    follower = asyncio.create_task(rig.aread())
    await eventually(lambda: rig.count("reads_coalesced") == 1, "a caller joins it")

    first.cancel()
    assert await follower == "v1"  # not cancelled: it sent a GET of its own
    assert rig.hold.gets == 2
    with pytest.raises(asyncio.CancelledError):
        await first
    rig.hold.release()


async def test_a_failed_read_fails_open_for_every_caller_that_shared_it(rig: Rig) -> None:
    rig.hold.arm()
    first = asyncio.create_task(rig.aread())
    await eventually(rig.hold.held.is_set, "the first GET is on the wire")
    follower = asyncio.create_task(rig.aread())
    await eventually(lambda: rig.count("reads_coalesced") == 1, "a caller joins it")

    rig.hold.release(BackendUnavailable("connection lost"))
    assert list(await asyncio.gather(first, follower)) == ["loaded"] * 2
    assert rig.count("fallbacks") == 2
    assert rig.count("loads") == 1  # failing open, they still share one flight


def test_a_failed_read_fails_open_for_every_thread_that_shared_it(rig: Rig) -> None:
    rig.hold.arm()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(rig.read)
        eventually_sync(rig.hold.held.is_set, "the first GET is on the wire")
        follower = pool.submit(rig.read)
        eventually_sync(lambda: rig.count("reads_coalesced") == 1, "a thread joins it")
        rig.hold.release(BackendUnavailable("connection lost"))
        assert [first.result(WAIT), follower.result(WAIT)] == ["loaded"] * 2
    assert rig.count("fallbacks") == 2


# ------------------------------------------------ herds of processes on a private server


class Monitor:
    """Counts the commands that clients (not Lua scripts) send to a server, by name."""

    STOP = "coalescing-monitor-stop"

    def __init__(self, url: str) -> None:
        self.url = url
        self.sent: Counter[str] = Counter()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(WAIT)

    def stop(self) -> None:
        with redis.Redis.from_url(self.url) as client:
            client.echo(self.STOP)
        self._thread.join(WAIT)

    def _watch(self) -> None:
        with redis.Redis.from_url(self.url) as client, client.monitor() as monitor:
            self._ready.set()
            for entry in monitor.listen():
                if entry["command"] == f"ECHO {self.STOP}":
                    return
                if entry["client_type"] != "lua":
                    self.sent[entry["command"].split(" ", 1)[0].lower()] += 1


def _fleet(
    server: PrivateServer, mode: str, processes: int, cfg: dict[str, Any], before_go: Any
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """The workers' reports, and the commands clients sent from "go" until they finished."""
    admin = redis.Redis.from_url(server.url)
    monitor = Monitor(server.url)
    try:

        def start_counting() -> None:
            before_go()
            monitor.start()

        reports = run_fleet(
            "tests.workers.herd_worker",
            [[mode, json.dumps(cfg)]] * processes,
            admin,
            ready=cfg["ready"],
            go=cfg["go"],
            before_go=start_counting,
        )
        monitor.stop()
        return reports, monitor.sent
    finally:
        admin.close()


def _config(server: PrivateServer, **extra: Any) -> dict[str, Any]:
    prefix = "coalesce"
    return {
        "url": server.url,
        "prefix": prefix,
        "counter": f"{prefix}:loads",
        "ready": f"{prefix}:ready",
        "go": f"{prefix}:go",
        **extra,
    }


@pytest.mark.slow
def test_a_cold_herd_of_processes_reads_per_process_not_per_caller(
    private_redis: PrivateServer,
) -> None:
    processes, callers = 4, 25
    cfg = _config(private_redis, key="herd", ttl=60, load_seconds=0.1, callers=callers)
    reports, calls = _fleet(private_redis, "herd", processes, cfg, lambda: None)

    values = [value for report in reports for value in report["values"]]
    assert len(values) == processes * callers
    assert all(value == values[0] for value in values)
    assert sum(report["stats"]["loads"] for report in reports) == 1
    for report in reports:  # every process: one GET for its herd, one flight
        assert report["stats"]["reads_coalesced"] == callers - 1
        assert report["stats"]["coalesced"] == callers - 1
    # A GET per process for its herd; a waiting process re-reads when its subscription to
    # the key's channel is confirmed (the listener's re-look) and when the fill is
    # announced: at most 3 a process, not one per caller (100).
    assert calls["get"] <= 3 * processes, dict(calls)
    print(f"\n{processes} x {callers} callers, cold key: commands sent {dict(calls)}")


@pytest.mark.slow
def test_a_stale_herd_of_processes_reads_once_per_process_and_rebuilds_once(
    private_redis: PrivateServer,
) -> None:
    processes, callers = 4, 25
    cfg = _config(private_redis, key="stale", ttl=0.2, stale=5, load_seconds=0.1, callers=callers)
    primer = redis.Redis.from_url(private_redis.url)
    cache = Cache.from_url(private_redis.url, prefix=cfg["prefix"])

    @cache.cached(ttl=0.2, stale=5, key="stale")
    def prime() -> dict[str, int]:
        return {"pid": 0, "n": int(primer.incr(cfg["counter"]))}

    try:
        primed = prime()
        primed_at = time.monotonic()
    finally:
        cache.sync.close()
        primer.close()

    def let_it_go_stale() -> None:
        time.sleep(max(0.0, 0.25 - (time.monotonic() - primed_at)))

    reports, calls = _fleet(private_redis, "stale", processes, cfg, let_it_go_stale)

    values = [value for report in reports for value in report["values"]]
    assert values == [primed] * (processes * callers)  # all served stale at once
    assert sum(report["stats"]["rebuilds"] for report in reports) == 1
    for report in reports:
        assert report["stats"]["reads_coalesced"] == callers - 1  # one GET a process
    # The workers then poll the key with GETs of their own until the rebuild lands.
    print(f"\n{processes} x {callers} callers, stale key: commands sent {dict(calls)}")


def test_threads_hammering_a_few_keys_all_get_their_keys_value() -> None:
    """The reader takes no lock: however threads interleave (and writes void the sharing
    of reads in flight), each caller gets its own key's reply and none waits forever."""
    reads = SyncReads(Stats())
    keys = [f"hammer:{i}" for i in range(3)]

    def run(op: Get) -> bytes | None:
        time.sleep(0)  # let another thread in mid-read
        return op.key.encode()

    def worker(seed: int) -> int:
        wrong = 0
        for n in range(2000):
            key = keys[(seed + n) % len(keys)]
            if n % 97 == 0:
                WRITES.wrote(key)
            wrong += reads.get(key, run) != key.encode()
        return wrong

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(worker, range(8), timeout=60)) == 0
