"""Targeted cache control, RFC 9213 (issue 18, item 5)."""

from __future__ import annotations

from typing import Any

import pytest

from cachekit import Cache
from cachekit.middleware import ResponseCacheMiddleware
from cachekit.middleware.capture import Message, Receive, Scope, Send
from cachekit.middleware.targeted import parse_targeted, response_directives
from tests.support.response_cache_apps import client_for


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("max-age=60", {"max-age": "60"}),
        ("foobar, max-age=3600", {"foobar": None, "max-age": "3600"}),
        ("max-age=99999999999", {"max-age": str(2**31)}),
        ("no-store", {"no-store": None}),
        ('max-age=60, x="a b"', {"max-age": "60", "x": "a b"}),
        ('max-age="60"', None),  # the wrong type
        ("max-age=60, &&&&&", None),  # not a dictionary
        ("max-age =100", None),
        ("MaX-aGe=3600", None),  # keys are lower-case
        ("max-age=-1", None),
        (None, None),
    ],
)
def test_targeted_fields_parse_as_structured_dictionaries(
    value: str | None, parsed: dict[str, str | None] | None
) -> None:
    assert parse_targeted(value) == parsed


def test_the_first_valid_target_wins_over_cache_control() -> None:
    headers = [
        (b"cache-control", b"max-age=1"),
        (b"cdn-cache-control", b"max-age=2"),
        (b"cachekit-cache-control", b'max-age="3"'),  # invalid: ignored
    ]
    targets = (b"cachekit-cache-control", b"cdn-cache-control")
    assert response_directives(headers, targets) == ({"max-age": "2"}, True)
    assert response_directives(headers, ()) == ({"max-age": "1"}, False)


class Origin:
    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.headers = headers
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        start: Message = {"type": "http.response.start", "status": 200, "headers": self.headers}
        await send(start)
        await send({"type": "http.response.body", "body": b"call %d" % self.calls})


async def _cached(cache: Cache, headers: list[tuple[bytes, bytes]], **options: Any) -> bool:
    origin = Origin(headers)
    app = ResponseCacheMiddleware(origin, cache=cache, ttl=None, **options)
    async with client_for(app) as client:
        await client.get("/a")
        return (await client.get("/a")).headers["x-cache"] == "HIT"


FUTURE = b"Thu, 18 Aug 2050 02:01:18 GMT"


@pytest.mark.parametrize(
    ("headers", "cached"),
    [
        ([(b"cache-control", b"no-store"), (b"cdn-cache-control", b"max-age=600")], True),
        ([(b"cache-control", b"max-age=600"), (b"cdn-cache-control", b"no-store")], False),
        ([(b"cache-control", b"max-age=600"), (b"cdn-cache-control", b"private")], False),
        ([(b"cache-control", b"max-age=600"), (b"cdn-cache-control", b"max-age=0")], False),
        ([(b"expires", FUTURE), (b"cdn-cache-control", b"max-age=0")], False),
        ([(b"cache-control", b"no-store"), (b"cdn-cache-control", b'max-age="600"')], False),
        ([(b"cdn-cache-control", b"no-store"), (b"cachekit-cache-control", b"max-age=60")], True),
    ],
)
async def test_a_targeted_field_replaces_cache_control_and_expires(
    memory_cache: Cache, headers: list[tuple[bytes, bytes]], cached: bool
) -> None:
    assert await _cached(memory_cache, headers) is cached


async def test_targets_can_be_turned_off(memory_cache: Cache) -> None:
    headers = [(b"cache-control", b"max-age=600"), (b"cdn-cache-control", b"no-store")]
    assert await _cached(memory_cache, headers, targeted_fields=()) is True
