"""Requests the response cache must not answer or learn from (issue 16, item 2).

A GET with a body is stored under a key that ignores the body: one request with a body
to a route that reflects it would poison the entry every later request is served. Such
requests bypass, and so do the method-override and host-override headers apps read.
"""

from __future__ import annotations

import pytest

from cachekit import Cache
from cachekit.middleware import ResponseCacheMiddleware
from cachekit.middleware.capture import Message, Receive, Scope, Send
from cachekit.middleware.directives import DEFAULT_BYPASS_HEADERS
from tests.support.response_cache_apps import client_for


class Reflect:
    """An app that puts the request's body and override headers into its response."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        body = b""
        while True:
            message: Message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers = dict(scope["headers"])
        method = headers.get(b"x-http-method") or headers.get(b"x-method-override") or b"GET"
        host = headers.get(b"x-original-host") or headers.get(b"x-forwarded-server") or b"-"
        out = b"%s %s %s" % (method, host, body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": out})


@pytest.mark.parametrize(
    "poison",
    [
        {"content-length": "8"},
        {"transfer-encoding": "chunked"},
    ],
    ids=["content-length", "transfer-encoding"],
)
async def test_a_get_with_a_body_bypasses_and_poisons_nothing(
    memory_cache: Cache, poison: dict[str, str]
) -> None:
    reflect = Reflect()
    app = ResponseCacheMiddleware(reflect, cache=memory_cache, ttl=60)
    async with client_for(app) as client:
        evil = await client.request("GET", "/r", content=b"EVILBODY", headers=poison)
        clean = [await client.get("/r") for _ in range(3)]
    assert evil.headers["x-cache"] == "BYPASS"
    assert b"EVILBODY" in evil.content
    assert [r.headers["x-cache"] for r in clean] == ["MISS", "HIT", "HIT"]
    assert all(b"EVILBODY" not in r.content for r in clean)


async def test_an_empty_body_is_cached_as_usual(memory_cache: Cache) -> None:
    app = ResponseCacheMiddleware(Reflect(), cache=memory_cache, ttl=60)
    async with client_for(app) as client:
        responses = [await client.get("/r", headers={"content-length": "0"}) for _ in "12"]
    assert [r.headers["x-cache"] for r in responses] == ["MISS", "HIT"]


@pytest.mark.parametrize(
    "name", ["x-http-method", "x-method-override", "x-original-host", "x-forwarded-server"]
)
async def test_override_headers_bypass_by_default(memory_cache: Cache, name: str) -> None:
    assert name in DEFAULT_BYPASS_HEADERS
    reflect = Reflect()
    app = ResponseCacheMiddleware(reflect, cache=memory_cache, ttl=60)
    async with client_for(app) as client:
        await client.get("/r")  # stored
        evil = await client.get("/r", headers={name: "DELETE-or-evil.test"})
        clean = await client.get("/r")
    assert evil.headers["x-cache"] == "BYPASS"
    assert b"DELETE-or-evil.test" in evil.content
    assert clean.headers["x-cache"] == "HIT"
    assert b"evil" not in clean.content
    assert reflect.calls == 2
