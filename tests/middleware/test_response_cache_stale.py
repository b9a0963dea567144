"""Freshness, Age, stale-while-revalidate and stale-if-error, on a fake clock.

The memory backend follows the fake clock, so expiry is exact and no test sleeps for it.
"""

from __future__ import annotations

import asyncio

import httpx

from cachekit import Cache
from cachekit.testing import FakeClock
from tests.support.response_cache_apps import Shop, build_app, client_for


async def _settle(cache: Cache) -> None:
    """Wait until the cache's background refreshes have finished."""
    face = cache.bound().aio
    for _ in range(400):
        await asyncio.sleep(0.005)
        if not face.rebuilding:
            return
    raise AssertionError(f"refreshes still running: {face.rebuilding}")


def _xc(response: httpx.Response) -> str:
    return response.headers["x-cache"]


async def test_max_age_sets_freshness_and_age_counts_from_creation(
    memory_cache: Cache, clock: FakeClock
) -> None:
    shop = Shop()
    async with client_for(build_app(shop, memory_cache, ttl=1000)) as client:
        await client.get("/page?cc=max-age=10")
        clock.advance(7)
        aged = await client.get("/page?cc=max-age=10")
        clock.advance(4)
        expired = await client.get("/page?cc=max-age=10")
    assert _xc(aged) == "HIT"
    assert aged.headers["age"] == "7"
    assert _xc(expired) == "MISS"


async def test_s_maxage_wins_over_max_age(memory_cache: Cache, clock: FakeClock) -> None:
    shop = Shop()
    url = "/page?cc=max-age=100,%20s-maxage=5"
    async with client_for(build_app(shop, memory_cache)) as client:
        await client.get(url)
        clock.advance(6)
        assert _xc(await client.get(url)) == "MISS"


async def test_the_middleware_ttl_applies_when_the_response_states_none(
    memory_cache: Cache, clock: FakeClock
) -> None:
    shop = Shop()
    async with client_for(build_app(shop, memory_cache, ttl=30)) as client:
        await client.get("/page")
        clock.advance(29)
        fresh = await client.get("/page")
        clock.advance(2)
        stale = await client.get("/page")
        marked = await client.get("/marked")  # @cacheable(ttl=120)
        clock.advance(100)
        marked_later = await client.get("/marked")
    assert [_xc(fresh), _xc(stale)] == ["HIT", "MISS"]
    assert _xc(marked) == "MISS"
    assert _xc(marked_later) == "HIT"


async def test_stale_while_revalidate_serves_stale_and_refreshes_once_in_the_background(
    memory_cache: Cache, clock: FakeClock
) -> None:
    shop = Shop()
    async with client_for(build_app(shop, memory_cache, ttl=10, stale_while_revalidate=30)) as c:
        first = await c.get("/page")
        clock.advance(11)
        shop.version = 1
        stale = await asyncio.gather(*(c.get("/page") for _ in range(10)))
        await _settle(memory_cache)
        refreshed = await c.get("/page")
    assert {_xc(r) for r in stale} == {"STALE"}
    assert {r.text for r in stale} == {first.text}
    assert shop.calls["/page"] == 2  # one refresh for ten stale reads
    assert _xc(refreshed) == "HIT"
    assert " v1 " in refreshed.text
    assert memory_cache.stats()["rebuilds"] == 1


async def test_the_responses_own_stale_while_revalidate_is_honoured(
    memory_cache: Cache, clock: FakeClock
) -> None:
    shop = Shop()
    url = "/page?cc=max-age=10,%20stale-while-revalidate=30"
    async with client_for(build_app(shop, memory_cache)) as client:
        await client.get(url)
        clock.advance(20)
        stale = await client.get(url)
        await _settle(memory_cache)
        clock.advance(45)  # past the window of the refreshed entry too
        shop.fail = False
        expired = await client.get(url)
    assert _xc(stale) == "STALE"
    assert _xc(expired) == "MISS"


async def test_a_failing_refresh_keeps_the_stale_copy(
    memory_cache: Cache, clock: FakeClock
) -> None:
    shop = Shop()
    async with client_for(build_app(shop, memory_cache, ttl=10, stale_while_revalidate=60)) as c:
        first = await c.get("/page")
        clock.advance(11)
        shop.fail = True  # 503s from now on
        await c.get("/page")
        await _settle(memory_cache)
        again = await c.get("/page")
    assert _xc(again) == "STALE"
    assert again.text == first.text


async def test_stale_if_error_serves_the_stale_copy_while_the_app_fails(
    memory_cache: Cache, clock: FakeClock
) -> None:
    shop = Shop()
    async with client_for(build_app(shop, memory_cache, ttl=10, stale_if_error=60)) as client:
        first = await client.get("/page")
        good = await client.get("/broken")
        clock.advance(11)
        shop.fail = True
        failed_status = await client.get("/page")  # the app answers 503
        raised = await client.get("/broken")  # the app raises
        clock.advance(60)
        too_old = await client.get("/page")
    assert failed_status.status_code == 200
    assert _xc(failed_status) == "STALE"
    assert failed_status.text == first.text
    assert raised.status_code == 200
    assert raised.text == good.text
    assert _xc(raised) == "STALE"
    assert too_old.status_code == 503
    assert _xc(too_old) == "MISS"


async def test_must_revalidate_forbids_serving_stale(memory_cache: Cache, clock: FakeClock) -> None:
    shop = Shop()
    url = "/page?cc=max-age=10,%20must-revalidate"
    app = build_app(shop, memory_cache, stale_while_revalidate=60, stale_if_error=60)
    async with client_for(app) as client:
        await client.get(url)
        clock.advance(11)
        shop.fail = True
        response = await client.get(url)
    assert response.status_code == 503
    assert _xc(response) == "MISS"
