"""One contract, eight runners: memory, Redis, Redis Cluster and Sentinel, both faces each.

Whatever a Redis face does with an operation, the memory backend must do too; the flow
above them relies on nothing else. The Cluster and Sentinel runners (slow: they start
servers of this module's own) check that keys on many slots, the scans of every primary
and the sharded announcements keep the same contract.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest

from cachekit.backends.base import AsyncBackend, SyncBackend
from cachekit.backends.cluster import connect_cluster
from cachekit.backends.memory import AsyncMemoryBackend, MemoryStore, SyncMemoryBackend
from cachekit.backends.ops import (
    CompareAndSet,
    Delete,
    DeleteIfEqual,
    ExpireIfEqual,
    Get,
    GetMany,
    Incr,
    Op,
    Ping,
    Set,
    SetMany,
    Ttl,
)
from cachekit.backends.ops.leases import Fill, Invalidate, Leased, Release, TakeLease
from cachekit.backends.ops.locks import Acquire
from cachekit.backends.ops.responses import ScanKeys, UnlinkEach
from cachekit.backends.ops.tags import ReadTagged, RetireTags
from cachekit.backends.redis import connect
from tests.support.servers import PrivateCluster, PrivateSentinel

T = TypeVar("T")
Run = Callable[[Op[T]], Awaitable[T]]


SCALE_OUT = [
    pytest.param(name, marks=pytest.mark.slow)
    for name in ("cluster-sync", "cluster-async", "sentinel-sync", "sentinel-async")
]


# The contract is about meaning, not speed: a loaded machine must not turn a slow reply
# into a failure (the time budget has tests of its own, in test_breaker.py and the chaos
# scenarios).
PATIENT = {"socket_timeout": 10.0, "socket_connect_timeout": 10.0}


@pytest.fixture(params=["memory-sync", "memory-async", "redis-sync", "redis-async", *SCALE_OUT])
async def run(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Run[Any]]:
    """Runs an op on one backend face; sync faces are wrapped to look the same."""
    kind, face = request.param.split("-")
    sync_backend: SyncBackend
    async_backend: AsyncBackend
    if kind == "memory":
        store = MemoryStore()
        sync_backend, async_backend = SyncMemoryBackend(store), AsyncMemoryBackend(store)
    elif kind == "cluster":
        cluster: PrivateCluster = request.getfixturevalue("private_cluster")
        sync_backend, async_backend = connect_cluster(cluster.url, PATIENT)
    elif kind == "sentinel":
        group: PrivateSentinel = request.getfixturevalue("private_sentinel")
        sync_backend, async_backend = connect(group.url, PATIENT)
    else:
        sync_backend, async_backend = connect(redis_url, PATIENT)

    async def run_sync(op: Op[Any]) -> Any:
        return sync_backend.run(op)

    yield async_backend.run if face == "async" else run_sync
    sync_backend.close()
    await async_backend.close()


@pytest.fixture
def key(prefix: str) -> Callable[[str], str]:
    return lambda name: f"{prefix}:{{{name}}}"


async def test_get_of_an_absent_key_is_none(run: Run[Any], key: Callable[[str], str]) -> None:
    assert await run(Get(key("absent"))) is None


async def test_set_then_get_is_binary_safe(run: Run[Any], key: Callable[[str], str]) -> None:
    value = bytes(range(256)) * 4
    assert await run(Set(key("a"), value, 10)) is True
    assert await run(Get(key("a"))) == value


async def test_set_overwrites_and_resets_ttl(run: Run[Any], key: Callable[[str], str]) -> None:
    await run(Set(key("a"), b"1", 100))
    await run(Set(key("a"), b"2", None))
    assert await run(Get(key("a"))) == b"2"
    assert await run(Ttl(key("a"))) == math.inf


async def test_ttl_reports_remaining_seconds(run: Run[Any], key: Callable[[str], str]) -> None:
    await run(Set(key("a"), b"1", 30))
    remaining = await run(Ttl(key("a")))
    assert remaining is not None
    assert 29 < remaining <= 30
    assert await run(Ttl(key("absent"))) is None


async def test_values_expire(run: Run[Any], key: Callable[[str], str]) -> None:
    await run(Set(key("short"), b"1", 0.05))
    await run(Set(key("long"), b"1", 30))
    await asyncio.sleep(0.15)
    assert await run(Get(key("short"))) is None
    assert await run(Ttl(key("short"))) is None
    assert await run(Get(key("long"))) == b"1"


async def test_non_positive_ttl_is_refused(run: Run[Any], key: Callable[[str], str]) -> None:
    for ttl in (0, -1):
        with pytest.raises(ValueError, match="positive"):
            await run(Set(key("a"), b"1", ttl))
    assert await run(Get(key("a"))) is None


async def test_nx_writes_only_absent_keys(run: Run[Any], key: Callable[[str], str]) -> None:
    assert await run(Set(key("a"), b"first", 10, nx=True)) is True
    assert await run(Set(key("a"), b"second", 10, nx=True)) is False
    assert await run(Get(key("a"))) == b"first"


async def test_nx_writes_again_after_expiry(run: Run[Any], key: Callable[[str], str]) -> None:
    await run(Set(key("a"), b"first", 0.05, nx=True))
    await asyncio.sleep(0.15)
    assert await run(Set(key("a"), b"second", 10, nx=True)) is True


async def test_get_many_keeps_order_and_gaps(run: Run[Any], key: Callable[[str], str]) -> None:
    await run(SetMany([(key("a"), b"1", 10), (key("c"), b"3", None)]))
    assert await run(GetMany([key("a"), key("b"), key("c")])) == [b"1", None, b"3"]
    assert await run(Ttl(key("c"))) == math.inf


async def test_delete_counts_existing_keys(run: Run[Any], key: Callable[[str], str]) -> None:
    await run(Set(key("a"), b"1", 10))
    await run(Set(key("b"), b"1", 10))
    assert await run(Delete([key("a"), key("b"), key("c")])) == 2
    assert await run(GetMany([key("a"), key("b")])) == [None, None]


async def test_compare_and_set_on_the_key_itself(run: Run[Any], key: Callable[[str], str]) -> None:
    await run(Set(key("a"), b"v1", 10))
    assert await run(CompareAndSet(key("a"), b"v2", 10, expected=b"other")) is False
    assert await run(Get(key("a"))) == b"v1"
    assert await run(CompareAndSet(key("a"), b"v2", 10, expected=b"v1")) is True
    assert await run(Get(key("a"))) == b"v2"


async def test_compare_and_set_with_a_guard_key(run: Run[Any], key: Callable[[str], str]) -> None:
    value, lease = key("v") + ":x", key("v") + ":lease"
    assert await run(CompareAndSet(value, b"data", 10, expected=b"tok", guard=lease)) is False
    assert await run(Get(value)) is None
    await run(Set(lease, b"tok", 10))
    assert await run(CompareAndSet(value, b"data", 10, expected=b"tok", guard=lease)) is True
    assert await run(Get(value)) == b"data"
    remaining = await run(Ttl(value))
    assert remaining is not None
    assert 9 < remaining <= 10


async def test_delete_if_equal(run: Run[Any], key: Callable[[str], str]) -> None:
    await run(Set(key("lock"), b"mine", 10))
    assert await run(DeleteIfEqual(key("lock"), b"theirs")) is False
    assert await run(Get(key("lock"))) == b"mine"
    assert await run(DeleteIfEqual(key("lock"), b"mine")) is True
    assert await run(Get(key("lock"))) is None
    assert await run(DeleteIfEqual(key("lock"), b"mine")) is False


async def test_expire_if_equal(run: Run[Any], key: Callable[[str], str]) -> None:
    await run(Set(key("lock"), b"mine", 1))
    assert await run(ExpireIfEqual(key("lock"), b"theirs", 60)) is False
    assert await run(ExpireIfEqual(key("lock"), b"mine", 60)) is True
    remaining = await run(Ttl(key("lock")))
    assert remaining is not None
    assert 59 < remaining <= 60
    assert await run(ExpireIfEqual(key("absent"), b"mine", 60)) is False


async def test_incr_counts_from_one_and_keeps_ttl(run: Run[Any], key: Callable[[str], str]) -> None:
    assert await run(Incr(key("n"))) == 1
    assert await run(Incr(key("n"))) == 2
    assert await run(Ttl(key("n"))) == math.inf
    await run(Set(key("m"), b"41", 30))
    assert await run(Incr(key("m"))) == 42
    remaining = await run(Ttl(key("m")))
    assert remaining is not None
    assert 29 < remaining <= 30


async def test_ping(run: Run[Any]) -> None:
    assert await run(Ping()) is True


async def test_take_lease_reads_what_it_guards(run: Run[Any], key: Callable[[str], str]) -> None:
    value, lease = key("v"), key("v") + ":lease"
    got = await run(TakeLease(lease, b"t1", 10, value))
    assert got == Leased(True, None, 0.0)
    other = await run(TakeLease(lease, b"t2", 10, value))
    assert not other.acquired
    assert 9 < other.remaining <= 10
    await run(Release(lease, b"t1", "chan"))
    await run(Set(value, b"", 10))
    assert await run(TakeLease(lease, b"t3", 10, value)) == Leased(True, b"", 0.0)


async def test_a_lease_on_probation_lives_that_long_until_its_holder_confirms_it(
    run: Run[Any], key: Callable[[str], str], request: pytest.FixtureRequest
) -> None:
    """A server may run a lease request after its caller gave up: taken on probation, the
    lease lapses that soon unless its holder (who has the reply) extends it. The in-memory
    store runs each request when it is made, so it takes the whole lease at once."""
    value, lease = key("v"), key("v") + ":lease"
    assert (await run(TakeLease(lease, b"t1", 10, value, probation=0.25))).acquired
    other = await run(TakeLease(lease, b"t2", 10, value, probation=0.25))
    assert not other.acquired
    in_memory = str(request.node.callspec.params["run"]).startswith("memory")
    assert 0 < other.remaining <= (10 if in_memory else 0.25)
    assert await run(ExpireIfEqual(lease, b"t1", 10))  # the holder confirms it
    confirmed = await run(TakeLease(lease, b"t2", 10, value, probation=0.25))
    assert not confirmed.acquired
    assert 9 < confirmed.remaining <= 10


async def test_fill_only_under_its_own_lease(run: Run[Any], key: Callable[[str], str]) -> None:
    value, lease = key("v"), key("v") + ":lease"
    await run(TakeLease(lease, b"mine", 10, value))
    assert await run(Fill(value, b"data", 30, lease, b"other", "chan")) is False
    assert await run(Get(value)) is None
    assert await run(Fill(value, b"data", 30, lease, b"mine", "chan")) is True
    assert await run(Get(value)) == b"data"
    assert await run(Get(lease)) is None  # the fill released the lease
    assert await run(Fill(value, b"again", 30, lease, b"mine", "chan")) is False


async def test_release_and_invalidate(run: Run[Any], key: Callable[[str], str]) -> None:
    value, lease = key("v"), key("v") + ":lease"
    await run(Set(lease, b"mine", 10))
    assert await run(Release(lease, b"theirs", "chan")) is False
    assert await run(Release(lease, b"mine", "chan")) is True
    assert await run(Get(lease)) is None
    await run(Set(value, b"data", 10))
    await run(Set(lease, b"tok", 10))
    assert await run(Invalidate([value, lease], "chan")) == 2
    assert await run(GetMany([value, lease])) == [None, None]


async def test_acquire_fences_rise(run: Run[Any], key: Callable[[str], str]) -> None:
    lock, fence = key("l"), key("l") + ":fence"
    fences = []
    for n in range(5):
        got = await run(Acquire(lock, b"t%d" % n, 10, fence))
        assert got.acquired
        fences.append(got.fence)
        held = await run(Acquire(lock, b"x", 10, fence))
        assert not held.acquired
        assert 0 < held.remaining <= 10
        await run(Release(lock, b"t%d" % n, "chan"))
    assert fences == sorted(fences)
    assert len(set(fences)) == 5
    assert fences[0] > 1_000_000_000_000_000  # seeded from the clock in microseconds
    assert (await run(Acquire(key("plain"), b"t", 10))).fence == 1


async def test_scan_finds_every_key_once_and_ends_at_zero(
    run: Run[Any], key: Callable[[str], str], prefix: str
) -> None:
    names = [key(f"k{n}") for n in range(60)]  # many hash tags: every primary of a Cluster
    await run(SetMany([(name, b"1", 30) for name in names]))
    cursor, found, rounds = 0, [], 0
    while True:
        cursor, keys = await run(ScanKeys(cursor, f"{prefix}:*", count=10))
        found += keys
        rounds += 1
        if cursor == 0:
            break
        assert rounds < 1000
    assert set(found) == set(names)
    await run(UnlinkEach(found))
    assert await run(GetMany(names)) == [None] * len(names)


async def test_tag_versions_on_many_slots(run: Run[Any], key: Callable[[str], str]) -> None:
    tags = [key("tag-a"), key("tag-b")]
    raw, versions = await run(ReadTagged(key("v"), tags, [b"a1", b"b1"]))
    assert (raw, versions) == (None, [b"a1", b"b1"])
    await run(RetireTags(tags[:1], [b"a2"]))
    await run(Set(key("v"), b"data", 10))
    assert await run(ReadTagged(key("v"), tags, [b"x", b"y"])) == (b"data", [b"a2", b"b1"])
