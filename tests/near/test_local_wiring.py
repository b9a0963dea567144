"""``Cache(local=LocalCache(...))``: the near cache wired into a real cache.

The layer itself (LRU, TTL bound, races, channel loss, cross-process latency) is tested in
tests/near/test_local_cache.py; here: that a Cache uses it on both faces, reports its counters,
drops it on close, and that another writer's change reaches it through the server.
"""

from __future__ import annotations

import asyncio
from typing import Any

from cachekit import Cache, LocalCache
from cachekit.near.local import LOCAL_COUNTERS
from tests.support.waiting import holds_within


async def test_hits_are_served_locally_on_both_faces(redis_url: str, prefix: str) -> None:
    local = LocalCache(max_entries=100, ttl=5)
    cache = Cache.from_url(redis_url, prefix=prefix, local=local)
    loads = 0

    @cache.cached(ttl=60, key="p:{i}")
    async def product(i: int) -> dict[str, int]:
        nonlocal loads
        loads += 1
        return {"i": i}

    try:
        assert local.wait_ready(2.0)
        assert await product(1) == {"i": 1}  # load, store (the write drops any copy)
        # The server's invalidation of our own fill may still be in flight and void the
        # next read's copy; a later read keeps one.
        for _ in range(100):
            assert await product(1) == {"i": 1}
            if cache.stats()["local_hits"]:
                break
            await asyncio.sleep(0.01)
        before = cache.stats()["local_hits"]
        assert before >= 1
        assert await product(1) == {"i": 1}
        assert cache.sync.get(product.key(1)) == {"i": 1}
        assert cache.stats()["local_hits"] == before + 2
        assert loads == 1
    finally:
        await cache.close()


async def test_another_writer_is_seen_through_the_server(redis_url: str, prefix: str) -> None:
    local = LocalCache(max_entries=100, ttl=30)
    cache = Cache.from_url(redis_url, prefix=prefix, local=local)
    writer = Cache.from_url(redis_url, prefix=prefix)
    try:
        assert local.wait_ready(2.0)
        await writer.set("price", 10, ttl=60)
        assert await cache.get("price") == 10
        assert await cache.get("price") == 10  # a local copy now
        await writer.set("price", 12, ttl=60)
        seen: list[Any] = []

        async def poll() -> None:
            for _ in range(400):
                seen.append(await cache.get("price"))
                if seen[-1] == 12:
                    return
                await asyncio.sleep(0.005)

        await poll()
        assert seen[-1] == 12
        assert cache.stats()["local_invalidations"] >= 1
    finally:
        await writer.close()
        await cache.close()


async def test_counters_are_always_reported(redis_url: str, prefix: str) -> None:
    plain = Cache.from_url("memory://", local=LocalCache())  # memory:// needs no near layer
    assert set(LOCAL_COUNTERS) <= set(plain.stats())
    assert plain.bound().local is None
    await plain.close()


async def test_close_stops_the_channel_and_configure_starts_it_again(
    redis_url: str, prefix: str
) -> None:
    local = LocalCache()
    cache = Cache(prefix=prefix, local=local)
    cache.configure(redis_url)
    assert local.wait_ready(2.0)
    await cache.close()
    assert not local.ready
    cache.configure(redis_url)
    try:
        assert holds_within(lambda: local.ready)
        await cache.set("k", 1)
        assert await cache.get("k") == 1
    finally:
        await cache.close()
