"""The Cache object: URLs and options, injected clients, two-phase binding, raw API."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from cachekit import (
    MISSING,
    BackendUnavailable,
    Cache,
    ConfigurationError,
    MsgpackSerializer,
    NotConfigured,
    SerializationError,
)
from cachekit.backends.guard import AsyncGuardedBackend, SyncGuardedBackend
from cachekit.backends.redis import AsyncRedisBackend, SyncRedisBackend
from cachekit.config import REDIS_DEFAULTS, parse_url
from cachekit.testing import FakeClock
from tests.support.servers import PrivateServer


def _faces(cache: Cache) -> tuple[SyncRedisBackend, AsyncRedisBackend]:
    binding = cache.bound()
    sync_guard, async_guard = binding.sync.backend, binding.aio.backend
    assert isinstance(sync_guard, SyncGuardedBackend)
    assert isinstance(async_guard, AsyncGuardedBackend)
    assert isinstance(sync_guard.inner, SyncRedisBackend)
    assert isinstance(async_guard.inner, AsyncRedisBackend)
    return sync_guard.inner, async_guard.inner


def test_url_options_reach_both_pools() -> None:
    cache = Cache.from_url(
        "redis://127.0.0.1:6379/3?socket_timeout=0.2&prefix=shop&max_connections=7"
    )
    for face in _faces(cache):
        pool = face.client.connection_pool
        kwargs = pool.connection_kwargs
        assert kwargs["socket_timeout"] == 0.2
        assert kwargs["socket_connect_timeout"] == REDIS_DEFAULTS["socket_connect_timeout"]
        assert kwargs["db"] == 3
        assert pool.max_connections == 7 + 1  # the guard admits 7; one for the listener
        assert getattr(pool, "timeout", None) == REDIS_DEFAULTS["pool_timeout"]
    assert cache.bound().ctx.keyspace.prefix == "shop"


def test_the_cache_owns_its_time_budget() -> None:
    """No redis-py retry chain (4-10 s against a dead server) and short timeouts."""
    assert REDIS_DEFAULTS["socket_timeout"] <= 0.25
    assert REDIS_DEFAULTS["socket_connect_timeout"] <= 0.25
    for face in _faces(Cache.from_url("redis://127.0.0.1:6379/0")):
        retry = face.client.connection_pool.connection_kwargs["retry"]
        assert retry._retries == 1  # once, at once, and only for a broken connection (any redis-py)
        assert retry._supported_errors == (redis.ConnectionError,)


def test_keyword_options_win_over_the_query_string() -> None:
    cache = Cache.from_url("redis://localhost/0?prefix=a&socket_timeout=1", prefix="b")
    assert cache.bound().ctx.keyspace.prefix == "b"
    assert _faces(cache)[0].client.connection_pool.connection_kwargs["socket_timeout"] == 1.0


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://localhost", "unsupported URL scheme"),
        ("redis://localhost/0?sockettimeout=1", "unknown option 'sockettimeout'"),
        ("redis://localhost/0?socket_timeout=-1", "must be positive"),
        ("redis://localhost/0?socket_timeout=fast", "socket_timeout='fast'"),
        ("redis://localhost/0?serializer=pickle", "must be one of json, msgpack"),
        ("memory://?socket_timeout=1", "memory:// takes no Redis options"),
        ("redis://localhost/0?prefix=a%20b", "invalid key prefix"),
    ],
)
def test_bad_urls_are_refused_with_a_reason(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Cache.from_url(url)


def test_passwords_do_not_leak_into_errors() -> None:
    with pytest.raises(ConfigurationError) as info:
        Cache.from_url("http://user:hunter22@localhost")
    assert "hunter22" not in str(info.value)


def test_rediss_and_unix_urls_parse() -> None:
    secure = Cache.from_url("rediss://localhost:6380/0?ssl_cert_reqs=required")
    assert "SSL" in type(_faces(secure)[0].client.connection_pool.make_connection()).__name__
    assert parse_url("unix:///tmp/redis.sock?db=2").options == {"db": 2}


def test_serializer_by_url_and_by_instance() -> None:
    by_name = Cache.from_url("memory://?serializer=msgpack")
    assert isinstance(by_name.bound().ctx.serializer, MsgpackSerializer)
    by_instance = Cache.from_url("memory://", serializer=MsgpackSerializer())
    by_instance.sync.set("b", b"\x00bytes")
    assert by_instance.sync.get("b") == b"\x00bytes"


async def test_unix_socket_url(tmp_path: Path) -> None:
    sock = tmp_path / "r.sock"
    server = PrivateServer("--unixsocket", str(sock), "--unixsocketperm", "700").start()
    try:
        cache = Cache.from_url(f"unix://{sock}?prefix=unix")
        await cache.set("k", {"over": "unix"})
        assert cache.sync.get("k") == {"over": "unix"}
        await cache.close()
    finally:
        server.stop()


async def test_injected_clients(redis_url: str, prefix: str) -> None:
    async_client = redis.asyncio.Redis.from_url(redis_url)
    sync_client = redis.Redis.from_url(redis_url)
    async with Cache(client=async_client, sync_client=sync_client, prefix=prefix) as cache:
        await cache.set("k", [1, "two"])
        assert cache.sync.get("k") == [1, "two"]
    sync_client.close()


async def test_a_missing_face_says_how_to_fix_it(redis_url: str, prefix: str) -> None:
    async_only = Cache(client=redis.asyncio.Redis.from_url(redis_url), prefix=prefix)
    with pytest.raises(NotConfigured, match="sync_client="):
        async_only.sync.set("k", 1)
    await async_only.close()
    sync_only = Cache(sync_client=redis.Redis.from_url(redis_url), prefix=prefix)
    with pytest.raises(NotConfigured, match=r"client=redis\.asyncio\.Redis"):
        await sync_only.set("k", 1)
    sync_only.sync.close()


def test_injected_cluster_clients_are_refused_with_the_url_to_use() -> None:
    """A RedisCluster (sync or async) gets a clear error naming the URL form, not a crash."""
    # Built without discovery (never used); typed Any as a user's untyped code would pass it.
    sync_cluster: Any = object.__new__(redis.cluster.RedisCluster)
    async_cluster: Any = object.__new__(redis.asyncio.cluster.RedisCluster)
    with pytest.raises(ConfigurationError, match=r"redis\+cluster://"):
        Cache(sync_client=sync_cluster)
    with pytest.raises(ConfigurationError, match=r"redis\+cluster://"):
        Cache(client=async_cluster)


def test_decode_responses_clients_are_refused(redis_url: str) -> None:
    with pytest.raises(ConfigurationError, match="decode_responses"):
        Cache(sync_client=redis.Redis.from_url(redis_url, decode_responses=True))


async def test_two_phase_binding() -> None:
    cache = Cache(prefix="app")
    assert not cache.configured
    assert cache.stats()["hits"] == 0  # stats need no configuration
    with pytest.raises(NotConfigured, match=r"configure\('redis://"):
        await cache.get("k")
    with pytest.raises(NotConfigured):
        cache.sync.get("k")
    cache.configure("memory://")
    assert cache.configured
    with pytest.raises(ConfigurationError, match="already configured"):
        cache.configure("memory://")
    await cache.close()
    with pytest.raises(NotConfigured, match="closed"):
        await cache.get("k")


def test_configure_needs_exactly_one_target() -> None:
    with pytest.raises(ConfigurationError, match="exactly one"):
        Cache().configure()
    with pytest.raises(ConfigurationError, match="need a URL"):
        Cache().configure(sync_client=redis.Redis(), prefix="x")


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_raw_api_on_both_faces(backend: str, redis_cache: Cache, memory_cache: Cache) -> None:
    cache = redis_cache if backend == "redis" else memory_cache
    await cache.set("a", {"n": 1}, ttl=60)
    cache.sync.set("b", [2], ttl=timedelta(minutes=1))
    assert await cache.get("b") == [2]
    assert cache.sync.get("a") == {"n": 1}
    assert await cache.get("absent") is None
    assert cache.sync.get("absent", "fallback") == "fallback"
    await cache.set("none", None)
    assert await cache.get("none", MISSING) is None
    assert await cache.get("absent", MISSING) is MISSING
    await cache.set_many({"c": 3, "d": "4"}, ttl=60)
    cache.sync.set_many({"e": 5.5})
    assert await cache.get_many(["a", "c", "absent", "e"]) == {"a": {"n": 1}, "c": 3, "e": 5.5}
    assert cache.sync.get_many(["d"]) == {"d": "4"}
    assert await cache.get_many([]) == {}
    assert await cache.delete("a") is True
    assert cache.sync.delete("a") is False
    await cache.invalidate("c")
    cache.sync.invalidate("d")
    assert await cache.get_many(["a", "c", "d"]) == {}


async def test_raw_set_rejects_bad_ttls_and_values(memory_cache: Cache) -> None:
    with pytest.raises(ConfigurationError, match="ttl must be positive"):
        await memory_cache.set("k", 1, ttl=0)
    with pytest.raises(SerializationError, match="would not come back"):
        await memory_cache.set("k", object())
    assert await memory_cache.get("k", MISSING) is MISSING


def test_memory_ttls_follow_the_injected_clock(memory_cache: Cache, clock: FakeClock) -> None:
    memory_cache.sync.set("k", "v", ttl=10)
    clock.advance(9.99)
    assert memory_cache.sync.get("k") == "v"
    clock.advance(0.02)
    assert memory_cache.sync.get("k") is None


async def test_raw_reads_fail_open_and_writes_raise(private_redis: PrivateServer) -> None:
    cache = Cache.from_url(private_redis.url)
    await cache.set("k", 1)
    private_redis.kill()
    assert await cache.get("k", "default") == "default"
    assert cache.sync.get_many(["k"]) == {}
    assert cache.stats()["fallbacks"] == 2
    with pytest.raises(BackendUnavailable):
        await cache.set("k", 2)
    with pytest.raises(BackendUnavailable):
        cache.sync.delete("k")
    await cache.close()


async def test_caching_resumes_after_a_restart(private_redis: PrivateServer) -> None:
    cache = Cache.from_url(private_redis.url)
    await cache.set("k", 1)
    private_redis.kill()
    assert await cache.get("k") is None
    private_redis.start()
    await cache.set("k", 2)
    assert await cache.get("k") == 2
    assert cache.sync.get("k") == 2
    await cache.close()


@pytest.mark.slow
async def test_a_hung_server_costs_a_bounded_wait(private_redis: PrivateServer) -> None:
    """SIGSTOP: the socket accepts but nothing answers; reads still fail open."""
    cache = Cache.from_url(private_redis.url, breaker_cooldown=0.2)
    await cache.set("k", 1)
    private_redis.pause()
    try:
        results = await asyncio.gather(*(cache.get("k", "miss") for _ in range(20)))
        assert results == ["miss"] * 20
        assert cache.sync.get("k", "miss") == "miss"
        breaker = cache.breaker
        assert breaker is not None
        assert breaker.state == "open"
    finally:
        private_redis.resume()
    # The breaker keeps Redis uncalled for its cool-down; then one probe closes it.
    await asyncio.sleep(0.25)
    assert await cache.get("k") == 1
    after: str = breaker.state  # a fresh read, not the "open" asserted above
    assert after == "closed"
    await cache.close()


def test_repr_shows_state() -> None:
    assert repr(Cache(prefix="p")) == "<Cache prefix='p' unconfigured>"
    assert "configured" in repr(Cache.from_url("memory://"))


def test_stats_report_every_counter(memory_cache: Cache) -> None:
    names: dict[str, Any] = memory_cache.stats()
    for name in (
        "hits", "misses", "stale_hits", "null_hits", "bloom_rejects", "loads", "load_errors",
        "coalesced", "lock_waits", "lock_timeouts", "fallbacks", "stale_sets_refused",
    ):  # fmt: skip
        assert names[name] == 0
