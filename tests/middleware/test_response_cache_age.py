"""Age and HTTP dates (issue 18, defects 2 and 3): RFC 9111 4.2.3 and 5.3, RFC 9110 5.6.7."""

from __future__ import annotations

import calendar
from typing import Any

import pytest

from cachekit import Cache
from cachekit.middleware import ResponseCacheMiddleware
from cachekit.middleware.capture import Message, Receive, Scope, Send
from cachekit.middleware.directives import freshness
from cachekit.middleware.httpdates import AGE_MAX, initial_age, parse_age, parse_http_date
from cachekit.testing import FakeClock
from tests.support.response_cache_apps import client_for

IMF = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT


@pytest.mark.parametrize(
    "value",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994",
        "SUN, 06 NOV 1994 08:49:37 gmt",
    ],
)
def test_the_three_date_forms_parse_case_insensitively(value: str) -> None:
    assert parse_http_date(value, now=1_700_000_000) == IMF


def test_an_rfc850_year_is_never_more_than_50_years_ahead() -> None:
    now = 1_700_000_000.0  # 2023
    in_2050 = calendar.timegm((2050, 8, 18, 2, 1, 18, 0, 0, 0))
    in_1980 = calendar.timegm((1980, 8, 18, 2, 1, 18, 0, 0, 0))
    assert parse_http_date("Thursday, 18-Aug-50 02:01:18 GMT", now) == in_2050
    assert parse_http_date("Monday, 18-Aug-80 02:01:18 GMT", now) == in_1980


@pytest.mark.parametrize(
    "value",
    [
        "Thu, 18 Aug 2050 02:01:18 UTC",
        "Thu, 18 Aug 2050 02:01:18 AEST",
        "Thu, 18 Aug 50 02:01:18 GMT",
        "Thu 18 Aug 2050 02:01:18 GMT",
        "Thu, 18  Aug  2050 02:01:18 GMT",
        "Thu, 18-Aug-2050 02:01:18 GMT",
        "Thu, 18 Aug 2050 02.01.18 GMT",
        "Thu, 18 Aug 2050 2:01:18 GMT",
        "Thu, 18 Aug 2050 02:01:18 GMT, Thu, 18 Aug 2050 02:01:19 GMT",
        "Thx, 18 Aug 2050 02:01:18 GMT",
        "Thu, 32 Aug 2050 02:01:18 GMT",
        "0",
        "",
    ],
)
def test_invalid_dates_are_rejected_and_an_invalid_expires_is_already_expired(
    value: str,
) -> None:
    assert parse_http_date(value) is None
    headers = [(b"expires", value.encode())]
    assert freshness({}, headers, default_ttl=60, now=1_700_000_000) == 0.0


@pytest.mark.parametrize(
    ("value", "age"),
    [
        ("7200", 7200),
        ("7200, 0", 7200),
        ("0, 7200", 0),
        ("7200;foo=bar", 7200),
        ("2147483649", AGE_MAX),
        ("abc", None),
        ("-7200", None),
        ("7200.0", None),
        (None, None),
    ],
)
def test_age_is_the_first_value_digits_only(value: str | None, age: int | None) -> None:
    assert parse_age(value) == age


def test_initial_age_is_the_larger_of_age_and_the_apparent_age() -> None:
    assert initial_age(age=10, date=100.0, now=130.0) == 30.0
    assert initial_age(age=50, date=100.0, now=130.0) == 50.0
    assert initial_age(age=None, date=200.0, now=130.0) == 0.0  # a Date ahead of us


class Origin:
    """Answers with the headers a test sets; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.headers: list[tuple[bytes, bytes]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        start: Message = {"type": "http.response.start", "status": 200, "headers": self.headers}
        await send(start)
        await send({"type": "http.response.body", "body": b"call %d" % self.calls})


async def _get_twice(cache: Cache, origin: Origin, **options: Any) -> list[Any]:
    app = ResponseCacheMiddleware(origin, cache=cache, **options)
    async with client_for(app) as client:
        return [await client.get("/a"), await client.get("/a")]


async def test_an_age_older_than_max_age_is_never_served_fresh(memory_cache: Cache) -> None:
    origin = Origin()
    origin.headers = [(b"cache-control", b"max-age=3600"), (b"age", b"7200")]
    responses = await _get_twice(memory_cache, origin)
    assert [r.headers["x-cache"] for r in responses] == ["MISS", "MISS"]
    assert origin.calls == 2


async def test_the_served_age_adds_the_stored_age(memory_cache: Cache, clock: FakeClock) -> None:
    origin = Origin()
    origin.headers = [(b"cache-control", b"max-age=3600"), (b"age", b"30")]
    app = ResponseCacheMiddleware(origin, cache=memory_cache, ttl=60)
    async with client_for(app) as client:
        await client.get("/a")
        clock.advance(5)
        hit = await client.get("/a")
    assert hit.headers["x-cache"] == "HIT"
    assert hit.headers.get_list("age") == ["35"]
    clock.advance(3600 - 35)  # 30 + 5 + 3565 = 3600: no longer fresh
    async with client_for(app) as client:
        assert (await client.get("/a")).headers["x-cache"] == "MISS"


async def test_an_invalid_expires_is_not_reused(memory_cache: Cache) -> None:
    origin = Origin()
    origin.headers = [(b"expires", b"Thu, 18 Aug 2050 02:01:18 UTC")]
    responses = await _get_twice(memory_cache, origin, ttl=60)
    assert [r.headers["x-cache"] for r in responses] == ["MISS", "MISS"]
