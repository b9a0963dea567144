"""The near cache: LocalCache rules with a fake clock, then SyncNearBackend on real servers.

Unit tests drive the invalidation channel by hand (``local.start(None, prefix)`` and
``channel_up`` / ``channel_down`` / ``invalidate``) over the memory backend. Integration
tests wrap backends from :func:`cachekit.backends.redis.connect` and run each scenario in
both invalidation modes: CLIENT TRACKING (RESP3, BCAST) and the pub/sub fallback.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from multiprocessing.connection import Connection
from typing import Any, Literal, TypeVar, cast

import pytest
import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel

from cachekit.backends.base import SyncBackend
from cachekit.backends.memory import AsyncMemoryBackend, MemoryStore, SyncMemoryBackend
from cachekit.backends.ops import Delete, Get, Incr, Op, Ping, Publish, Set
from cachekit.backends.ops.bitmaps import MergeBits
from cachekit.backends.ops.leases import Fill
from cachekit.backends.ops.responses import ReadResponse
from cachekit.backends.ops.tags import ReadTagged, RetireTags
from cachekit.backends.ops.waiting import waiting_key
from cachekit.backends.redis import connect
from cachekit.exceptions import BackendError, BackendUnavailable, ConfigurationError
from cachekit.flow.envelope import encode
from cachekit.near.backend import AsyncNearBackend, ReadWithTtl, SyncNearBackend, written_keys
from cachekit.near.local import FILL_PATIENCE, LOCAL_COUNTERS, LocalCache
from cachekit.serializers import JsonSerializer
from cachekit.testing import FakeClock
from tests.support.servers import PrivateServer
from tests.support.waiting import holds_within

T = TypeVar("T")
Mode = Literal["tracking", "pubsub"]
MODES: tuple[Mode, ...] = ("tracking", "pubsub")
PREFIX = "u"
KEY = "u:{k}"


def envelope(key: str, value: object) -> bytes:
    """The bytes cachekit stores for ``value`` at ``key`` (the local layer keeps only these)."""
    return encode(key, value, JsonSerializer(), created=1_700_000_000.0, expires=0.0)


# --------------------------------------------------------------------------- unit


@pytest.fixture
def store(clock: FakeClock) -> MemoryStore:
    return MemoryStore(clock=clock)


@pytest.fixture
def local(clock: FakeClock) -> Iterator[LocalCache]:
    layer = LocalCache(max_entries=3, ttl=5, clock=clock)
    layer.start(None, PREFIX)  # the channel is driven by hand
    layer.channel_up("tracking")
    yield layer
    layer.close()


@pytest.fixture
def near(store: MemoryStore, local: LocalCache) -> SyncNearBackend:
    return SyncNearBackend(SyncMemoryBackend(store), local)


def test_the_lru_is_bounded_and_drops_the_least_recently_used(
    store: MemoryStore, local: LocalCache, near: SyncNearBackend
) -> None:
    keys = [f"u:{{{n}}}" for n in range(4)]
    for key in keys[:3]:
        store.write(key, envelope(key, key), None)
        near.run(Get(key))
    near.run(Get(keys[0]))  # a local hit: keys[0] is now the most recently used
    store.write(keys[3], envelope(keys[3], 3), None)
    near.run(Get(keys[3]))
    assert len(local) == 3
    assert local.stats()["local_evictions"] == 1
    hits = local.stats()["local_hits"]
    for key in (keys[0], keys[2], keys[3]):
        near.run(Get(key))
    assert local.stats()["local_hits"] == hits + 3
    near.run(Get(keys[1]))  # evicted: read from the store again
    assert local.stats()["local_hits"] == hits + 3


def test_a_local_copy_never_outlives_the_keys_redis_ttl(
    store: MemoryStore, clock: FakeClock, near: SyncNearBackend
) -> None:
    old, new = envelope(KEY, "old"), envelope(KEY, "new")
    store.write(KEY, old, 2.0)
    assert near.run(Get(KEY)) == old
    store.write(KEY, new, 100.0)  # behind the layer's back: no invalidation
    clock.advance(1.9)
    assert near.run(Get(KEY)) == old  # served locally, so it is the copy
    clock.advance(0.2)
    assert near.run(Get(KEY)) == new  # the copy died with the key's old TTL (2 s < ttl 5 s)


def test_a_key_without_ttl_gets_the_local_ttl(
    store: MemoryStore, clock: FakeClock, near: SyncNearBackend
) -> None:
    old, new = envelope(KEY, "old"), envelope(KEY, "new")
    store.write(KEY, old, None)
    near.run(Get(KEY))
    store.write(KEY, new, None)
    clock.advance(4.9)
    assert near.run(Get(KEY)) == old
    clock.advance(0.2)
    assert near.run(Get(KEY)) == new


class SlowRead:
    """A backend whose ReadWithTtl takes ``seconds`` of fake time after reading."""

    def __init__(self, inner: SyncBackend, clock: FakeClock, seconds: float) -> None:
        self.inner, self.clock, self.seconds = inner, clock, seconds

    def run(self, op: Op[T]) -> T:
        result = self.inner.run(op)
        if isinstance(op, ReadWithTtl):
            self.clock.advance(self.seconds)
        return result

    def close(self) -> None:
        self.inner.close()


def test_a_copys_life_counts_from_when_its_read_was_sent(
    store: MemoryStore, clock: FakeClock, local: LocalCache
) -> None:
    near = SyncNearBackend(SlowRead(SyncMemoryBackend(store), clock, 0.5), local)
    store.write(KEY, envelope(KEY, "v"), 2.0)
    near.run(Get(KEY))  # read at t, answered at t + 0.5, PTTL 2: the copy ends at t + 2
    hits = local.stats()["local_hits"]
    clock.advance(1.4)
    near.run(Get(KEY))
    assert local.stats()["local_hits"] == hits + 1
    clock.advance(0.2)
    near.run(Get(KEY))  # t + 2.1: the key is gone, and so is the copy
    assert local.stats()["local_hits"] == hits + 1


def test_losing_the_channel_flushes_and_passes_reads_through(
    store: MemoryStore, local: LocalCache, near: SyncNearBackend
) -> None:
    store.write(KEY, envelope(KEY, "old"), None)
    near.run(Get(KEY))
    local.channel_down()
    assert (len(local), local.ready, local.stats()["local_flushes"]) == (0, False, 1)
    store.write(KEY, envelope(KEY, "new"), None)
    for _ in range(3):
        assert near.run(Get(KEY)) == envelope(KEY, "new")
    assert len(local) == 0  # nothing kept
    assert local.stats()["local_hits"] == 0  # nothing served
    local.channel_down()  # failed reconnects are not more flushes
    assert local.stats()["local_flushes"] == 1
    local.channel_up("tracking")
    near.run(Get(KEY))
    near.run(Get(KEY))
    assert local.stats()["local_hits"] == 1


def test_an_invalidation_or_flush_voids_a_fill_in_flight(local: LocalCache) -> None:
    value = envelope(KEY, 1)
    token = local.begin(KEY)
    local.invalidate([KEY])
    assert not local.install(KEY, token, value, math.inf)
    token = local.begin(KEY)
    local.flush()
    assert not local.install(KEY, token, value, math.inf)
    token = local.begin(KEY)
    local.channel_down()
    local.channel_up("tracking")
    assert not local.install(KEY, token, value, math.inf)
    first, second = local.begin(KEY), local.begin(KEY)
    assert second == 0  # one fill per key at a time: the second reader reads through
    assert local.install(KEY, first, value, math.inf)
    assert local.lookup(KEY) == value


def test_a_hot_key_read_without_pause_is_kept(clock: FakeClock, local: LocalCache) -> None:
    """Overlapping reads of one key: the first one's fill lands (it used to be voided by
    the next read's, so a key that was always being read was never kept)."""
    value = envelope(KEY, 1)
    tokens = [local.begin(KEY) for _ in range(5)]  # five reads overlap
    assert tokens[0]
    assert not any(tokens[1:])
    assert local.install(KEY, tokens[0], value, math.inf)
    assert local.lookup(KEY) == value


def test_a_fill_presumed_lost_lets_the_next_reader_fill(
    clock: FakeClock, local: LocalCache
) -> None:
    value = envelope(KEY, 1)
    lost = local.begin(KEY)
    clock.advance(FILL_PATIENCE)
    retry = local.begin(KEY)
    assert retry
    assert retry != lost
    assert not local.install(KEY, lost, value, math.inf)
    assert local.install(KEY, retry, value, math.inf)


def test_own_writes_are_read_at_once(store: MemoryStore, near: SyncNearBackend) -> None:
    near.run(Set(KEY, envelope(KEY, "old"), ttl=60))
    near.run(Get(KEY))
    near.run(Set(KEY, envelope(KEY, "new"), ttl=60))  # no invalidation from a server here
    assert near.run(Get(KEY)) == envelope(KEY, "new")
    near.run(Delete([KEY]))
    assert near.run(Get(KEY)) is None


class Interleave:
    """A backend that runs ``meanwhile`` right after a ReadWithTtl has read (once)."""

    def __init__(self, inner: SyncBackend, meanwhile: Callable[[], None]) -> None:
        self.inner, self.meanwhile = inner, meanwhile

    def run(self, op: Op[T]) -> T:
        result = self.inner.run(op)
        if isinstance(op, ReadWithTtl):
            meanwhile, self.meanwhile = self.meanwhile, lambda: None
            meanwhile()
        return result

    def close(self) -> None:
        self.inner.close()


def test_a_fill_that_read_before_an_own_write_is_not_kept(
    store: MemoryStore, local: LocalCache
) -> None:
    writer = SyncNearBackend(SyncMemoryBackend(store), local)

    def write() -> None:
        writer.run(Set(KEY, envelope(KEY, "new"), 60))

    reader = SyncNearBackend(Interleave(SyncMemoryBackend(store), write), local)
    store.write(KEY, envelope(KEY, "old"), 60)
    assert reader.run(Get(KEY)) == envelope(KEY, "old")  # it asked before the write
    assert writer.run(Get(KEY)) == envelope(KEY, "new")  # but did not install "old"


def test_written_keys() -> None:
    assert written_keys(Get(KEY)) == ()
    assert written_keys(Ping()) == ()
    assert written_keys(Publish("c", "m")) == ()
    assert written_keys(Set(KEY, b"v", 1)) == (KEY,)
    assert written_keys(Set(KEY, b"v", 1, nx=True)) == ()  # only creates: nothing was kept
    assert written_keys(Delete(["a", "b"])) == ("a", "b")
    assert written_keys(Incr("n")) == ("n",)
    fill = Fill(KEY, b"v", 1, "lease", b"t", "ch")
    assert written_keys(fill) == (KEY, "lease", waiting_key(KEY))  # it clears the waiter record
    assert written_keys(RetireTags(["t1", "t2"], [b"a", b"b"])) == ("t1", "t2")
    assert written_keys(ReadTagged(KEY, ["t1"], [b"a"])) == ()
    # The response cache's read creates a missing generation only: no copy to drop, no
    # announcement to publish on every read.
    assert (
        written_keys(ReadResponse("p:http:{p}:g", "p:http:{p}:u", b"g1", 60, "p:http:{p}:v")) == ()
    )
    merge = MergeBits([("p1", b"\x01"), ("p2", b"\x02")], "scratch", "count", 2)
    assert written_keys(merge) == ("scratch", "p1", "p2", "count")


def test_only_envelopes_under_the_prefix_are_kept(
    store: MemoryStore, local: LocalCache, near: SyncNearBackend
) -> None:
    store.write("u:bloom:{p}", b"\x00\xff", None)  # not an envelope: never kept
    store.write("other:{k}", envelope("other:{k}", 1), None)  # not under the prefix
    for _ in range(2):
        near.run(Get("u:bloom:{p}"))
        near.run(Get("other:{k}"))
        near.run(Get("u:{absent}"))  # misses are never kept
    assert len(local) == 0
    assert local.stats()["local_hits"] == 0


def test_nothing_is_served_before_start_or_after_close(
    store: MemoryStore, clock: FakeClock
) -> None:
    local = LocalCache(clock=clock)
    near = SyncNearBackend(SyncMemoryBackend(store), local)
    store.write(KEY, envelope(KEY, 1), None)
    near.run(Get(KEY))
    local.start(None, PREFIX)
    near.run(Get(KEY))  # started, but no channel yet
    assert len(local) == 0
    assert not local.ready
    local.channel_up("tracking")
    near.run(Get(KEY))
    assert len(local) == 1
    local.close()
    assert (len(local), local.ready, local.publish_channel) == (0, False, None)
    local.start(None, PREFIX)  # a closed layer may be started again
    with pytest.raises(ConfigurationError):
        local.start(None, PREFIX)


async def test_the_async_face_shares_the_layer(
    store: MemoryStore, local: LocalCache, near: SyncNearBackend
) -> None:
    aio = AsyncNearBackend(AsyncMemoryBackend(store), local)
    await aio.run(Set(KEY, envelope(KEY, "v"), ttl=60))
    assert await aio.run(Get(KEY)) == envelope(KEY, "v")
    assert near.run(Get(KEY)) == envelope(KEY, "v")  # filled by the async face
    assert local.stats()["local_hits"] == 1
    await aio.run(Delete([KEY]))
    assert near.run(Get(KEY)) is None


def test_pubsub_mode_announces_writes_and_tracking_mode_does_not(
    store: MemoryStore, clock: FakeClock
) -> None:
    heard: list[tuple[str, str]] = []
    store.subscribers.append(lambda channel, message: heard.append((channel, message)))
    for mode in ("pubsub", "tracking", "auto"):
        local = LocalCache(mode=mode, clock=clock)
        local.start(None, PREFIX)
        if mode == "auto":
            local.channel_up("tracking")  # the server tracks keys: no announcements
        SyncNearBackend(SyncMemoryBackend(store), local).run(Delete([KEY, "u:{b}"]))
        local.close()
    assert heard == [("u:__local__", f"{KEY}\nu:{{b}}")]


class Failing:
    def run(self, op: Op[T]) -> T:
        raise BackendUnavailable("down")

    def close(self) -> None:
        return None


def test_backend_errors_pass_through(local: LocalCache) -> None:
    near = SyncNearBackend(Failing(), local)
    with pytest.raises(BackendUnavailable):
        near.run(Get(KEY))
    with pytest.raises(BackendUnavailable):
        near.run(Set(KEY, b"v", 1))


class Scripted:
    """Fails writes with ``write_error`` and announcements with ``publish_error``."""

    def __init__(self, write_error: BackendError | None, publish_error: BackendError | None):
        self.write_error, self.publish_error = write_error, publish_error
        self.ran: list[str] = []

    def run(self, op: Op[T]) -> T:
        self.ran.append(type(op).__name__)
        error = self.publish_error if isinstance(op, Publish) else self.write_error
        if error is not None:
            raise error
        return cast(T, True)

    def close(self) -> None:
        return None


def test_pubsub_announcements_follow_the_outcome_of_the_write(clock: FakeClock) -> None:
    local = LocalCache(mode="pubsub", clock=clock)
    local.start(None, PREFIX)
    cases: list[tuple[BackendError | None, BackendError | None, bool]] = [
        (None, None, True),
        (None, BackendUnavailable("publish lost"), True),  # the write still succeeds
        (BackendError("ERR script failed halfway"), None, True),  # it may have written
        (BackendUnavailable("down"), None, False),  # no second wait past the deadline
    ]
    for write_error, publish_error, announced in cases:
        backend = Scripted(write_error, publish_error)
        near = SyncNearBackend(backend, local)
        if write_error is None:
            assert near.run(Set(KEY, b"v", 1)) is True
        else:
            with pytest.raises(type(write_error)):
                near.run(Set(KEY, b"v", 1))
        assert ("Publish" in backend.ran) is announced


def test_configuration_is_checked() -> None:
    with pytest.raises(ConfigurationError):
        LocalCache(max_entries=0)
    with pytest.raises(ConfigurationError):
        LocalCache(ttl=0)
    with pytest.raises(ConfigurationError):
        LocalCache(mode="broadcast")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        LocalCache().start(None, "")
    assert LocalCache(ttl=timedelta(seconds=3)).ttl == 3.0
    assert tuple(LocalCache().stats()) == LOCAL_COUNTERS


# --------------------------------------------------------------------------- real servers


class Near:
    """A near-cached pair of backends on ``url`` under ``prefix``, and a way to write."""

    def __init__(self, url: str, prefix: str, mode: Mode, *, inner: Any = None) -> None:
        self.sync, self.aio = connect(url, {})
        self.local = LocalCache(mode=mode, ttl=30)
        self.local.start(self.sync.client, prefix)
        self.near = SyncNearBackend(inner(self.sync) if inner else self.sync, self.local)
        self.anear = AsyncNearBackend(self.aio, self.local)

    def close(self) -> None:
        self.local.close()
        self.sync.close()


@pytest.fixture(params=["redis", "valkey"])
def server_url(request: pytest.FixtureRequest, redis_url: str) -> Iterator[str]:
    """The shared server (Redis 7 here), then a private Valkey 9."""
    if request.param == "redis":
        yield redis_url
        return
    server = PrivateServer().start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def cleanup() -> Iterator[list[Callable[[], None]]]:
    """Closers to run when the test ends."""
    closers: list[Callable[[], None]] = []
    yield closers
    for close in reversed(closers):
        close()


def other_write(
    url: str, prefix: str, mode: Mode, cleanup: list[Callable[[], None]]
) -> Callable[[str, bytes], None]:
    """How another process writes: any client under tracking; a near cache under pub/sub."""
    if mode == "tracking":
        client = redis.Redis.from_url(url)
        cleanup.append(client.close)

        def plain(key: str, value: bytes) -> None:
            client.set(key, value, px=60_000)

        return plain
    writer = Near(url, prefix, mode)
    cleanup.append(writer.close)

    def announced(key: str, value: bytes) -> None:
        writer.near.run(Set(key, value, ttl=60))

    return announced


def held(side: Near, key: str) -> bool:
    """Read ``key`` through the near backend; whether the local layer now keeps it."""
    side.near.run(Get(key))
    return side.local.lookup(key) is not None


@pytest.mark.parametrize("mode", MODES)
def test_a_write_elsewhere_becomes_invisible_locally(
    server_url: str, prefix: str, mode: Mode, cleanup: list[Callable[[], None]]
) -> None:
    key = f"{prefix}:{{p}}"
    old, new = envelope(key, "old"), envelope(key, "new")
    write = other_write(server_url, prefix, mode, cleanup)
    write(key, old)
    side = Near(server_url, prefix, mode)
    try:
        assert side.local.wait_ready(5)
        assert side.local.active_mode == mode
        assert holds_within(
            lambda: side.near.run(Get(key)) == old and side.local.lookup(key) == old
        )
        write(key, new)
        assert holds_within(lambda: side.local.lookup(key) != old, within=1.0)
        assert side.near.run(Get(key)) == new
        assert side.local.stats()["local_invalidations"] >= 1
    finally:
        side.close()


class Paused:
    """Holds the reply of the first ReadWithTtl until released (the GET in flight)."""

    def __init__(self, inner: SyncBackend) -> None:
        self.inner = inner
        self.read, self.release = threading.Event(), threading.Event()

    def run(self, op: Op[T]) -> T:
        result = self.inner.run(op)
        if isinstance(op, ReadWithTtl) and not self.release.is_set():
            self.read.set()
            self.release.wait(10)
        return result

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_read_in_flight_during_an_invalidation_is_not_installed(
    redis_url: str, prefix: str, mode: Mode, cleanup: list[Callable[[], None]]
) -> None:
    key = f"{prefix}:{{race}}"
    old, new = envelope(key, "old"), envelope(key, "new")
    write = other_write(redis_url, prefix, mode, cleanup)
    write(key, old)
    paused: list[Paused] = []

    def pause(backend: SyncBackend) -> Paused:
        paused.append(Paused(backend))
        return paused[0]

    side = Near(redis_url, prefix, mode, inner=pause)
    try:
        assert side.local.wait_ready(5)
        answers: list[bytes | None] = []
        reader = threading.Thread(target=lambda: answers.append(side.near.run(Get(key))))
        reader.start()
        assert paused[0].read.wait(5)  # the server has answered "old"; the reply waits
        voided = side.local.stats()["local_invalidations"]
        write(key, new)
        assert holds_within(lambda: side.local.stats()["local_invalidations"] > voided)
        paused[0].release.set()
        reader.join(5)
        assert answers == [old]  # it asked before the write
        assert side.local.lookup(key) is None  # but "old" was not kept
        assert side.near.run(Get(key)) == new
        assert side.local.lookup(key) == new
    finally:
        side.close()


def test_auto_mode_falls_back_to_pubsub_without_client_tracking(prefix: str) -> None:
    server = PrivateServer("--rename-command", "CLIENT", "CLIENT_RENAMED_FOR_TEST").start()
    try:
        key = f"{prefix}:{{p}}"
        auto = Near(server.url, prefix, "auto")  # type: ignore[arg-type]
        forced = Near(server.url, prefix, "tracking")
        try:
            assert auto.local.wait_ready(5)
            assert auto.local.active_mode == "pubsub"
            assert auto.local.publish_channel == f"{prefix}:__local__"
            assert not forced.local.wait_ready(0.5)  # forced tracking: pure pass-through
            auto.near.run(Set(key, envelope(key, "old"), ttl=60))
            assert holds_within(lambda: held(auto, key))
            forced.near.run(Set(key, envelope(key, "x"), ttl=60))  # not announced: wrong mode
            other = Near(server.url, prefix, "pubsub")
            other.near.run(Set(key, envelope(key, "new"), ttl=60))
            assert holds_within(lambda: auto.local.lookup(key) is None, within=1.0)
            other.close()
        finally:
            auto.close()
            forced.close()
    finally:
        server.stop()


@pytest.mark.parametrize("mode", MODES)
def test_killing_the_server_flushes_and_a_restart_serves_again(
    private_redis: PrivateServer, mode: Mode
) -> None:
    key = "k:{p}"
    side = Near(private_redis.url, "k", mode)
    try:
        assert side.local.wait_ready(5)
        side.near.run(Set(key, envelope(key, 1), ttl=60))
        assert holds_within(lambda: held(side, key))
        flushes = side.local.stats()["local_flushes"]
        private_redis.kill()
        assert holds_within(lambda: not side.local.ready, within=2.0)
        assert len(side.local) == 0
        assert side.local.stats()["local_flushes"] == flushes + 1
        with pytest.raises(BackendError):  # passed through to the dead server
            side.near.run(Get(key))
        private_redis.start()  # the same port, empty
        assert side.local.wait_ready(5)
        side.near.run(Set(key, envelope(key, 2), ttl=60))
        assert holds_within(lambda: held(side, key))
        assert side.near.run(Get(key)) == envelope(key, 2)
    finally:
        side.close()


def test_flushall_on_the_server_flushes_the_layer(private_redis: PrivateServer) -> None:
    key = "k:{p}"
    side = Near(private_redis.url, "k", "tracking")
    try:
        assert side.local.wait_ready(5)
        side.near.run(Set(key, envelope(key, 1), ttl=60))
        assert holds_within(lambda: held(side, key))
        flushes = side.local.stats()["local_flushes"]
        redis.Redis(port=private_redis.port).flushall()  # a null invalidation
        assert holds_within(lambda: side.local.stats()["local_flushes"] == flushes + 1)
        assert len(side.local) == 0
        assert side.local.ready  # the channel itself is fine
    finally:
        side.close()


def test_the_channel_takes_a_url_or_either_client(redis_url: str, prefix: str) -> None:
    sources: list[Any] = [
        f"{redis_url}?prefix=shop&socket_timeout=0.2",  # cachekit's own options are ignored
        redis.Redis.from_url(redis_url),
        redis.asyncio.Redis.from_url(redis_url),
    ]
    for source in sources:
        local = LocalCache()
        local.start(source, prefix)
        try:
            assert local.wait_ready(5)
            assert local.active_mode == "tracking"
        finally:
            local.close()
    sources[1].close()
    refused = LocalCache()
    with pytest.raises(ConfigurationError):
        refused.start(object(), prefix)  # type: ignore[arg-type]
    refused.start(None, prefix)  # a refused source left it unstarted
    sentinels: Any = redis.sentinel.Sentinel([("127.0.0.1", 1)])
    behind = LocalCache()
    behind.start(sentinels.master_for("primary"), prefix)  # asks the Sentinels at connect
    try:
        assert not behind.wait_ready(0.3)  # nobody listens on port 1: pass-through
    finally:
        behind.close()
    async_sentinels: Any = redis.asyncio.sentinel.Sentinel([("127.0.0.1", 1)])
    with pytest.raises(ConfigurationError, match="sync master_for"):
        LocalCache().start(async_sentinels.master_for("primary"), prefix)


async def test_the_async_face_on_redis(redis_url: str, prefix: str) -> None:
    key = f"{prefix}:{{a}}"
    side = Near(redis_url, prefix, "tracking")
    client = redis.Redis.from_url(redis_url)
    try:
        assert await asyncio.to_thread(side.local.wait_ready, 5)
        await side.anear.run(Set(key, envelope(key, "old"), ttl=60))
        for _ in range(200):
            if await side.anear.run(Get(key)) and side.local.lookup(key) is not None:
                break
            await asyncio.sleep(0.005)
        assert side.near.run(Get(key)) == envelope(key, "old")  # the sync face sees it too
        client.set(key, envelope(key, "new"))
        for _ in range(200):
            if side.local.lookup(key) is None:
                break
            await asyncio.sleep(0.005)
        assert await side.anear.run(Get(key)) == envelope(key, "new")
    finally:
        client.close()
        await side.aio.close()
        side.close()


# --------------------------------------------------------------------------- fleet

TRIALS = 50
BOUND = 0.050


def _reader(url: str, prefix: str, key: str, mode: Mode, conn: Connection) -> None:
    """Process B: hold the old value locally, then report when the layer drops it."""
    side = Near(url, prefix, mode)
    try:
        conn.send(("ready", side.local.wait_ready(10)))
        while (message := conn.recv())[0] == "arm":
            old: bytes = message[1]
            give_up = time.monotonic() + 5
            while side.near.run(Get(key)) != old or side.local.lookup(key) != old:
                if time.monotonic() > give_up:
                    conn.send(("armed", False))
                    return
            conn.send(("armed", True))
            give_up = time.monotonic() + 2
            while side.local.lookup(key) == old and time.monotonic() < give_up:
                pass
            conn.send(("seen", time.monotonic(), side.local.ready))
    finally:
        side.close()


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_a_write_in_one_process_is_invisible_to_anothers_local_layer_within_50ms(
    redis_url: str,
    prefix: str,
    mode: Mode,
    capsys: pytest.CaptureFixture[str],
    cleanup: list[Callable[[], None]],
) -> None:
    key = f"{prefix}:{{fleet}}"
    write = other_write(redis_url, prefix, mode, cleanup)
    ours, theirs = multiprocessing.Pipe()
    process = multiprocessing.get_context("spawn").Process(
        target=_reader, args=(redis_url, prefix, key, mode, theirs), daemon=True
    )
    process.start()
    try:
        assert ours.poll(30)
        assert ours.recv() == ("ready", True)
        latencies = []
        value = envelope(key, 0)
        write(key, value)
        for trial in range(1, TRIALS + 1):
            ours.send(("arm", value))
            assert ours.poll(10)
            assert ours.recv() == ("armed", True)
            value = envelope(key, trial)
            write(key, value)
            acknowledged = time.monotonic()  # CLOCK_MONOTONIC: one clock for both processes
            assert ours.poll(10)
            kind, seen, ready = ours.recv()
            assert (kind, ready) == ("seen", True)
            latencies.append(max(0.0, seen - acknowledged))  # 0: gone before A saw its ack
        ours.send(("stop",))
    finally:
        process.join(10)
        if process.is_alive():
            process.kill()
    ms = sorted(latency * 1000 for latency in latencies)
    p99 = ms[math.ceil(0.99 * len(ms)) - 1]
    with capsys.disabled():
        print(
            f"\nnear cache invalidation ({mode}), {TRIALS} trials: p50 "
            f"{statistics.median(ms):.2f} ms, p99 {p99:.2f} ms, max {ms[-1]:.2f} ms"
        )
    assert max(latencies) < BOUND
