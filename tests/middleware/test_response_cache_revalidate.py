"""Conditional revalidation (issue 18, item 4; RFC 9111 4.3) and "follow the origin" mode."""

from __future__ import annotations

import time
from typing import Any

import httpx

from cachekit import Cache
from cachekit.middleware import ResponseCacheMiddleware
from cachekit.middleware.capture import Message, Receive, Scope, Send
from cachekit.testing import FakeClock
from tests.support.response_cache_apps import client_for

LAST_MODIFIED = b"Wed, 01 Jan 2020 00:00:00 GMT"


class Origin:
    """An origin with validators: 304 when the request's condition holds."""

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.headers = headers  # of the full (200) answers
        self.not_modified_headers: list[tuple[bytes, bytes]] = []
        self.full = 0
        self.validated = 0
        self.conditions: list[dict[bytes, bytes]] = []
        self.fail = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = dict(scope["headers"])
        condition = {k: v for k, v in request.items() if k.startswith(b"if-")}
        self.conditions.append(condition)
        if self.fail:
            await send({"type": "http.response.start", "status": 503, "headers": []})
            await send({"type": "http.response.body", "body": b"down"})
            return
        stored = dict(self.headers)
        etag_ok = b"etag" in stored and condition.get(b"if-none-match") == stored[b"etag"]
        since = condition.get(b"if-modified-since")
        lm_ok = (
            b"etag" not in stored and since is not None and since == stored.get(b"last-modified")
        )
        if etag_ok or lm_ok:
            self.validated += 1
            start: Message = {
                "type": "http.response.start",
                "status": 304,
                "headers": self.not_modified_headers,
            }
            await send(start)
            await send({"type": "http.response.body", "body": b""})
            return
        self.full += 1
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        await send({"type": "http.response.body", "body": b"full %d" % self.full})


def _app(cache: Cache, origin: Origin, **options: Any) -> ResponseCacheMiddleware:
    return ResponseCacheMiddleware(origin, cache=cache, **options)


async def _get(app: Any, **kwargs: Any) -> httpx.Response:
    async with client_for(app) as client:
        return await client.get("/r", **kwargs)


async def test_a_stale_response_is_revalidated_and_its_headers_updated(
    memory_cache: Cache, clock: FakeClock
) -> None:
    origin = Origin(
        [
            (b"cache-control", b"max-age=10"),
            (b"etag", b'"v1"'),
            (b"x-a", b"old"),
            (b"content-length", b"6"),  # "full 1"
        ]
    )
    origin.not_modified_headers = [
        (b"cache-control", b"max-age=100"),
        (b"x-a", b"new"),
        (b"content-length", b"999"),  # describes no body: never applied
    ]
    app = _app(memory_cache, origin)
    first = await _get(app)
    clock.advance(11)
    second = await _get(app)
    assert origin.conditions[-1] == {b"if-none-match": b'"v1"'}
    assert second.status_code == 200
    assert second.headers["x-cache"] == "REVALIDATED"
    assert second.text == first.text == "full 1"
    assert second.headers["x-a"] == "new"
    assert second.headers["cache-control"] == "max-age=100"
    assert second.headers.get_list("content-length") == ["6"]
    clock.advance(50)  # fresh again for 100 s from the 304
    third = await _get(app)
    assert third.headers["x-cache"] == "HIT"
    assert third.headers["x-a"] == "new"
    assert (origin.full, origin.validated) == (1, 1)
    assert memory_cache.stats()["http_revalidations"] == 1


async def test_last_modified_is_sent_as_if_modified_since(
    memory_cache: Cache, clock: FakeClock
) -> None:
    origin = Origin([(b"cache-control", b"max-age=1"), (b"last-modified", LAST_MODIFIED)])
    app = _app(memory_cache, origin)
    await _get(app)
    clock.advance(2)
    second = await _get(app)
    assert origin.conditions[-1] == {b"if-modified-since": LAST_MODIFIED}
    assert second.headers["x-cache"] == "REVALIDATED"
    assert second.text == "full 1"
    assert origin.full == 1


async def test_no_cache_is_stored_but_revalidated_on_every_use(memory_cache: Cache) -> None:
    origin = Origin([(b"cache-control", b"max-age=3600, no-cache"), (b"etag", b'"n"')])
    app = _app(memory_cache, origin, stale_while_revalidate=60)
    responses = [await _get(app) for _ in range(3)]
    assert [r.headers["x-cache"] for r in responses] == ["MISS", "REVALIDATED", "REVALIDATED"]
    assert (origin.full, origin.validated) == (1, 2)


async def test_no_cache_without_validators_is_never_reused(memory_cache: Cache) -> None:
    origin = Origin([(b"cache-control", b"max-age=3600, no-cache")])
    app = _app(memory_cache, origin)
    responses = [await _get(app) for _ in range(2)]
    assert [r.headers["x-cache"] for r in responses] == ["MISS", "MISS"]
    assert origin.full == 2


async def test_must_revalidate_is_never_served_stale(memory_cache: Cache, clock: FakeClock) -> None:
    for directive in (b"must-revalidate", b"proxy-revalidate", b"s-maxage=1"):
        origin = Origin([(b"cache-control", b"max-age=1, " + directive), (b"etag", b'"m"')])
        app = _app(memory_cache, origin, stale_while_revalidate=60, stale_if_error=60)
        await _get(app, params={"d": directive.decode()})
        clock.advance(5)
        origin.fail = True
        failed = await _get(app, params={"d": directive.decode()})
        assert failed.status_code == 503, directive  # not the stale copy
        assert failed.headers["x-cache"] == "MISS"


async def test_the_clients_own_condition_is_answered_after_revalidation(
    memory_cache: Cache, clock: FakeClock
) -> None:
    origin = Origin([(b"cache-control", b"max-age=1"), (b"etag", b'"c"')])
    app = _app(memory_cache, origin)
    await _get(app)
    clock.advance(2)
    conditional = await _get(app, headers={"if-none-match": '"c"'})
    assert conditional.status_code == 304
    assert conditional.headers["x-cache"] == "REVALIDATED"
    assert origin.conditions[-1] == {b"if-none-match": b'"c"'}  # ours, not the client's


async def test_a_set_cookie_on_a_304_reaches_this_client_only(
    memory_cache: Cache, clock: FakeClock
) -> None:
    origin = Origin([(b"cache-control", b"max-age=1"), (b"etag", b'"s"')])
    origin.not_modified_headers = [(b"cache-control", b"max-age=100"), (b"set-cookie", b"a=1")]
    app = _app(memory_cache, origin)
    await _get(app)
    clock.advance(2)
    revalidated = await _get(app)
    hit = await _get(app)
    assert revalidated.headers["set-cookie"] == "a=1"
    assert hit.headers["x-cache"] == "HIT"
    assert "set-cookie" not in hit.headers


async def test_following_the_origin_never_serves_unstated_freshness_unvalidated(
    memory_cache: Cache,
) -> None:
    with_validator = Origin([(b"etag", b'"f"')])
    app = _app(memory_cache, with_validator, ttl=None)
    responses = [await _get(app) for _ in range(3)]
    assert [r.headers["x-cache"] for r in responses] == ["MISS", "REVALIDATED", "REVALIDATED"]
    assert with_validator.full == 1
    without = Origin([])
    app = _app(memory_cache, without, ttl=None)
    async with client_for(app) as client:
        plain = [await client.get("/plain") for _ in range(2)]
    assert [r.headers["x-cache"] for r in plain] == ["MISS", "MISS"]


async def test_heuristic_freshness_is_a_fraction_of_the_last_modified_age(
    memory_cache: Cache, clock: FakeClock
) -> None:
    # Last modified 1000 s ago: fresh for 100 s with heuristic=0.1.
    modified = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(clock.time() - 1000))
    origin = Origin([(b"last-modified", modified.encode())])
    app = _app(memory_cache, origin, ttl=None, heuristic=0.1)
    await _get(app)
    clock.advance(99)
    assert (await _get(app)).headers["x-cache"] == "HIT"
    clock.advance(2)
    assert (await _get(app)).headers["x-cache"] == "REVALIDATED"  # stale: asked again
    assert origin.full == 1


async def test_no_heuristic_by_default_nor_for_explicit_or_unlisted_responses(
    memory_cache: Cache,
) -> None:
    modified = b"Wed, 01 Jan 2020 00:00:00 GMT"
    for headers in (
        [(b"last-modified", modified), (b"cache-control", b"max-age=0")],
        [(b"last-modified", modified), (b"expires", b"0")],
    ):
        origin = Origin(headers)
        app = _app(memory_cache, origin, ttl=None, heuristic=0.1)
        responses = [await _get(app, params={"h": str(headers)}) for _ in "12"]
        assert responses[1].headers["x-cache"] != "HIT"
    origin = Origin([(b"last-modified", modified)])
    app = _app(memory_cache, origin, ttl=None)  # heuristic off
    async with client_for(app) as client:
        plain = [await client.get("/off") for _ in "12"]
    assert plain[1].headers["x-cache"] == "REVALIDATED"


async def test_a_changed_response_replaces_the_stored_one(
    memory_cache: Cache, clock: FakeClock
) -> None:
    origin = Origin([(b"cache-control", b"max-age=1"), (b"etag", b'"v1"')])
    app = _app(memory_cache, origin)
    await _get(app)
    clock.advance(2)
    origin.headers = [(b"cache-control", b"max-age=100"), (b"etag", b'"v2"')]
    changed = await _get(app)
    assert origin.conditions[-1] == {b"if-none-match": b'"v1"'}  # asked with the old one
    assert changed.headers["x-cache"] == "MISS"
    assert changed.text == "full 2"
    hit = await _get(app)
    assert hit.headers["x-cache"] == "HIT"
    assert (hit.text, hit.headers["etag"]) == ("full 2", '"v2"')
