"""``cache.lock()`` / ``cache.sync.lock()``: the distributed lock, on real Redis and memory.

Covered: acquire/release on both faces, fencing tokens, timeouts and ownership errors;
waiters woken by the release notification (counted with ``INFO commandstats`` on a private
server, not timed); the watchdog keeping a short lease alive; cancellation; a SIGKILLed
holder freeing the lock within its TTL; mutual exclusion across processes; monotonic
fences across 1,000 acquisitions, across a Redis restart and across a lost, set-back,
garbled or expired fence counter; every fence counter expiring (200 names leave no key
without a TTL); failing closed or open.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import select
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from cachekit import (
    BackendUnavailable,
    Cache,
    LockError,
    LockNotOwnedError,
    LockTimeout,
)
from cachekit.backends.ops import Delete, ExpireIfEqual, Get, Op, Set, Store, Ttl
from cachekit.backends.ops.locks import Acquire, Acquired, fence_ttl
from cachekit.drivers.notify import AsyncWaiter, SyncWaiter
from cachekit.testing import FakeClock
from tests.support.servers import PrivateServer

ROOT = Path(__file__).resolve().parent.parent


def lock_key(prefix: str, name: str) -> str:
    return f"{prefix}:lock:{{{name}}}"


def script_calls(client: redis.Redis) -> int:
    """EVALSHA + EVAL calls the server has run so far (every lock op is one script)."""
    stats = cast(dict[str, dict[str, int]], client.info("commandstats"))
    return sum(stats.get(f"cmdstat_{cmd}", {}).get("calls", 0) for cmd in ("evalsha", "eval"))


def read_line(proc: subprocess.Popen[str], timeout: float = 15.0) -> str:
    """The next line the worker prints, or fail after ``timeout`` seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"worker printed nothing within {timeout}s (exit code {proc.poll()})"
    return proc.stdout.readline()


def worker(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.workers.lock_worker", *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


@contextlib.contextmanager
def holder_process(
    url: str, prefix: str, name: str, ttl: float
) -> Iterator[tuple[subprocess.Popen[str], bytes, int]]:
    """A process holding the lock: ``(process, its token, its fence)``; killed at exit."""
    with worker("hold", url, prefix, name, str(ttl)) as proc:
        try:
            word, token, fence = read_line(proc).split()
            assert word == "held"
            yield proc, token.encode(), int(fence)
        finally:
            proc.kill()


def sigkill(proc: subprocess.Popen[str]) -> float:
    """SIGKILL ``proc``, reap it, and return the monotonic time it was dead by."""
    proc.kill()
    proc.wait()
    return time.monotonic()


@pytest.fixture
def wakes(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """How every waiter's sleep ended in this test: True when woken, False on timeout."""
    ended: list[bool] = []
    async_wait, sync_wait = AsyncWaiter.wait, SyncWaiter.wait

    async def recorded_async(self: AsyncWaiter, seconds: float) -> bool:
        woken = await async_wait(self, seconds)
        ended.append(woken)
        return woken

    def recorded_sync(self: SyncWaiter, timeout: float) -> bool:
        woken = sync_wait(self, timeout)
        ended.append(woken)
        return woken

    monkeypatch.setattr(AsyncWaiter, "wait", recorded_async)
    monkeypatch.setattr(SyncWaiter, "wait", recorded_sync)
    return ended


# 1. Basics ----------------------------------------------------------------------------


async def test_async_lock_acquire_release_and_timeout(
    any_cache: Cache, kind: str, raw_redis: redis.Redis, prefix: str
) -> None:
    key = lock_key(prefix, "job")
    lock = any_cache.lock("job", ttl=5, wait=0)
    assert not lock.held
    async with lock as entered:
        assert entered is lock
        assert lock.held
        first = lock.fencing_token
        assert type(first) is int
        if kind == "redis":
            assert raw_redis.get(key) == lock.token
            assert 0 < raw_redis.pttl(key) <= 5000
        with pytest.raises(LockTimeout) as info:
            await any_cache.lock("job", ttl=5, wait=0).acquire()
        assert info.value.name == "job"
    assert not lock.held
    if kind == "redis":
        assert raw_redis.exists(key) == 0
    async with any_cache.lock("job", ttl=5, wait=0) as again:
        assert type(again.fencing_token) is int
        assert again.fencing_token > first
    with pytest.raises(LockNotOwnedError):  # released twice
        await again.release()
    assert any_cache.stats()["lock_timeouts"] == 1


async def test_sync_lock_acquire_release_and_timeout(
    any_cache: Cache, kind: str, raw_redis: redis.Redis, prefix: str
) -> None:
    key = lock_key(prefix, "job")
    lock = any_cache.sync.lock("job", ttl=5, wait=0)
    with lock as entered:
        assert entered is lock
        assert lock.held
        first = lock.fencing_token
        assert type(first) is int
        if kind == "redis":
            assert raw_redis.get(key) == lock.token
            assert 0 < raw_redis.pttl(key) <= 5000
        with pytest.raises(LockTimeout) as info:
            any_cache.sync.lock("job", ttl=5, wait=0).acquire()
        assert info.value.name == "job"
        with pytest.raises(LockTimeout):  # the other face sees the same lock
            await any_cache.lock("job", ttl=5, wait=0).acquire()
    assert not lock.held
    if kind == "redis":
        assert raw_redis.exists(key) == 0
    with any_cache.sync.lock("job", ttl=5, wait=0) as again:
        assert type(again.fencing_token) is int
        assert again.fencing_token > first
    with pytest.raises(LockNotOwnedError) as not_held:
        any_cache.sync.lock("never-taken").release()
    assert not_held.value.name == "never-taken"


@pytest.mark.parametrize("face", ["async", "sync"])
async def test_releasing_a_lost_lock_raises_and_spares_the_new_holder(
    redis_url: str, prefix: str, raw_redis: redis.Redis, face: str
) -> None:
    key = lock_key(prefix, "job")
    first = Cache.from_url(redis_url, prefix=prefix)
    second = Cache.from_url(redis_url, prefix=prefix)

    async def release_lost() -> None:
        if lost is not None:
            await lost.release()
        else:
            assert lost_sync is not None
            lost_sync.release()

    try:
        lost = await first.lock("job", ttl=10, wait=0).acquire() if face == "async" else None
        lost_sync = first.sync.lock("job", ttl=10, wait=0).acquire() if face == "sync" else None
        raw_redis.delete(key)  # the lease is gone (an operator, a failover, an expiry)
        async with second.lock("job", ttl=10, wait=0) as winner:
            with pytest.raises(LockNotOwnedError) as info:
                await release_lost()
            assert info.value.name == "job"
            assert raw_redis.get(key) == winner.token, "the loser's release deleted the new lock"
            assert 0 < raw_redis.pttl(key) <= 10_000
        assert raw_redis.exists(key) == 0
    finally:
        await first.close()
        await second.close()


@pytest.mark.parametrize("face", ["async", "sync"])
async def test_releasing_an_expired_lock_raises_on_memory(
    memory_cache: Cache, clock: FakeClock, face: str
) -> None:
    if face == "async":
        lock = await memory_cache.lock("job", ttl=10, wait=0).acquire()
        clock.advance(11)  # well before the watchdog's first renewal (in ~3.3 real seconds)
        with pytest.raises(LockNotOwnedError) as info:
            await lock.release()
    else:
        sync_lock = memory_cache.sync.lock("job", ttl=10, wait=0).acquire()
        clock.advance(11)
        with pytest.raises(LockNotOwnedError) as info:
            sync_lock.release()
    assert info.value.name == "job"
    async with memory_cache.lock("job", ttl=10, wait=0) as again:
        assert again.held


async def test_an_async_lock_belongs_to_the_task_that_took_it(any_cache: Cache) -> None:
    lock = await any_cache.lock("job", ttl=5, wait=0).acquire()
    for foreign in (lock.release(), lock.extend()):
        with pytest.raises(LockError) as info:
            await asyncio.create_task(foreign)
        assert type(info.value) is LockError, "another task is not 'lost', it is not the owner"
        assert info.value.name == "job"
    assert lock.held
    await lock.extend()
    await lock.release()
    assert not lock.held


async def test_a_sync_lock_belongs_to_the_thread_that_took_it(any_cache: Cache) -> None:
    lock = any_cache.sync.lock("job", ttl=5, wait=0).acquire()
    errors: list[BaseException] = []

    def foreign() -> None:
        for call in (lock.release, lock.extend):
            try:
                call()
            except BaseException as exc:
                errors.append(exc)

    thread = threading.Thread(target=foreign)
    thread.start()
    thread.join(5)
    assert [type(e) for e in errors] == [LockError, LockError]
    assert all(isinstance(e, LockError) and e.name == "job" for e in errors)
    assert lock.held
    lock.release()
    assert not lock.held


# 2. Waiters are woken, not polling ---------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "face"),
    [("redis", "async"), ("redis", "sync"), ("memory", "async"), ("memory", "sync")],
)
async def test_a_waiter_is_woken_by_the_release_not_by_polling(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    wakes: list[bool],
    kind: str,
    face: str,
) -> None:
    """Holder keeps a 10 s lease for 1 s; the waiter (wait=5) tries a handful of times."""
    if kind == "redis":
        server = cast(PrivateServer, request.getfixturevalue("private_redis"))
        stats = redis.Redis(port=server.port)
        request.addfinalizer(stats.close)
        holder_cache = Cache.from_url(server.url, prefix="w")
        waiter_cache = Cache.from_url(server.url, prefix="w")
        async with holder_cache.lock("warm-up", ttl=1, wait=0):
            pass  # the Acquire and Release scripts are cached now: one EVALSHA per try

        def attempts_so_far() -> int:
            return script_calls(stats)
    else:
        holder_cache = waiter_cache = Cache.from_url("memory://")
        tries = [0]
        original = Acquire.apply

        def counting(self: Acquire, store: Store) -> Acquired:
            tries[0] += 1
            return original(self, store)

        monkeypatch.setattr(Acquire, "apply", counting)

        def attempts_so_far() -> int:
            return tries[0]

    seen: dict[str, float] = {}

    def got_it(fence: int | None) -> None:
        seen["acquired"] = time.monotonic()
        seen["attempts"] = attempts_so_far()
        seen["fence"] = fence or 0

    async def wait_async() -> None:
        async with waiter_cache.lock("job", ttl=10, wait=5) as lock:
            got_it(lock.fencing_token)

    def wait_sync() -> None:
        with waiter_cache.sync.lock("job", ttl=10, wait=5) as lock:
            got_it(lock.fencing_token)

    try:
        holder = await holder_cache.lock("job", ttl=10, wait=0).acquire()
        before = attempts_so_far()
        waiter = asyncio.create_task(
            wait_async() if face == "async" else asyncio.to_thread(wait_sync)
        )
        await asyncio.sleep(1.0)
        assert not waiter.done(), "the waiter got a lock that was held"
        released = time.monotonic()
        await holder.release()
        await asyncio.wait_for(waiter, 10)
        # On Redis the holder's release is one more script call in the window.
        attempts = int(seen["attempts"]) - before - (1 if kind == "redis" else 0)
        delay_ms = (seen["acquired"] - released) * 1000
        print(f"\n[{kind}/{face}] waiter: {attempts} acquire attempts over a 1 s hold, "
              f"acquired {delay_ms:.1f} ms after the release; waits ended {wakes}")  # fmt: skip
        assert seen["fence"] > (holder.fencing_token or 0)
        assert waiter_cache.stats()["lock_waits"] == 1
        assert 2 <= attempts <= 4, f"{attempts} acquire attempts in 1 s (a 100 ms poller: ~10)"
        assert wakes, "the waiter never slept"
        assert all(wakes), f"a wait ran out instead of being woken: {wakes}"
        assert len(wakes) <= 3
    finally:
        await holder_cache.close()
        if waiter_cache is not holder_cache:
            await waiter_cache.close()


@pytest.mark.slow
async def test_a_waiter_on_a_killed_holder_wakes_at_the_lease_expiry(
    private_redis: PrivateServer, wakes: list[bool]
) -> None:
    ttl = 1.0
    stats = redis.Redis(port=private_redis.port)
    cache = Cache.from_url(private_redis.url, prefix="k")
    try:
        with holder_process(private_redis.url, "k", "job", ttl) as (proc, _token, fence):
            killed = sigkill(proc)
        before = script_calls(stats)  # the holder's last renewal is counted by now
        async with cache.lock("job", ttl=5, wait=5) as lock:
            acquired = time.monotonic()
            attempts = script_calls(stats) - before
            assert lock.fencing_token is not None
            assert lock.fencing_token > fence
        delay = acquired - killed
        print(f"\n[kill] waiter: {attempts} acquire attempts, acquired {delay * 1000:.0f} ms "
              f"after SIGKILL of the holder (ttl {ttl} s); waits ended {wakes}")  # fmt: skip
        assert 2 <= attempts <= 4, f"{attempts} acquire attempts (a 100 ms poller: ~10)"
        assert wakes, "the waiter never slept"
        assert not wakes[-1], "nobody released: the last wait ends at the lease's expiry"
        assert delay < ttl + 2, f"acquired {delay:.2f}s after the kill"
    finally:
        stats.close()
        await cache.close()


# 3. Watchdog --------------------------------------------------------------------------


@pytest.mark.slow
async def test_the_watchdog_keeps_a_short_lease_alive(
    any_cache: Cache, kind: str, raw_redis: redis.Redis, prefix: str
) -> None:
    """ttl=0.6 held for 2 s (> 3 x ttl) on both faces at once: never lapses, releases fine."""
    ttl, hold = 0.6, 2.0

    def lease_ms(name: str) -> int | None:
        return int(raw_redis.pttl(lock_key(prefix, name))) if kind == "redis" else None

    async def hold_async() -> list[int | None]:
        samples: list[int | None] = []
        async with any_cache.lock("wd-async", ttl=ttl, wait=0) as lock:
            end = time.monotonic() + hold
            while time.monotonic() < end:
                samples.append(lease_ms("wd-async"))
                await asyncio.sleep(0.1)
            with pytest.raises(LockTimeout):
                await any_cache.lock("wd-async", ttl=ttl, wait=0).acquire()
            assert lock.held
        return samples

    def hold_sync() -> list[int | None]:
        samples: list[int | None] = []
        with any_cache.sync.lock("wd-sync", ttl=ttl, wait=0) as lock:
            end = time.monotonic() + hold
            while time.monotonic() < end:
                samples.append(lease_ms("wd-sync"))
                time.sleep(0.1)
            with pytest.raises(LockTimeout):
                any_cache.sync.lock("wd-sync", ttl=ttl, wait=0).acquire()
            assert lock.held
        return samples

    for samples in await asyncio.gather(hold_async(), asyncio.to_thread(hold_sync)):
        assert len(samples) >= 10
        if kind == "redis":
            assert all(s is not None and 0 < s <= ttl * 1000 for s in samples), samples
    if kind == "redis":
        assert raw_redis.exists(lock_key(prefix, "wd-async"), lock_key(prefix, "wd-sync")) == 0
    async with any_cache.lock("wd-async", ttl=ttl, wait=0):
        pass


# 4. Cancellation ----------------------------------------------------------------------


async def test_a_cancelled_holder_releases_the_lock(
    any_cache: Cache, kind: str, raw_redis: redis.Redis, prefix: str
) -> None:
    key = lock_key(prefix, "job")
    lock = any_cache.lock("job", ttl=0.5, wait=0)
    inside = asyncio.Event()

    async def holder() -> None:
        async with lock:
            inside.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(holder())
    await inside.wait()
    if kind == "redis":
        assert raw_redis.get(key) == lock.token
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not lock.held
    if kind == "redis":
        assert raw_redis.exists(key) == 0
    async with any_cache.lock("job", ttl=0.5, wait=0) as again:  # free at once
        assert again.held


async def test_an_abandoned_lock_lapses_within_its_ttl(
    any_cache: Cache, kind: str, raw_redis: redis.Redis, prefix: str
) -> None:
    """The owner task is cancelled without releasing: the lease must lapse, not be renewed."""
    ttl = 0.5
    lock = any_cache.lock("job", ttl=ttl, wait=0)
    inside = asyncio.Event()

    async def holder() -> None:
        await lock.acquire()
        inside.set()
        await asyncio.sleep(30)

    task = asyncio.create_task(holder())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    async def free() -> bool:
        if kind == "redis":
            return raw_redis.exists(lock_key(prefix, "job")) == 0
        try:
            await any_cache.lock("job", ttl=ttl, wait=0).acquire()
        except LockTimeout:
            return False
        return True

    try:
        deadline = time.monotonic() + ttl * 3
        lapsed = await free()
        while not lapsed and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            lapsed = await free()
        assert lapsed, f"the abandoned lock was still held {ttl * 3}s after its owner died"
    finally:
        if lock._watchdog is not None:  # don't leak the renewing task into other tests
            lock._watchdog.stop()


async def test_a_lock_abandoned_by_a_finished_thread_lapses(
    any_cache: Cache, kind: str, raw_redis: redis.Redis, prefix: str
) -> None:
    """A thread takes a sync lock and ends without releasing: its watchdog ends with it."""
    ttl = 0.5
    thread = threading.Thread(
        target=lambda: any_cache.sync.lock("job", ttl=ttl, wait=0).acquire(), daemon=True
    )
    thread.start()
    thread.join()

    def free() -> bool:
        if kind == "redis":
            return bool(raw_redis.exists(lock_key(prefix, "job")) == 0)
        try:
            any_cache.sync.lock("job", ttl=ttl, wait=0).acquire()
        except LockTimeout:
            return False
        return True

    deadline = time.monotonic() + ttl * 4
    lapsed = free()
    while not lapsed and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        lapsed = free()
    assert lapsed, f"the abandoned lock was still held {ttl * 4}s after its thread ended"


async def test_a_renewal_in_flight_at_release_does_not_poison_the_next_hold(
    any_cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watchdog thread is descheduled between its stop check and its renewal.

    Its late renewal (old token) is refused; that must not mark the lock's next hold lost.
    """
    backend_type = type(any_cache.bound().sync.backend)
    original = backend_type.run
    in_flight, proceed = threading.Event(), threading.Event()
    stale: list[threading.Thread] = []

    def delayed(self: Any, op: Op[Any]) -> Any:
        if isinstance(op, ExpireIfEqual) and not stale:
            stale.append(threading.current_thread())
            in_flight.set()
            proceed.wait(5)
        return original(self, op)

    monkeypatch.setattr(backend_type, "run", delayed)
    lock = any_cache.sync.lock("job", ttl=0.3, wait=0)
    lock.acquire()
    assert in_flight.wait(5), "the watchdog never tried to renew"
    lock.release()  # a clean release while that renewal is still on its way
    lock.acquire()  # the next hold: a new token
    proceed.set()  # the stale renewal lands (old token: refused)
    stale[0].join(5)
    assert lock.held
    lock.release()  # the hold is intact, so this must not raise


# 5. A SIGKILLed holder ----------------------------------------------------------------


@pytest.mark.slow
async def test_a_killed_holder_frees_the_lock_within_its_ttl(
    redis_url: str, prefix: str, raw_redis: redis.Redis
) -> None:
    ttl = 1.0
    key = lock_key(prefix, "job")
    cache = Cache.from_url(redis_url, prefix=prefix)
    acquired: dict[str, float] = {}

    async def waiter() -> None:
        async with cache.lock("job", ttl=5, wait=5) as lock:
            acquired["at"] = time.monotonic()
            acquired["fence"] = lock.fencing_token or 0

    try:
        with holder_process(redis_url, prefix, "job", ttl) as (proc, token, fence):
            assert raw_redis.get(key) == token
            assert 0 < raw_redis.pttl(key) <= ttl * 1000
            killed = sigkill(proc)
        task = asyncio.create_task(waiter())
        gone: float | None = None
        while gone is None and time.monotonic() - killed < ttl + 3:
            if raw_redis.get(key) != token:  # lapsed (or already the waiter's)
                gone = time.monotonic() - killed
            else:
                await asyncio.sleep(0.01)
        await asyncio.wait_for(task, 10)
        delay = acquired["at"] - killed
        print(f"\n[kill] the dead holder's key was gone {(gone or 0) * 1000:.0f} ms and the "
              f"waiter had the lock {delay * 1000:.0f} ms after SIGKILL (ttl {ttl} s)")  # fmt: skip
        assert gone is not None, "the dead holder's key never went away"
        assert gone < ttl + 2, f"key gone {gone:.2f}s after the kill"
        assert delay < ttl + 2, f"waiter acquired {delay:.2f}s after the kill"
        assert acquired["fence"] > fence
        assert raw_redis.exists(key) == 0
    finally:
        await cache.close()


# 6. Mutual exclusion across processes -------------------------------------------------


@pytest.mark.slow
def test_no_two_holders_across_processes(
    redis_url: str, prefix: str, raw_redis: redis.Redis
) -> None:
    """4 processes (2 sync, 2 async) x 50 critical sections on one lock."""
    rounds, faces = 50, ("sync", "async", "sync", "async")
    with contextlib.ExitStack() as stack:
        procs = []
        for face in faces:
            proc = stack.enter_context(
                worker("contend", redis_url, prefix, "shared", str(rounds), face)
            )
            stack.callback(proc.kill)
            procs.append(proc)
        for proc in procs:
            assert read_line(proc).strip() == "ready"
        started = time.monotonic()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = [json.loads(proc.communicate(timeout=60)[0]) for proc in procs]
        elapsed = time.monotonic() - started
        assert [proc.returncode for proc in procs] == [0] * len(procs)

    total = rounds * len(faces)
    records: list[list[int]] = [r for result in results for r in result["records"]]
    owner = {seen: i for i, result in enumerate(results) for seen, _, _ in result["records"]}
    handovers = sum(owner[n] != owner[n + 1] for n in range(total - 1))
    waits = [result["waits"] for result in results]
    print(f"\n[exclusion] {total} critical sections in 4 processes took {elapsed:.2f} s; "
          f"{handovers} handovers between processes; waits per process {waits}")  # fmt: skip
    assert sum(waits) > 0, "the processes never contended: the test proves nothing"
    assert sum(result["violations"] for result in results) == 0, "two holders at once"
    assert raw_redis.get(f"{prefix}:counter") == str(total).encode()
    assert sorted(seen for seen, _, _ in records) == list(range(total)), "a lost update"
    fences = [fence for _, fence, _ in sorted(records)]  # in the order the sections ran
    assert len(set(fences)) == total
    assert all(a < b for a, b in itertools.pairwise(fences)), "fences went back"
    by_time = [seen for seen, _, _ in sorted(records, key=lambda r: r[2])]
    assert by_time == list(range(total)), "acquisition times disagree with the counter"
    for result in results:  # each process saw its own fences rising too
        own = [fence for _, fence, _ in result["records"]]
        assert own == sorted(own)


# 7. Fences over many acquisitions -----------------------------------------------------


async def test_1000_sequential_acquisitions_have_strictly_increasing_fences(
    any_cache: Cache,
) -> None:
    lock = any_cache.sync.lock("seq", ttl=10, wait=1)
    fences: list[int] = []
    for _ in range(1000):
        with lock:
            assert lock.fencing_token is not None
            fences.append(lock.fencing_token)
    assert len(fences) == 1000
    assert all(a < b for a, b in itertools.pairwise(fences))


# 7b. Fence counters expire, fences keep rising ----------------------------------------


def fence_key(prefix: str, name: str) -> str:
    return lock_key(prefix, name) + ":fence"


def run_op(cache: Cache, op: Op[Any]) -> Any:
    """Run one backend op on ``cache`` (either backend), bypassing the lock API."""
    return cache.bound().sync.backend.run(op)


def now_us() -> int:
    return time.time_ns() // 1000


async def test_every_fence_counter_has_a_ttl_after_200_names(
    any_cache: Cache, kind: str, raw_redis: redis.Redis, prefix: str
) -> None:
    """200 distinct names (both faces): 200 counters, each expiring within its fence TTL."""
    names = [f"order:{n}" for n in range(200)]
    for n, name in enumerate(names):
        if n % 2:
            async with any_cache.lock(name, ttl=5, wait=0) as lock:
                assert lock.fencing_token is not None
        else:
            with any_cache.sync.lock(name, ttl=5, wait=0) as sync_lock:
                assert sync_lock.fencing_token is not None
    limit = fence_ttl(5)
    ttls = [run_op(any_cache, Ttl(fence_key(prefix, name))) for name in names]
    assert all(ttl is not None and 0 < ttl <= limit for ttl in ttls), ttls
    if kind == "redis":
        keys = list(raw_redis.scan_iter(match=f"{prefix}:*", count=1000))
        assert len(keys) == 200  # the locks are gone; only their counters remain
        assert all(raw_redis.pttl(key) > 0 for key in keys), "a key without a TTL"


def test_fence_counters_vanish_after_their_ttl(clock: FakeClock) -> None:
    """On the fake clock: a counter is gone fence_ttl after its last token, not before."""
    cache = Cache.from_url("memory://", clock=clock, prefix="p")
    for n in range(200):
        with cache.sync.lock(f"user:{n}", ttl=30, wait=0):
            pass
    keys = [fence_key("p", f"user:{n}") for n in range(200)]
    clock.advance(fence_ttl(30) - 1)
    assert all(run_op(cache, Get(key)) is not None for key in keys)
    clock.advance(2)
    assert all(run_op(cache, Get(key)) is None for key in keys)


@pytest.mark.parametrize("face", ["async", "sync"])
async def test_each_acquisition_refreshes_the_fence_ttl(
    any_cache: Cache, prefix: str, face: str
) -> None:
    """A counter whose TTL ran low gets the whole fence TTL back on the next acquisition."""

    async def acquire_once() -> int:
        if face == "async":
            async with any_cache.lock("job", ttl=2, wait=1) as lock:
                assert lock.fencing_token is not None
                return lock.fencing_token
        with any_cache.sync.lock("job", ttl=2, wait=1) as sync_lock:
            assert sync_lock.fencing_token is not None
            return sync_lock.fencing_token

    key, limit = fence_key(prefix, "job"), fence_ttl(2)
    first = await acquire_once()
    assert limit - 5 < run_op(any_cache, Ttl(key)) <= limit
    # Shorten it as time would, keeping the value (a plain Set would drop the counter).
    counter = run_op(any_cache, Get(key))
    run_op(any_cache, Set(key, counter, ttl=3))
    assert run_op(any_cache, Ttl(key)) <= 3
    second = await acquire_once()
    assert second > first
    assert limit - 5 < run_op(any_cache, Ttl(key)) <= limit


def test_fence_ttl_is_ten_leases_and_at_least_ten_minutes() -> None:
    assert fence_ttl(0.5) == fence_ttl(10) == 600.0
    assert fence_ttl(60) == 600.0
    assert fence_ttl(120) == 1200.0
    assert fence_ttl(3600) == 36_000.0


def test_fences_rise_across_the_counters_expiry_on_the_fake_clock(clock: FakeClock) -> None:
    """1,000 tokens on a frozen clock run 1,000 us ahead of it; the counter lives until the
    clock has passed them, so the token drawn after its expiry is still the highest."""
    cache = Cache.from_url("memory://", clock=clock, prefix="p")
    lock = cache.sync.lock("job", ttl=10, wait=0)
    fences: list[int] = []
    for _ in range(1000):
        with lock:
            assert lock.fencing_token is not None
            fences.append(lock.fencing_token)
    clock_us = int(clock.time() * 1_000_000)
    assert fences[-1] == clock_us + 1000  # max(counter, clock) + 1, 1,000 times
    key = fence_key("p", "job")
    clock.advance(fence_ttl(10))  # a TTL counted from now would have ended here
    assert run_op(cache, Get(key)) == b"%d" % fences[-1]
    clock.advance(0.002)  # the clock passed the last token by the fence TTL: expired
    assert run_op(cache, Get(key)) is None
    for _ in range(3):
        with lock:
            assert lock.fencing_token is not None
            fences.append(lock.fencing_token)
    assert all(a < b for a, b in itertools.pairwise(fences))
    assert fences[-3] == int(clock.time() * 1_000_000) + 1  # re-seeded from the clock


@pytest.fixture
async def fence_cache(
    kind: str, redis_url: str, prefix: str
) -> AsyncIterator[tuple[Cache, FakeClock | None]]:
    """A cache on Redis (its server clock), or on memory with a fake clock (advanced by hand)."""
    if kind == "redis":
        cache, clock = Cache.from_url(redis_url, prefix=prefix), None
    else:
        clock = FakeClock()
        cache = Cache.from_url("memory://", prefix=prefix, clock=clock)
    yield cache, clock
    await cache.close()


async def test_fences_rise_across_lost_counters(
    fence_cache: tuple[Cache, FakeClock | None], prefix: str
) -> None:
    """The counter deleted (expired early, evicted), set back (a failover to a replica that
    missed the last INCRs) or garbled, after every 50 of 400 acquisitions (both faces):
    the fences still rise, and never run ahead of the clock."""
    cache, clock = fence_cache
    key = fence_key(prefix, "job")
    fences: list[int] = []
    for n in range(400):
        if clock is not None:
            clock.advance(0.001)  # time passes between acquisitions, as on a real clock
        if n % 2:
            async with cache.lock("job", ttl=10, wait=1) as lock:
                assert lock.fencing_token is not None
                fences.append(lock.fencing_token)
        else:
            with cache.sync.lock("job", ttl=10, wait=1) as sync_lock:
                assert sync_lock.fencing_token is not None
                fences.append(sync_lock.fencing_token)
        if n % 50 == 49:
            loss = (n // 50) % 3
            if loss == 0:
                assert run_op(cache, Delete([key])) == 1
            elif loss == 1:
                run_op(cache, Set(key, b"%d" % (fences[-1] - 10_000), ttl=60))
            else:
                run_op(cache, Set(key, b"not a number", ttl=60))
    assert len(set(fences)) == 400
    assert all(a < b for a, b in itertools.pairwise(fences)), "a fence went back"
    now = now_us() if clock is None else int(clock.time() * 1_000_000)
    assert fences[-1] <= now + 1  # tokens follow the clock: re-seeding it starts above them


async def test_a_counter_ahead_of_the_clock_lives_until_the_clock_passes_it(
    any_cache: Cache, prefix: str
) -> None:
    """A counter an hour ahead (a server clock that stepped back): the next token follows
    the counter, and the counter expires only a fence TTL after the clock reaches it."""
    key, ahead = fence_key(prefix, "job"), 3600 * 1_000_000
    planted = now_us() + ahead
    run_op(any_cache, Set(key, b"%d" % planted, ttl=10))
    async with any_cache.lock("job", ttl=10, wait=0) as lock:
        assert lock.fencing_token == planted + 1
    ttl = run_op(any_cache, Ttl(key))
    assert 3600 + fence_ttl(10) - 60 < ttl <= 3600 + fence_ttl(10)


# 8. A Redis restart during a hold -----------------------------------------------------


@pytest.mark.slow
async def test_a_redis_restart_during_a_hold(private_redis: PrivateServer) -> None:
    key = lock_key("r", "job")
    raw = redis.Redis(port=private_redis.port)
    cache_a = Cache.from_url(private_redis.url, prefix="r")
    cache_b: Cache | None = None
    try:
        lock_a = await cache_a.lock("job", ttl=30, wait=0).acquire()
        assert lock_a.fencing_token is not None
        private_redis.kill()
        private_redis.start()  # same port, empty dataset: the fence counter is gone
        assert raw.dbsize() == 0
        cache_b = Cache.from_url(private_redis.url, prefix="r")
        with cache_b.sync.lock("job", ttl=30, wait=1) as lock_b:
            assert lock_b.fencing_token is not None
            print(f"\n[restart] fence before {lock_a.fencing_token}, after {lock_b.fencing_token}")
            assert lock_b.fencing_token > lock_a.fencing_token, "the fence went back"
            # A's pooled connection died with the server; a read (failing open) drops it,
            # so the release below reaches the new server instead of the dead socket.
            assert await cache_a.get("reconnect") is None
            with pytest.raises(LockNotOwnedError) as info:
                await lock_a.release()
            assert info.value.name == "job"
            assert not lock_a.held
            assert raw.get(key) == lock_b.token, "A's release deleted B's lock"
            assert 0 < raw.pttl(key) <= 30_000
        assert raw.exists(key) == 0
    finally:
        raw.close()
        await cache_a.close()
        if cache_b is not None:
            await cache_b.close()


# 9. Fail closed, or open --------------------------------------------------------------


@pytest.mark.slow
async def test_locks_fail_closed_unless_fail_open(private_redis: PrivateServer) -> None:
    cache = Cache.from_url(private_redis.url, prefix="f")
    try:
        async with cache.lock("warm-up", ttl=5, wait=0):
            pass  # connections and the notification listener are up before the crash
        private_redis.kill()
        with pytest.raises(BackendUnavailable):
            await cache.lock("job", ttl=5, wait=1).acquire()
        with pytest.raises(BackendUnavailable):
            cache.sync.lock("job", ttl=5, wait=1).acquire()

        async with cache.lock("job", ttl=5, wait=1, fail_open=True) as lock:
            assert lock.held
            assert lock.fencing_token is None
        assert not lock.held
        with cache.sync.lock("job", ttl=5, wait=1, fail_open=True) as sync_lock:
            assert sync_lock.held
            assert sync_lock.fencing_token is None
        assert not sync_lock.held

        private_redis.start()  # back: locks are real again
        async with cache.lock("job", ttl=5, wait=1) as lock:
            assert type(lock.fencing_token) is int
    finally:
        await cache.close()


def test_lock_arguments_are_checked(memory_cache: Cache) -> None:
    with pytest.raises(ValueError, match="ttl > 0"):
        memory_cache.lock("job", ttl=0)
    with pytest.raises(ValueError, match="wait >= 0"):
        memory_cache.sync.lock("job", wait=-1)
