"""Tags: O(1) invalidation of exactly the tagged entries, on memory and Redis, both faces."""

from __future__ import annotations

import pytest
import redis

from cachekit import Cache


@pytest.fixture(params=["memory", "redis"])
def cache(request: pytest.FixtureRequest, memory_cache: Cache, redis_cache: Cache) -> Cache:
    return memory_cache if request.param == "memory" else redis_cache


async def test_invalidating_a_tag_misses_exactly_the_tagged_entries(cache: Cache) -> None:
    loads: list[str] = []

    @cache.cached(ttl=60, key="page:{n}", tags=["catalog", "page:{n}"])
    async def page(n: int) -> str:
        loads.append(f"page{n}")
        return f"page {n} v{len(loads)}"

    @cache.cached(ttl=60, key="cart:{n}", tags=["carts"])
    def cart(n: int) -> str:
        loads.append(f"cart{n}")
        return f"cart {n}"

    assert page.tags(3) == ("catalog", "page:3")
    for n in (1, 2):
        await page(n)
        cart(n)
    assert len(loads) == 4
    for n in (1, 2):
        await page(n)
        cart(n)
    assert len(loads) == 4  # all hits

    await cache.invalidate_tags("page:1")
    await page(1)
    await page(2)
    cart(1)
    assert loads[4:] == ["page1"]

    cache.sync.invalidate_tags("catalog")
    await page(1)
    await page(2)
    cart(1)
    cart(2)
    assert loads[5:] == ["page1", "page2"]
    assert await page(2) == "page 2 v7"  # refilled, and a hit again
    assert len(loads) == 7


async def test_a_load_racing_a_tag_invalidation_is_not_served_afterwards(cache: Cache) -> None:
    version = "old"

    @cache.cached(ttl=60, key="item", tags=["items"])
    async def item() -> str:
        value = version
        await cache.invalidate_tags("items")  # the write committed while we loaded
        return value

    assert await item() == "old"  # the caller gets what it loaded...
    version = "new"

    @cache.cached(ttl=60, key="item", tags=["items"])
    async def item_again() -> str:
        return version

    assert await item_again() == "new"  # ...but the stale stamp is never served later


async def test_a_lost_tag_version_makes_entries_miss_not_revive(
    redis_cache: Cache, raw_redis: redis.Redis, prefix: str
) -> None:
    loads = 0

    @redis_cache.cached(ttl=60, key="row", tags=["rows"])
    async def row() -> int:
        nonlocal loads
        loads += 1
        return loads

    assert await row() == 1
    assert await row() == 1
    raw_redis.delete(f"{prefix}:tag:{{rows}}")  # evicted, or lost to a restart
    assert await row() == 2  # a new version: the old stamp no longer matches
    assert await row() == 2


async def test_tags_fail_open_and_retry_when_redis_is_down(private_redis: object) -> None:
    from tests.support.servers import PrivateServer

    assert isinstance(private_redis, PrivateServer)
    cache = Cache.from_url(private_redis.url, prefix="tags")
    loads = 0

    @cache.cached(ttl=60, key="k", tags=["t"])
    def value() -> int:
        nonlocal loads
        loads += 1
        return loads

    assert value() == 1
    private_redis.kill()
    assert value() == 2  # fails open: loads
    cache.sync.invalidate_tags("t")  # no exception: queued for retry
    assert cache.stats()["deferred"] == 1
    await cache.close()
