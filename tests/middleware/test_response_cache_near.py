"""Hot responses served from the near cache (``Cache(local=...)``), on real Redis.

A response is served locally only while the near cache's channel is up and none of its
three keys (generation, record, entry) was written since it was read; everything else
reads Redis as before. Counted with the near cache's own counters.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Generator
from typing import Any

import httpx
import pytest

from cachekit import Cache, LocalCache
from cachekit.backends.memory import MemoryStore, SyncMemoryBackend
from cachekit.backends.ops.responses import ReadResponseTtl
from cachekit.middleware import purge
from cachekit.middleware.near import fill_response, held_response
from tests.support.response_cache_apps import Shop, build_app, client_for
from tests.support.waiting import comes_true


@pytest.fixture
def shop() -> Shop:
    return Shop()


@pytest.fixture
async def near_cache(redis_url: str, prefix: str) -> AsyncIterator[Cache]:
    cache = Cache.from_url(redis_url, prefix=prefix, local=LocalCache(max_entries=100, ttl=30))
    yield cache
    await cache.close()


def _local(cache: Cache) -> LocalCache:
    local = cache._settings.local
    assert local is not None
    assert local.wait_ready(2.0)
    return local


async def _until_local_hit(client: httpx.AsyncClient, cache: Cache, url: str) -> httpx.Response:
    """GET ``url`` until one answer came from the near cache (our own fill's invalidation
    from the server may still be in flight and drop the first copies)."""
    for _ in range(200):
        before = cache.stats()["local_hits"]
        response = await client.get(url)
        if cache.stats()["local_hits"] > before:
            return response
        await asyncio.sleep(0.01)
    raise AssertionError("no answer came from the near cache")


async def test_a_hot_response_is_served_locally_with_age(shop: Shop, near_cache: Cache) -> None:
    _local(near_cache)
    async with client_for(build_app(shop, near_cache, ttl=60)) as client:
        first = await client.get("/page?a=1")
        local_hit = await _until_local_hit(client, near_cache, "/page?a=1")
        await asyncio.sleep(1.05)
        later = await client.get("/page?a=1")
    assert first.headers["x-cache"] == "MISS"
    assert local_hit.headers["x-cache"] == later.headers["x-cache"] == "HIT"
    assert local_hit.content == later.content == first.content
    assert int(later.headers["age"]) >= 1  # counted from when it was stored, not fetched
    assert shop.calls["/page"] == 1


async def test_an_unsafe_request_here_makes_the_next_get_a_miss(
    shop: Shop, near_cache: Cache
) -> None:
    _local(near_cache)
    async with client_for(build_app(shop, near_cache, ttl=60)) as client:
        await client.get("/page")
        await _until_local_hit(client, near_cache, "/page")
        shop.version = 1
        assert (await client.post("/page")).status_code == 200
        after = await client.get("/page")  # at once: our own invalidation dropped the copy
    assert after.headers["x-cache"] == "MISS"
    assert "v1" in after.text


async def test_a_purge_by_another_process_reaches_the_near_cache(
    shop: Shop, near_cache: Cache, redis_url: str, prefix: str
) -> None:
    _local(near_cache)
    other = Cache.from_url(redis_url, prefix=prefix)  # no near cache: only the server tells
    try:
        async with client_for(build_app(shop, near_cache, ttl=60)) as client:
            await client.get("/page")
            await _until_local_hit(client, near_cache, "/page")
            shop.version = 2
            await purge(other, "/page")

            async def fresh() -> bool:
                return "v2" in (await client.get("/page")).text

            assert await comes_true(fresh)
    finally:
        await other.close()


async def test_a_stale_response_is_decided_on_redis(shop: Shop, near_cache: Cache) -> None:
    _local(near_cache)
    async with client_for(build_app(shop, near_cache, ttl=1, stale_while_revalidate=30)) as client:
        await client.get("/page")
        await _until_local_hit(client, near_cache, "/page")
        await asyncio.sleep(1.1)
        stale = await client.get("/page")  # not a local HIT: Redis's copy decides

        async def refreshed() -> bool:
            return shop.calls["/page"] == 2

        assert await comes_true(refreshed)  # the background refresh that STALE starts
    assert stale.headers["x-cache"] == "STALE"


async def test_without_a_channel_every_hit_reads_redis(shop: Shop, near_cache: Cache) -> None:
    local = _local(near_cache)
    async with client_for(build_app(shop, near_cache, ttl=60)) as client:
        await client.get("/page")
        await _until_local_hit(client, near_cache, "/page")
        local.channel_down()
        before = near_cache.stats()["local_hits"]
        responses = [await client.get("/page") for _ in range(3)]
    assert [r.headers["x-cache"] for r in responses] == ["HIT"] * 3
    assert near_cache.stats()["local_hits"] == before
    assert shop.calls["/page"] == 1


@pytest.mark.parametrize(("options", "url"), [({"near": False}, "/page"), ({}, "/big?size=70000")])
async def test_near_off_and_large_entries_always_read_redis(
    shop: Shop, near_cache: Cache, options: dict[str, Any], url: str
) -> None:
    _local(near_cache)
    async with client_for(build_app(shop, near_cache, ttl=60, **options)) as client:
        await client.get(url)
        hits = []
        for _ in range(20):
            hits.append((await client.get(url)).headers["x-cache"])
            await asyncio.sleep(0.005)
    assert hits == ["HIT"] * 20
    assert near_cache.stats()["local_hits"] == 0


def test_read_response_ttl_reads_values_and_ttls_and_creates_nothing() -> None:
    backend = SyncMemoryBackend(MemoryStore())
    backend.store.write("p:g", b"token", 10.0)
    backend.store.write("p:v", b"entry", None)
    op = ReadResponseTtl("p:g", "p:r", "p:v")
    (g, g_ttl), (r, r_ttl), (e, e_ttl), keep = backend.run(op)
    assert keep
    assert not op.for_cluster().parse([b"t", 1000, None, -2, None, -2])[3]
    assert (g, r, e) == (b"token", None, b"entry")
    assert g_ttl is not None
    assert 9 < g_ttl <= 10
    assert r_ttl is None
    assert e_ttl == float("inf")
    assert backend.store.read("p:r") is None


def test_a_fill_is_not_voided_by_the_reads_that_overlap_it() -> None:
    # Each fill of a key voids the one before it, so under steady concurrent load fills
    # would void each other for ever (every one overlapped by the next): one request of
    # the process fills a variant while the others read without filling.
    local = LocalCache(max_entries=10, ttl=30)
    local.start(None, "p")
    local.channel_up("tracking")
    keys = ("p:http:{x}:g", "p:http:{x}:u1", "p:http:{x}:v1")
    reply = ((b"token", 60.0), (b"ck-record", 60.0), (b"ck-entry", 60.0), True)

    def started() -> Generator[Any, Any, Any]:
        flow = fill_response(local, keys, 1 << 20)
        assert isinstance(flow.send(None), ReadResponseTtl)
        return flow

    def finished(flow: Generator[Any, Any, Any]) -> Any:
        with pytest.raises(StopIteration) as done:
            flow.send(reply)
        return done.value.value

    first, second = started(), started()
    assert finished(first) == (b"token", b"ck-record", b"ck-entry")
    third = started()  # begun after the first one kept its copies
    assert held_response(local, keys) == (b"token", b"ck-record", b"ck-entry")
    finished(second)
    finished(third)
    local.close()


async def test_concurrent_hits_of_one_page_end_up_served_locally(
    shop: Shop, near_cache: Cache
) -> None:
    # Each fill of a key voids the one before it, so under steady concurrent load fills
    # would void each other for ever: one request of the process fills a variant while
    # the others read without filling.
    _local(near_cache)
    labels: list[str] = []
    async with client_for(build_app(shop, near_cache, ttl=60)) as client:
        await client.get("/page")

        async def caller() -> None:
            for _ in range(40):
                labels.append((await client.get("/page")).headers["x-cache"])

        await asyncio.gather(*(caller() for _ in range(16)))
    # (A read that overran the deadline on a loaded machine fails open: BYPASS.)
    assert labels.count("HIT") >= len(labels) * 0.9
    assert near_cache.stats()["local_hits"] >= 3 * len(labels) // 2  # most were local


def test_nothing_read_from_a_cluster_is_kept() -> None:
    # On Cluster the node that answered may not be one whose invalidations are followed.
    local = LocalCache(max_entries=10, ttl=30)
    local.start(None, "p")
    local.channel_up("tracking")
    keys = ("p:http:{x}:g", "p:http:{x}:u1", "p:http:{x}:v1")
    flow = fill_response(local, keys, 1 << 20)
    flow.send(None)
    with pytest.raises(StopIteration) as done:
        flow.send(((b"token", 60.0), (b"ck-record", 60.0), (b"ck-entry", 60.0), False))
    assert done.value.value == (b"token", b"ck-record", b"ck-entry")
    assert held_response(local, keys) is None
    local.close()
