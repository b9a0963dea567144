"""ResponseCacheMiddleware on real Redis: one test per rule of issue 6 and RFC 9111."""

from __future__ import annotations

import asyncio
import gzip
from dataclasses import replace
from typing import Any

import httpx
import pytest
import redis

from cachekit import Cache
from cachekit.flow.envelope import decode
from cachekit.middleware import ResponseCacheMiddleware, purge
from cachekit.middleware.entry import CODEC, encode_entry
from tests.support.response_cache_apps import Shop, build_app, client_for


@pytest.fixture
def shop() -> Shop:
    return Shop()


async def _twice(client: httpx.AsyncClient, url: str, **kwargs: Any) -> list[httpx.Response]:
    return [await client.get(url, **kwargs), await client.get(url, **kwargs)]


async def test_a_get_is_stored_and_replayed_with_age(shop: Shop, redis_cache: Cache) -> None:
    async with client_for(build_app(shop, redis_cache)) as client:
        first, second = await _twice(client, "/page?a=1")
    assert first.status_code == second.status_code == 200
    assert first.headers["x-cache"] == "MISS"
    assert second.headers["x-cache"] == "HIT"
    assert second.content == first.content
    assert int(second.headers["age"]) >= 0
    assert "age" not in first.headers
    assert shop.calls["/page"] == 1
    assert redis_cache.stats()["hits"] == 1


async def test_the_key_normalizes_the_query_but_keeps_its_values(
    shop: Shop, redis_cache: Cache
) -> None:
    async with client_for(build_app(shop, redis_cache)) as client:
        await client.get("/page?a=1&b=2")
        reordered = await client.get("/page?b=2&a=1")
        other = await client.get("/page?a=1&b=3")
    assert reordered.headers["x-cache"] == "HIT"
    assert other.headers["x-cache"] == "MISS"
    assert shop.calls["/page"] == 2


async def test_the_key_covers_host_and_scheme(shop: Shop, redis_cache: Cache) -> None:
    async with client_for(build_app(shop, redis_cache)) as client:
        await client.get("http://a.test/page")
        other_host = await client.get("http://b.test/page")
        other_scheme = await client.get("https://a.test/page")
    assert other_host.headers["x-cache"] == other_scheme.headers["x-cache"] == "MISS"
    assert shop.calls["/page"] == 3


async def test_users_with_authorization_never_see_each_others_body(
    shop: Shop, redis_cache: Cache
) -> None:
    async with client_for(build_app(shop, redis_cache)) as client:
        alice = [await client.get("/me", headers={"authorization": "Bearer alice"}) for _ in "12"]
        bob = [await client.get("/me", headers={"authorization": "Bearer bob"}) for _ in "12"]
        anonymous = await client.get("/me")
    assert {r.text for r in alice} == {"profile of Bearer alice"}
    assert {r.text for r in bob} == {"profile of Bearer bob"}
    assert anonymous.text == "profile of anonymous"
    assert shop.calls["/me"] == 5  # nothing of theirs was stored
    assert all(r.headers["x-cache"] == "MISS" for r in alice + bob)


async def test_an_authorized_request_is_not_served_an_entry_that_was_not_public(
    shop: Shop, redis_cache: Cache
) -> None:
    async with client_for(build_app(shop, redis_cache)) as client:
        await client.get("/me")
        hit = await client.get("/me")
        authorized = await client.get("/me", headers={"authorization": "Bearer alice"})
    assert hit.headers["x-cache"] == "HIT"
    assert authorized.text == "profile of Bearer alice"


async def test_a_public_response_to_an_authorized_request_is_shared_only_when_allowed(
    shop: Shop, redis_cache: Cache
) -> None:
    url = "/me?cc=public,%20max-age=60"
    async with client_for(build_app(shop, redis_cache)) as client:
        await _twice(client, url, headers={"authorization": "Bearer alice"})
    assert shop.calls["/me"] == 2  # default: never stored (R1)
    async with client_for(build_app(shop, redis_cache, share_authorized=True)) as client:
        first, second = await _twice(client, url, headers={"authorization": "Bearer alice"})
    assert second.headers["x-cache"] == "HIT"
    assert second.text == first.text


async def test_a_response_with_set_cookie_is_never_replayed(shop: Shop, redis_cache: Cache) -> None:
    async with client_for(build_app(shop, redis_cache)) as client:
        responses = []
        for _ in range(3):
            client.cookies.clear()  # else the cookie it got makes the next request BYPASS
            responses.append(await client.get("/cookie"))
    assert [r.cookies["sid"] for r in responses] == ["secret-1", "secret-2", "secret-3"]
    assert all(r.headers["x-cache"] == "MISS" for r in responses)
    assert shop.calls["/cookie"] == 3


@pytest.mark.parametrize("cc", ["private", "no-store", "no-cache", "public, max-age=0"])
async def test_responses_that_forbid_storing_always_reach_the_app(
    shop: Shop, redis_cache: Cache, cc: str
) -> None:
    async with client_for(build_app(shop, redis_cache)) as client:
        responses = await _twice(client, "/page", params={"cc": cc})
    assert shop.calls["/page"] == 2
    assert responses[1].headers["x-cache"] == "MISS"


async def test_vary_star_always_reaches_the_app(shop: Shop, redis_cache: Cache) -> None:
    async with client_for(build_app(shop, redis_cache)) as client:
        await _twice(client, "/page", params={"vary": "*"})
    assert shop.calls["/page"] == 2


async def test_vary_keys_the_nominated_request_headers(shop: Shop, redis_cache: Cache) -> None:
    async with client_for(build_app(shop, redis_cache)) as client:
        en = await _twice(client, "/page?vary=x-lang", headers={"x-lang": "en"})
        fr = await _twice(client, "/page?vary=x-lang", headers={"x-lang": "fr"})
        none = await _twice(client, "/page?vary=x-lang")
    assert [r.headers["x-cache"] for r in en + fr + none] == ["MISS", "HIT"] * 3
    assert en[1].text.endswith(" en")
    assert fr[1].text.endswith(" fr")
    assert shop.calls["/page"] == 3


async def _raw(client: httpx.AsyncClient, url: str, coding: str) -> tuple[str, bytes]:
    """``(X-Cache, body bytes as sent)``: httpx would otherwise decode gzip for us."""
    async with client.stream("GET", url, headers={"accept-encoding": coding}) as response:
        body = b"".join([chunk async for chunk in response.aiter_raw()])
        return response.headers["x-cache"], body


async def test_gzip_and_identity_variants_stay_apart_byte_for_byte(
    shop: Shop, redis_cache: Cache
) -> None:
    app = build_app(shop, redis_cache, gzip=True)
    async with client_for(app) as client:
        zipped = [await _raw(client, "/text", "gzip") for _ in "12"]
        plain = [await _raw(client, "/text", "identity") for _ in "12"]
        other_order = await _raw(client, "/text", "br;q=0, gzip")
    assert [x for x, _ in zipped + plain] == ["MISS", "HIT"] * 2
    assert other_order[0] == "HIT"  # one variant per coding
    assert zipped[0][1] == zipped[1][1] == other_order[1]
    assert plain[0][1] == plain[1][1]
    assert zipped[0][1].startswith(b"\x1f\x8b")
    assert not plain[0][1].startswith(b"\x1f\x8b")
    assert gzip.decompress(zipped[1][1]).endswith(b"#1")
    assert plain[1][1].endswith(b"#2")
    assert shop.calls["/text"] == 2


async def test_head_after_get_is_a_bodiless_hit(shop: Shop, redis_cache: Cache) -> None:
    async with client_for(build_app(shop, redis_cache)) as client:
        get = await client.get("/page")
        head = await client.head("/page")
    assert head.headers["x-cache"] == "HIT"
    assert head.content == b""
    assert head.headers["content-length"] == str(len(get.content))
    assert shop.calls["/page"] == 1


async def test_a_head_miss_goes_to_the_app_and_stores_nothing(
    shop: Shop, redis_cache: Cache
) -> None:
    async with client_for(build_app(shop, redis_cache)) as client:
        head = await client.head("/page")
        get = await client.get("/page")
    assert head.headers["x-cache"] == get.headers["x-cache"] == "MISS"


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
async def test_an_unsafe_method_invalidates_every_query_and_variant_of_its_path(
    shop: Shop, redis_cache: Cache, method: str
) -> None:
    async with client_for(build_app(shop, redis_cache)) as client:
        for url in ("/page", "/page?q=1", "/page?vary=x-lang"):
            await _twice(client, url, headers={"x-lang": "en"})
        other = await client.get("/text")
        write = await client.request(method, "/page")
        after = [await client.get(url, headers={"x-lang": "en"}) for url in ("/page", "/page?q=1")]
        after.append(await client.get("/page?vary=x-lang", headers={"x-lang": "en"}))
        untouched = await client.get("/text")
    assert write.status_code == 200
    assert [r.headers["x-cache"] for r in after] == ["MISS"] * 3
    assert other.headers["x-cache"] == "MISS"
    assert untouched.headers["x-cache"] == "HIT"


async def test_a_failed_unsafe_request_invalidates_nothing(shop: Shop, redis_cache: Cache) -> None:
    async with client_for(build_app(shop, redis_cache)) as client:
        await client.get("/status/200")
        await client.get("/page")
        await client.post("/status/200")  # 405: an error status, nothing changed
        again = await client.get("/page")
    assert again.headers["x-cache"] == "HIT"


async def test_purge_reaches_a_path_or_everything(shop: Shop, redis_cache: Cache) -> None:
    async with client_for(build_app(shop, redis_cache)) as client:
        for url in ("/page?x=1", "/text"):
            await client.get(url)
        await purge(redis_cache, "/page")
        purged = await client.get("/page?x=1")
        kept = await client.get("/text")
        await purge(redis_cache)
        everything = await client.get("/text")
    assert purged.headers["x-cache"] == "MISS"
    assert kept.headers["x-cache"] == "HIT"
    assert everything.headers["x-cache"] == "MISS"


async def test_purge_of_everything_works_on_the_memory_backend(
    shop: Shop, memory_cache: Cache
) -> None:
    async with client_for(build_app(shop, memory_cache)) as client:
        for url in ("/page?x=1", "/text"):
            await client.get(url)
        await purge(memory_cache)
        after = [await client.get(url) for url in ("/page?x=1", "/text")]
    assert [r.headers["x-cache"] for r in after] == ["MISS", "MISS"]


@pytest.mark.parametrize("coalesce", [True, False])
async def test_a_fill_racing_with_purge_of_everything_is_never_served(
    shop: Shop, redis_cache: Cache, coalesce: bool
) -> None:
    # Leased (coalesce) or not, the answer was made before the purge: it must not survive.
    shop.delay = 0.2
    async with client_for(build_app(shop, redis_cache, coalesce=coalesce)) as client:
        racing = asyncio.create_task(client.get("/slow"))
        await shop.called.wait()  # the app is running
        await purge(redis_cache)
        assert (await racing).headers["x-cache"] == "MISS"
        shop.delay = 0
        after = await client.get("/slow")
    assert after.headers["x-cache"] == "MISS"
    assert shop.calls["/slow"] == 2


async def test_counters_tell_bypasses_from_uncacheable_answers(
    shop: Shop, redis_cache: Cache
) -> None:
    async with client_for(build_app(shop, redis_cache)) as client:
        for headers in ({"cookie": "sid=1"}, {"range": "bytes=0-1"}, {"x-forwarded-host": "e"}):
            assert (await client.get("/page", headers=headers)).headers["x-cache"] == "BYPASS"
        bypasses = redis_cache.stats()["http_bypasses"]
        for _ in range(2):  # the second time as a hit-for-miss: refused again
            await client.get("/cookie")
            client.cookies.clear()
        await client.get("/page?cc=private")
        await client.get("/me", headers={"authorization": "Bearer a"})  # the request's doing
        await client.head("/text")  # a HEAD miss never stores
        await _twice(client, "/page")  # stored, then a hit
    stats = redis_cache.stats()
    assert bypasses == stats["http_bypasses"] == 3
    assert stats["http_uncacheable"] == 3


async def test_fifty_concurrent_cold_gets_run_the_handler_once(
    shop: Shop, redis_cache: Cache
) -> None:
    shop.delay = 0.1
    async with client_for(build_app(shop, redis_cache)) as client:
        responses = await asyncio.gather(*(client.get("/slow") for _ in range(50)))
    assert shop.calls["/slow"] == 1
    assert {r.status_code for r in responses} == {200}
    assert len({r.text for r in responses}) == 1
    assert [r.headers["x-cache"] for r in responses].count("MISS") == 1


async def test_waiters_give_up_after_lock_wait_and_run_the_app_themselves(
    shop: Shop, redis_cache: Cache
) -> None:
    shop.delay = 0.5
    app = build_app(shop, redis_cache, lock_wait=0.02)
    async with client_for(app) as client:
        responses = await asyncio.gather(*(client.get("/slow") for _ in range(3)))
    assert {r.status_code for r in responses} == {200}
    assert shop.calls["/slow"] == 3
    assert redis_cache.stats()["lock_timeouts"] >= 1


async def test_uncacheable_answers_are_remembered_so_nobody_queues(
    shop: Shop, redis_cache: Cache
) -> None:
    async with client_for(build_app(shop, redis_cache)) as client:
        await client.get("/cookie")  # uncacheable: remembered as hit-for-miss
        client.cookies.clear()
        shop.delay = 0.05
        waits = redis_cache.stats()["lock_waits"]
        responses = await asyncio.gather(*(client.get("/cookie") for _ in range(5)))
    assert redis_cache.stats()["lock_waits"] == waits
    assert len({r.cookies["sid"] for r in responses}) == 5


async def test_if_none_match_gets_a_bodiless_304_with_etag_and_cache_control(
    shop: Shop, redis_cache: Cache
) -> None:
    url = "/page?cc=max-age=60"
    async with client_for(build_app(shop, redis_cache)) as client:
        first = await client.get(url)
        etag = first.headers["etag"]
        not_modified = await client.get(url, headers={"if-none-match": etag})
        changed = await client.get(url, headers={"if-none-match": '"something-else"'})
    assert etag.startswith('"')
    assert not etag.startswith('"W/')
    assert not_modified.status_code == 304
    assert not_modified.content == b""
    assert not_modified.headers["etag"] == etag
    assert not_modified.headers["cache-control"] == "max-age=60"
    assert changed.status_code == 200
    assert changed.headers["etag"] == etag


async def test_the_etag_is_the_same_from_another_process(
    shop: Shop, redis_url: str, prefix: str
) -> None:
    etags = []
    for n in range(2):  # two caches, two prefixes: nothing shared but the content
        cache = Cache.from_url(redis_url, prefix=f"{prefix}:{n}")
        async with client_for(build_app(Shop(), cache)) as client:
            etags.append((await client.get("/marked")).headers["etag"])
        await cache.close()
    assert etags[0] == etags[1]


async def test_a_conditional_miss_is_answered_304_by_the_leader(
    shop: Shop, redis_cache: Cache
) -> None:
    async with client_for(build_app(shop, redis_cache)) as client:
        etag = (await client.get("/big")).headers["etag"]
        await purge(redis_cache, "/big")
        revalidated = await client.get("/big", headers={"if-none-match": etag})
        hit = await client.get("/big")
    assert shop.calls["/big"] == 2
    assert revalidated.status_code == 304  # same content after the purge: same tag
    assert revalidated.headers["x-cache"] == "MISS"
    assert hit.headers["x-cache"] == "HIT"
    assert hit.status_code == 200


async def test_a_client_no_cache_or_purge_is_ignored_unless_allowed(
    shop: Shop, redis_cache: Cache
) -> None:
    bust = {"cache-control": "no-cache", "pragma": "no-cache"}
    async with client_for(build_app(shop, redis_cache)) as client:
        await client.get("/page")
        ignored = await client.get("/page", headers=bust)
        purge_attempt = await client.request("PURGE", "/page")
        still = await client.get("/page")
    assert ignored.headers["x-cache"] == "HIT"
    assert purge_attempt.status_code == 405  # the app refused: an error, nothing invalidated
    assert still.headers["x-cache"] == "HIT"
    async with client_for(build_app(shop, redis_cache, client_refresh=True)) as client:
        refreshed = await client.get("/page", headers=bust)
        after = await client.get("/page")
    assert refreshed.headers["x-cache"] == "MISS"
    assert after.text == refreshed.text
    assert after.headers["x-cache"] == "HIT"


async def test_range_requests_bypass_and_206_is_never_stored(
    shop: Shop, redis_cache: Cache
) -> None:
    async with client_for(build_app(shop, redis_cache, statuses=(200, 404))) as client:
        ranged = await client.get("/page", headers={"range": "bytes=0-3"})
        partial = await _twice(client, "/status/206")
        missing = await _twice(client, "/status/404")
    assert ranged.headers["x-cache"] == "BYPASS"
    assert [r.headers["x-cache"] for r in partial] == ["MISS", "MISS"]
    assert [r.headers["x-cache"] for r in missing] == ["MISS", "HIT"]
    with pytest.raises(ValueError, match="206"):
        ResponseCacheMiddleware(build_app(shop, redis_cache), cache=redis_cache, statuses=(206,))


@pytest.mark.parametrize("code", [201, 301, 404, 500])
async def test_only_200_is_stored_by_default(shop: Shop, redis_cache: Cache, code: int) -> None:
    async with client_for(build_app(shop, redis_cache)) as client:
        await _twice(client, f"/status/{code}")
    assert shop.calls[f"/status/{code}"] == 2


async def test_event_streams_are_never_stored(shop: Shop, redis_cache: Cache) -> None:
    async with client_for(build_app(shop, redis_cache)) as client:
        streams = await _twice(client, "/events")
    assert [r.text for r in streams] == ["data: event of call 1\n\n", "data: event of call 2\n\n"]


async def test_bodies_above_max_body_size_stream_through_untouched(
    shop: Shop, redis_cache: Cache
) -> None:
    async with client_for(build_app(shop, redis_cache, max_body_size=1000)) as client:
        big = await _twice(client, "/big?size=5000")
        small = await _twice(client, "/big?size=1000")
    assert [len(r.content) for r in big] == [5000, 5000]
    assert [r.headers["x-cache"] for r in big] == ["MISS", "MISS"]
    assert [r.headers["x-cache"] for r in small] == ["MISS", "HIT"]


async def test_a_streamed_body_is_stored_whole_and_replayed_exactly(
    shop: Shop, redis_cache: Cache
) -> None:
    async with client_for(build_app(shop, redis_cache)) as client:
        first, second = await _twice(client, "/chunks")
    assert second.headers["x-cache"] == "HIT"
    assert (
        second.content
        == first.content
        == b"".join(f"chunk {i} of call 1;".encode() for i in range(4))
    )


async def test_an_aborted_body_is_never_stored(shop: Shop, redis_cache: Cache) -> None:
    app = build_app(shop, redis_cache)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as client:
        cut = await client.get("/chunks?abort=1")
        later = await client.get("/chunks?abort=1")
    assert cut.content == b"chunk 0 of call 1;chunk 1 of call 1;"
    assert later.headers["x-cache"] == "MISS"


async def test_per_route_opt_in_and_opt_out(shop: Shop, redis_cache: Cache) -> None:
    async with client_for(build_app(shop, redis_cache, only_marked=True)) as client:
        marked = await _twice(client, "/marked")
        unmarked = await _twice(client, "/unmarked")
    assert [r.headers["x-cache"] for r in marked] == ["MISS", "HIT"]
    assert [r.headers["x-cache"] for r in unmarked] == ["MISS", "MISS"]
    async with client_for(build_app(shop, redis_cache)) as client:
        secret = await _twice(client, "/secret")
    assert [r.text for r in secret] == ["secret #1", "secret #2"]


async def test_unkeyed_override_headers_bypass_or_are_keyed(shop: Shop, redis_cache: Cache) -> None:
    forwarded = {"x-forwarded-host": "evil.test"}
    async with client_for(build_app(shop, redis_cache)) as client:
        await client.get("/page")
        poisoned = await client.get("/page", headers=forwarded)
    assert poisoned.headers["x-cache"] == "BYPASS"
    app = build_app(shop, redis_cache, key_headers=["X-Forwarded-Proto"])
    async with client_for(app) as client:
        https = await _twice(client, "/text", headers={"x-forwarded-proto": "https"})
        http = await client.get("/text", headers={"x-forwarded-proto": "http"})
    assert [r.headers["x-cache"] for r in https] == ["MISS", "HIT"]
    assert http.headers["x-cache"] == "MISS"


async def test_credential_cookies_bypass_by_default_and_can_be_named(
    shop: Shop, redis_cache: Cache
) -> None:
    async with client_for(build_app(shop, redis_cache)) as client:
        await client.get("/page")
        with_cookie = await client.get("/page", headers={"cookie": "theme=dark"})
    assert with_cookie.headers["x-cache"] == "BYPASS"
    app = build_app(shop, redis_cache, credential_cookies=["session"])
    async with client_for(app) as client:
        harmless = await client.get("/page", headers={"cookie": "theme=dark"})
        session = await client.get("/page", headers={"cookie": "theme=dark; session=abc"})
    assert harmless.headers["x-cache"] == "HIT"
    assert session.headers["x-cache"] == "BYPASS"


async def test_non_http_scopes_pass_through(redis_cache: Cache) -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    middleware = ResponseCacheMiddleware(app, cache=redis_cache)
    await middleware({"type": "lifespan"}, _never, _discard)
    await middleware({"type": "websocket", "path": "/"}, _never, _discard)
    assert seen == ["lifespan", "websocket"]


async def _never() -> Any:
    raise AssertionError("not called")


async def _discard(message: Any) -> None:
    return None


def _keys(client: redis.Redis, pattern: str) -> set[str]:
    return {k.decode() if isinstance(k, bytes) else k for k in client.keys(pattern)}


async def test_an_entry_copied_under_another_key_is_never_served(
    shop: Shop, redis_cache: Cache, raw_redis: redis.Redis, prefix: str
) -> None:
    async with client_for(build_app(shop, redis_cache)) as client:
        await client.get("/page?user=alice")
        alice_keys = _keys(raw_redis, f"{prefix}:http:{{*}}:v*")
        await client.get("/page?user=bob")
        (bob_key,) = _keys(raw_redis, f"{prefix}:http:{{*}}:v*") - alice_keys
        (alice_key,) = alice_keys
        stolen = raw_redis.get(alice_key)
        assert isinstance(stolen, bytes)
        raw_redis.set(bob_key, stolen)  # a byte copy: its envelope names the wrong key
        copied = await client.get("/page?user=bob")
        # A forgery that passes the envelope's key check still names alice's URL (R10).
        envelope = decode(alice_key, stolen, CODEC)
        entry = replace(envelope.value, created=envelope.created, expires=envelope.expires)
        raw_redis.set(bob_key, encode_entry(bob_key, entry, stamp=envelope.stamp))
        forged = await client.get("/page?user=bob")
    for bob in (copied, forged):
        assert bob.headers["x-cache"] == "MISS"
        assert "alice" not in bob.text
    assert redis_cache.stats()["invalid_payloads"] == 1


async def test_keys_live_in_their_own_namespace(
    shop: Shop, redis_cache: Cache, raw_redis: redis.Redis, prefix: str
) -> None:
    async with client_for(build_app(shop, redis_cache)) as client:
        await client.get("/page")
    keys = _keys(raw_redis, f"{prefix}:*")
    assert len(keys) == 3  # the path's generation, the URL's record, the variant's entry
    assert all(k.startswith(f"{prefix}:http:{{") for k in keys)
    # One hash tag for all of them: a hit is one script on one Cluster slot.
    assert len({k[k.index("{") : k.index("}") + 1] for k in keys}) == 1
    assert await redis_cache.get("page") is None
