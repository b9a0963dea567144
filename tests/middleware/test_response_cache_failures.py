"""The response cache never causes a 5xx: Redis down or stalled, and hostile input."""

from __future__ import annotations

import string
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachekit import Cache
from cachekit.middleware import ResponseCacheMiddleware
from tests.support.response_cache_apps import Shop, build_app, client_for
from tests.support.servers import PrivateServer


async def test_redis_down_means_bypass_and_the_app_answers(private_redis: PrivateServer) -> None:
    cache = Cache.from_url(private_redis.url, prefix="down")
    shop = Shop()
    try:
        async with client_for(build_app(shop, cache)) as client:
            assert (await client.get("/page")).headers["x-cache"] == "MISS"
            private_redis.kill()
            gets = [await client.get("/page") for _ in range(3)]
            post = await client.post("/page")
            head = await client.head("/page")
    finally:
        await cache.close()
    assert [r.status_code for r in gets] == [200] * 3
    assert {r.headers["x-cache"] for r in gets} == {"BYPASS"}
    assert post.status_code == 200
    assert head.status_code == 200
    assert shop.calls["/page"] == 6  # every request was served by the app
    stats = cache.stats()
    assert stats["fallbacks"] >= 3
    assert stats["write_errors"] >= 1  # the POST's invalidation, queued for retry
    assert stats["http_bypasses"] == 4  # the GETs and the HEAD; the POST wrote through


@pytest.mark.slow
async def test_a_stalled_redis_is_bypassed_within_its_timeout(
    private_redis: PrivateServer,
) -> None:
    cache = Cache.from_url(private_redis.url, prefix="stalled")
    shop = Shop()
    try:
        async with client_for(build_app(shop, cache)) as client:
            await client.get("/page")
            private_redis.pause()
            try:
                stalled = [await client.get("/page") for _ in range(2)]
            finally:
                private_redis.resume()
    finally:
        await cache.close()
    assert {r.status_code for r in stalled} == {200}
    assert {r.headers["x-cache"] for r in stalled} == {"BYPASS"}


async def test_an_unconfigured_cache_bypasses() -> None:
    shop = Shop()
    cache = Cache()
    async with client_for(build_app(shop, cache)) as client:
        response = await client.get("/page")
    assert response.status_code == 200
    assert response.headers["x-cache"] == "BYPASS"
    assert cache.stats()["http_bypasses"] == 1


async def _call(app: Any, method: str, path: str, query: bytes) -> list[dict[str, Any]]:
    """Call ``app`` with a raw scope (httpx refuses URLs this long); the messages sent."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": [(b"host", b"shop.test")],
        "server": ("shop.test", 80),
    }
    await app(scope, receive, send)
    return sent


def _x_cache(start: dict[str, Any]) -> bytes:
    value: bytes = dict(start["headers"])[b"x-cache"]
    return value


async def test_a_64_kb_query_string_is_cached_like_any_other(redis_cache: Cache) -> None:
    shop = Shop()
    app = build_app(shop, redis_cache)
    query = b"q=" + b"x" * (65_536 - 2)
    first = await _call(app, "GET", "/page", query)
    second = await _call(app, "GET", "/page", query)
    other = await _call(app, "GET", "/page", query + b"y")
    assert first[0]["status"] == 200
    assert [_x_cache(second[0]), _x_cache(other[0])] == [b"HIT", b"MISS"]
    assert second[1]["body"] == first[1]["body"]


async def _echo(scope: Any, receive: Any, send: Any) -> None:
    """A raw ASGI app that answers 200 with a body derived from the request."""
    body = repr((scope["path"], scope["query_string"], scope["headers"]))[:200].encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"vary", b"x-v")]})
    await send({"type": "http.response.body", "body": body})


_header_names = st.sampled_from(
    [
        *(b"host", b"x-v", b"accept-encoding", b"cookie", b"authorization", b"if-none-match"),
        *(b"cache-control", b"vary", b"range", b"x-forwarded-host", b"pragma"),
    ]
) | st.binary(min_size=1, max_size=20)
_paths = st.text(string.printable + "é☃\udcff", max_size=200)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=_paths,
    raw_path=st.binary(max_size=300),
    query=st.binary(max_size=300) | st.just(b"a=" + b"\xff" * 65_536),
    headers=st.lists(st.tuples(_header_names, st.binary(max_size=100)), max_size=8),
    method=st.sampled_from(["GET", "HEAD", "POST", "DELETE", "BREW"]),
)
async def test_fuzzed_requests_never_cause_a_5xx(
    redis_cache: Cache,
    path: str,
    raw_path: bytes,
    query: bytes,
    headers: list[tuple[bytes, bytes]],
    method: str,
) -> None:
    middleware = ResponseCacheMiddleware(_echo, cache=redis_cache, stale_while_revalidate=5)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    for _ in range(2):  # the second time, whatever the first stored is read back
        sent.clear()
        scope = {
            "type": "http",
            "method": method,
            "scheme": "http",
            "path": "/" + path,
            "raw_path": b"/" + raw_path,
            "query_string": query,
            "headers": headers,
            "server": ("testserver", 80),
        }
        await middleware(scope, receive, send)
        assert sent[0]["type"] == "http.response.start"
        assert sent[0]["status"] in (200, 304)
