"""Wake-ups that follow the waiters: announced only when a waiter was recorded, only to it.

The interleavings of a waiter and a holder are run step by step (no timing): a refusal
before the fill is announced; a fill before the refusal needs no announcement (the
waiter gets the lease and the value); a fill announced before the waiter's process
subscribed wakes the waiter when the subscription is confirmed. Then: no message at all
for fills, releases and invalidations nobody waits on (counted on a private server), and
waiters in other processes woken by a lock's releases.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from cachekit import Cache
from cachekit.backends.memory import MemoryStore, SyncMemoryBackend
from cachekit.backends.ops import Get, Op
from cachekit.backends.ops.leases import Fill, Invalidate, Release, TakeLease
from cachekit.backends.ops.locks import Acquire
from cachekit.backends.ops.waiting import waiting_key
from cachekit.backends.redis import SyncRedisBackend
from cachekit.backends.shards import shard_channel
from cachekit.drivers.notify import SyncWaiter, Waiters
from cachekit.drivers.sharded_notify import ServerListener
from cachekit.stats import LogOnce
from cachekit.testing import FakeClock
from tests.support.fleet import ROOT
from tests.support.servers import PrivateServer
from tests.support.waiting import eventually_sync

Run = Callable[[Op[Any]], Any]
Heard = Callable[[], list[tuple[str, str]]]


class _RedisAnnouncements:
    """Every message published under ``prefix``, read up to a barrier of our own."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.pubsub = client.pubsub()
        self.pubsub.psubscribe(f"{prefix}:*")
        self.barrier = f"{prefix}:barrier"
        self.pubsub.subscribe(self.barrier)
        for _ in range(2):  # both confirmations
            assert self.pubsub.get_message(timeout=5.0) is not None

    def __call__(self) -> list[tuple[str, str]]:
        self.client.publish(self.barrier, "end")
        heard: list[tuple[str, str]] = []
        while True:
            message = self.pubsub.get_message(timeout=5.0)
            assert message is not None, "the barrier never came back"
            channel, data = message["channel"].decode(), message["data"].decode()
            if channel == self.barrier:
                if message["type"] == "message":
                    return heard
                continue  # the pattern's copy of the barrier
            heard.append((channel, data))


@pytest.fixture(params=["memory", "redis"])
def ops(request: pytest.FixtureRequest, redis_url: str, prefix: str) -> Iterator[tuple[Run, Heard]]:
    """``(run, heard)``: run an operation; the announcements made since the last call."""
    if request.param == "memory":
        store = MemoryStore(clock=FakeClock())
        got: list[tuple[str, str]] = []
        store.subscribers.append(lambda channel, message: got.append((channel, message)))

        def heard() -> list[tuple[str, str]]:
            taken = list(got)
            got.clear()
            return taken

        yield SyncMemoryBackend(store).run, heard
        return
    client = redis.Redis.from_url(redis_url)
    announcements = _RedisAnnouncements(client, prefix)
    try:
        yield SyncRedisBackend(client).run, announcements
    finally:
        announcements.pubsub.close()
        client.close()


def test_a_waiter_refused_before_the_fill_is_announced_to(
    ops: tuple[Run, Heard], prefix: str
) -> None:
    run, heard = ops
    key, lease, channel = f"{prefix}:{{k}}", f"{prefix}:{{k}}:lease", f"{prefix}:notify"
    assert run(TakeLease(lease, b"holder", 30, key)).acquired
    assert not run(TakeLease(lease, b"waiter", 30, key)).acquired  # records the waiter
    assert run(Fill(key, b"v", 60, lease, b"holder", channel))
    assert heard() == [(shard_channel(channel, key), key)]
    assert run(Get(waiting_key(key))) is None  # the record went with the announcement


def test_a_fill_before_the_waiter_looks_needs_no_announcement(
    ops: tuple[Run, Heard], prefix: str
) -> None:
    run, heard = ops
    key, lease, channel = f"{prefix}:{{k}}", f"{prefix}:{{k}}:lease", f"{prefix}:notify"
    assert run(TakeLease(lease, b"holder", 30, key)).acquired
    assert run(Fill(key, b"v", 60, lease, b"holder", channel))
    assert heard() == []  # nobody was refused: nobody to wake
    got = run(TakeLease(lease, b"waiter", 30, key))  # the waiter's own look, just after
    assert got.acquired
    assert got.value == b"v"
    assert run(Release(lease, b"waiter", channel, key))
    assert heard() == []


def test_a_released_lock_and_a_voided_lease_wake_their_waiters(
    ops: tuple[Run, Heard], prefix: str
) -> None:
    run, heard = ops
    channel = f"{prefix}:notify"
    lock = f"{prefix}:lock:{{job}}"
    assert run(Acquire(lock, b"holder", 30, lock + ":fence")).acquired
    assert not run(Acquire(lock, b"waiter", 30, lock + ":fence")).acquired
    assert run(Release(lock, b"holder", channel))
    assert heard() == [(shard_channel(channel, lock), lock)]
    assert run(Acquire(lock, b"waiter", 30, lock + ":fence")).acquired
    assert run(Release(lock, b"waiter", channel))
    assert heard() == []  # no one waited this time

    key, lease = f"{prefix}:{{k}}", f"{prefix}:{{k}}:lease"
    assert run(TakeLease(lease, b"holder", 30, key)).acquired
    assert not run(TakeLease(lease, b"waiter", 30, key)).acquired
    assert run(Invalidate([key, lease], channel)) == 1  # the lease, voided
    assert heard() == [(shard_channel(channel, key), key)]
    assert not run(Fill(key, b"old", 60, lease, b"holder", channel))  # refused: no stale set
    assert run(Invalidate([key, lease], channel)) == 0
    assert heard() == []


def test_an_announcement_before_the_subscription_wakes_the_waiter_on_confirmation(
    redis_url: str, prefix: str
) -> None:
    """The waiter's process registers, is refused, and the holder fills before the
    listener has subscribed: the message reaches nobody, yet the confirmation of the
    subscription wakes the waiter, and its re-look finds the value."""
    client = redis.Redis.from_url(redis_url)
    run = SyncRedisBackend(client).run
    key, lease, channel = f"{prefix}:{{k}}", f"{prefix}:{{k}}:lease", f"{prefix}:notify"
    waiters = Waiters()
    listener = ServerListener(lambda: client, channel, waiters, LogOnce(logging.getLogger()))
    waiter = SyncWaiter()
    try:
        waiters.add(key, waiter)  # 1. the waiter registers (its listener not yet started)
        assert run(TakeLease(lease, b"holder", 30, key)).acquired
        assert not run(TakeLease(lease, b"waiter", 30, key)).acquired  # 2. refused
        assert run(Fill(key, b"v", 60, lease, b"holder", channel))  # 3. announced to nobody
        assert client.pubsub_numsub(shard_channel(channel, key)) == [
            (shard_channel(channel, key).encode(), 0)
        ]
        listener.ensure_started()  # 4. the subscription comes into force
        assert waiter.wait(10.0)  # woken by the confirmation (the lease ran 30 s)
        assert run(Get(key)) == b"v"  # 5. the re-look
    finally:
        listener.stop()
        client.close()


def _publishes(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("publish", "spublish"))


def test_nothing_is_published_without_waiters_and_one_message_per_waiter() -> None:
    with PrivateServer() as server:
        client = redis.Redis.from_url(server.url)
        cache = Cache.from_url(server.url, prefix="fan")
        heard = _RedisAnnouncements(client, "fan")
        try:

            @cache.cached(ttl=60, key="n:{n}")
            def load(n: int) -> int:
                return n

            for n in range(50):
                assert load(n) == n  # 50 fills
            cache.sync.invalidate("n:1")
            cache.sync.delete("n:2")
            with cache.sync.lock("job", ttl=10, wait=1):
                pass
            assert heard() == []
            assert _publishes(client) == 1  # the barrier's own
            assert client.pubsub_numsub("fan:notify") == [(b"fan:notify", 0)]

            # A waiter: the release is announced once, to the one process that waits.
            lock = cache.sync.lock("job", ttl=30, wait=0)
            lock.acquire()
            got: list[float] = []
            thread = threading.Thread(
                target=lambda: got.append(_timed(lambda: cache.sync.lock("job", wait=20)))
            )
            thread.start()
            name = "fan:lock:{job}"
            eventually_sync(lambda: bool(client.exists(waiting_key(name))))
            eventually_sync(lambda: client.pubsub_numsub("fan:notify:{job}")[0][1] == 1)
            lock.release()
            thread.join(20)
            assert got
            assert got[0] < 10
            assert heard() == [("fan:notify:{job}", name)]
        finally:
            heard.pubsub.close()
            cache.sync.close()
            client.close()


def _timed(lock: Callable[[], Any]) -> float:
    started = time.monotonic()
    with lock():
        return time.monotonic() - started


def test_waiters_in_other_processes_are_woken_by_each_release(redis_url: str, prefix: str) -> None:
    """Three processes queue for a lock held with a 30 s lease; each waits at most 10 s.
    A lost wake-up would leave one asleep until its bound: a LockTimeout."""
    cache = Cache.from_url(redis_url, prefix=prefix)
    client = redis.Redis.from_url(redis_url)
    name, channel = f"{prefix}:lock:{{busy}}", f"{prefix}:notify:{{busy}}"
    procs = []
    try:
        lock = cache.sync.lock("busy", ttl=30, wait=0)
        lock.acquire()
        for face in ("sync", "sync", "async"):
            args = ["contend", redis_url, prefix, "busy", "3", face]
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "tests.workers.lock_worker", *args],
                    cwd=ROOT,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        # Every process waits, subscribed to this lock's channel alone.
        eventually_sync(lambda: client.pubsub_numsub(channel)[0][1] == 3)
        assert client.exists(waiting_key(name))
        released = time.monotonic()
        lock.release()
        reports = []
        for proc in procs:
            out, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0, out
            reports.append(json.loads(out.strip().splitlines()[-1]))
        elapsed = time.monotonic() - released
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        cache.sync.close()
        client.close()
    assert sum(len(r["records"]) for r in reports) == 9
    assert all(r["violations"] == 0 for r in reports)
    # Nine hand-overs; one lost wake-up would cost a worker's whole 5 s lease.
    assert elapsed < 4.5
