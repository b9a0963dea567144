"""The session cookie's options and lifetime (issue 20 items 3 and 4, issue 16 item 6).

Covered: ``max_age`` as seconds, a ``timedelta``, or ``0``/``None`` for a browser-session
cookie, and every bad value; the server lifetime that follows it (the table in
``RedisSessionStore``'s docstring, row by row, on the fake clock); ``session_cookie=`` as
an alias of ``cookie_name``; ``partitioned=True`` (CHIPS); ``__Host-``/``__Secure-``
names always ``Secure`` (also over plain HTTP, as behind a TLS-terminating proxy), and
``__Host-`` refused with a Domain or another Path; rolling expiry: the cookie re-sent with
a fresh ``Max-Age`` by responses that read or write the session, at most once per
``rolling_interval``, never by 5xx responses or ones that did not touch the session.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import pytest
import redis
from starlette.applications import Starlette

from cachekit import Cache
from cachekit.exceptions import ConfigurationError
from cachekit.sessions import RedisSessionStore, SessionMiddleware, is_session_id
from cachekit.sessions.store import DEFAULT_IDLE, DEFAULT_LIFETIME, UNBOUNDED
from cachekit.testing import FakeClock
from tests.sessions.support import (
    PATIENT,
    body,
    client_for,
    cookie_parts,
    get,
    issued,
    make_app,
    script_calls,
    set_cookies,
)
from tests.support.servers import PrivateServer


def attrs_of(response: httpx.Response) -> dict[str, str]:
    [header] = set_cookies(response)
    return cookie_parts(header)[2]


# ------------------------------------------------------------------------ max_age


@pytest.mark.parametrize(
    ("max_age", "expected"),
    [
        (3600, "3600"),
        (3600.0, "3600"),
        (timedelta(hours=1), "3600"),
        (timedelta(days=14), "1209600"),
        (1, "1"),
        (0, None),
        (0.0, None),
        (None, None),
        (timedelta(0), None),
    ],
)
async def test_max_age_takes_seconds_a_timedelta_or_zero_none_for_a_browser_session(
    memory_cache: Cache, max_age: Any, expected: str | None
) -> None:
    """Seconds or a timedelta give Max-Age; 0 and None give a cookie without one."""
    async with client_for(make_app(RedisSessionStore(memory_cache), max_age=max_age)) as client:
        attrs = attrs_of(await get(client, "/set", key="a", value="1"))
    assert attrs.get("max-age") == expected
    assert "expires" not in attrs


@pytest.mark.parametrize(
    "max_age",
    [-1, -0.5, 0.5, float("nan"), float("inf"), timedelta(seconds=-5), True, "3600", [1]],
)
def test_bad_max_age_is_a_configuration_error(memory_cache: Cache, max_age: Any) -> None:
    """Negative, under a second, NaN/inf, booleans and strings are refused with a clear error."""
    with pytest.raises(ConfigurationError, match="max_age"):
        SessionMiddleware(Starlette(), RedisSessionStore(memory_cache), max_age=max_age)


# ------------------------------------------------------------- the lifetime table


@pytest.mark.parametrize(
    ("options", "idle", "lifetime", "roll"),
    [
        ({}, DEFAULT_IDLE, DEFAULT_LIFETIME, 0.0),
        ({"max_age": 0}, DEFAULT_IDLE, DEFAULT_LIFETIME, 0.0),
        ({"max_age": 600}, 600, UNBOUNDED, 60.0),
        ({"max_age": timedelta(days=14), "rolling_interval": 5}, 14 * 86400, UNBOUNDED, 5.0),
        ({"max_age": 600, "rolling": False}, 600, 600, 0.0),
    ],
)
def test_the_store_follows_the_cookie_when_its_timeouts_are_unset(
    memory_cache: Cache, options: dict[str, Any], idle: float, lifetime: float, roll: float
) -> None:
    """Each row of the table: unset timeouts come from max_age and rolling."""
    store = RedisSessionStore(memory_cache)
    SessionMiddleware(Starlette(), store, **options)
    assert (store.config.idle, store.config.lifetime, store.config.roll) == (idle, lifetime, roll)
    assert store.config.bounded is (lifetime != UNBOUNDED)


def test_timeouts_given_to_the_store_always_win(memory_cache: Cache) -> None:
    """An explicit idle or absolute timeout is kept whatever max_age says."""
    store = RedisSessionStore(memory_cache, idle_timeout=120)
    SessionMiddleware(Starlette(), store, max_age=600, rolling=False)
    assert (store.config.idle, store.config.lifetime) == (120, 600)
    store = RedisSessionStore(memory_cache, absolute_timeout=timedelta(hours=2))
    SessionMiddleware(Starlette(), store, max_age=600)
    assert (store.config.idle, store.config.lifetime, store.config.bounded) == (600, 7200, True)


def test_one_store_serves_one_cookie_policy(memory_cache: Cache) -> None:
    """A second middleware on the same store with another max_age is a clear error."""
    store = RedisSessionStore(memory_cache)
    SessionMiddleware(Starlette(), store, max_age=600)
    SessionMiddleware(Starlette(), store, max_age=600)  # the same policy again: fine
    with pytest.raises(ConfigurationError, match="its own store"):
        SessionMiddleware(Starlette(), store, max_age=60)


async def test_without_rolling_the_session_ends_max_age_after_it_began(
    memory_cache: Cache, clock: FakeClock
) -> None:
    """max_age=100, rolling=False: used every 30 s, the session still ends at 100 s."""
    store = RedisSessionStore(memory_cache)
    async with client_for(make_app(store, max_age=100, rolling=False)) as client:
        sid = issued(await get(client, "/set", key="a", value="1"))
        for _ in range(3):
            clock.advance(30)
            response = await get(client, "/read", sid)
            assert body(response)["data"] == {"a": 1}
            assert set_cookies(response) == []  # never re-sent
        clock.advance(11)  # 101 s
        assert body(await get(client, "/read", sid))["data"] == {}


async def test_with_rolling_an_active_session_lives_on_and_an_idle_one_ends(
    memory_cache: Cache, clock: FakeClock
) -> None:
    """max_age=100 (rolling): used every 90 s it lives 1,000 s; then 101 s idle ends it."""
    store = RedisSessionStore(memory_cache)
    async with client_for(make_app(store, max_age=100)) as client:
        sid = issued(await get(client, "/set", key="a", value="1"))
        for _ in range(11):
            clock.advance(90)
            response = await get(client, "/read", sid)
            assert body(response)["data"] == {"a": 1}
            assert attrs_of(response)["max-age"] == "100"  # renewed each time (90 s > 60 s)
        clock.advance(101)
        assert body(await get(client, "/read", sid))["data"] == {}


# ------------------------------------------------------------------- rolling


async def test_rolling_resends_the_cookie_at_most_once_per_interval(
    memory_cache: Cache, clock: FakeClock
) -> None:
    """Reads and writes re-send the same id with a fresh Max-Age, once per 60 s at most."""
    store = RedisSessionStore(memory_cache)
    async with client_for(make_app(store, max_age=3600)) as client:
        sid = issued(await get(client, "/set", key="a", value="1"))
        clock.advance(30)
        assert set_cookies(await get(client, "/read", sid)) == []  # sent 30 s ago
        assert set_cookies(await get(client, "/set", sid, key="b", value="2")) == []
        clock.advance(31)  # 61 s since the cookie was sent
        assert set_cookies(await get(client, "/plain", sid)) == []  # did not touch it
        rolled = await get(client, "/read-sync", sid)
        assert issued(rolled) == sid
        attrs = attrs_of(rolled)
        assert attrs["max-age"] == "3600"
        assert rolled.headers["cache-control"] == "no-store"
        assert set_cookies(await get(client, "/read", sid)) == []  # just sent
        clock.advance(60)
        written = await get(client, "/set", sid, key="c", value="3")  # a write rolls too
        assert issued(written) == sid
        clock.advance(60)
        failed = await get(client, "/fail", sid)  # a 5xx response sends no cookie
        assert failed.status_code == 500
        assert set_cookies(failed) == []
        assert body(await get(client, "/read", sid))["data"] == {"a": 1, "b": 2, "c": 3}


async def test_rolling_interval_and_rolling_off(memory_cache: Cache, clock: FakeClock) -> None:
    """rolling_interval sets the spacing; rolling=False never re-sends."""
    store = RedisSessionStore(memory_cache)
    app = make_app(store, max_age=timedelta(hours=1), rolling_interval=timedelta(seconds=5))
    async with client_for(app) as client:
        sid = issued(await get(client, "/set", key="a", value="1"))
        clock.advance(4)
        assert set_cookies(await get(client, "/read", sid)) == []
        clock.advance(1)
        assert issued(await get(client, "/read", sid)) == sid
    other = RedisSessionStore(memory_cache)
    async with client_for(make_app(other, max_age=3600, rolling=False)) as client:
        sid = issued(await get(client, "/set", key="a", value="1"))
        clock.advance(3000)
        assert set_cookies(await get(client, "/read", sid)) == []


async def test_rolling_on_redis_with_the_servers_clock(redis_cache: Cache) -> None:
    """On Redis the interval is measured by TIME: a 1 ms interval re-sends on the next read."""
    store = RedisSessionStore(redis_cache)
    async with client_for(make_app(store, max_age=600, rolling_interval=0.001)) as client:
        sid = issued(await get(client, "/set", key="a", value="1"))
        await asyncio.sleep(0.01)
        rolled = await get(client, "/read", sid)
        assert issued(rolled) == sid
        assert attrs_of(rolled)["max-age"] == "600"


@pytest.mark.parametrize(
    "options",
    [{"rolling": True}, {"rolling": True, "max_age": 0}, {"max_age": 60, "rolling_interval": 0}],
)
def test_bad_rolling_settings_are_configuration_errors(
    memory_cache: Cache, options: dict[str, Any]
) -> None:
    """rolling without a max_age (nothing to renew) or a non-positive interval is refused."""
    with pytest.raises(ConfigurationError, match="rolling"):
        SessionMiddleware(Starlette(), RedisSessionStore(memory_cache), **options)


# ------------------------------------------------------------------ names and flags


async def test_session_cookie_is_an_alias_of_cookie_name(memory_cache: Cache) -> None:
    """session_cookie='sid' names the cookie, like Starlette's kwarg; both must agree."""
    store = RedisSessionStore(memory_cache)
    async with client_for(make_app(store, session_cookie="sid")) as client:
        response = await get(client, "/set", key="a", value="1")
        [header] = set_cookies(response)
        name, sid, _ = cookie_parts(header)
        assert name == "sid"
        assert body(await get(client, "/read", cookie=f"sid={sid}"))["data"] == {"a": 1}
    SessionMiddleware(Starlette(), store, cookie_name="sid", session_cookie="sid")
    with pytest.raises(ConfigurationError, match="session_cookie"):
        SessionMiddleware(Starlette(), store, cookie_name="a", session_cookie="b")
    with pytest.raises(ConfigurationError, match="cookie name"):
        SessionMiddleware(Starlette(), store, session_cookie="bad name")


async def test_partitioned_cookie_is_secure_and_partitioned(memory_cache: Cache) -> None:
    """partitioned=True (CHIPS) adds Partitioned and Secure, even over plain HTTP."""
    store = RedisSessionStore(memory_cache)
    async with client_for(make_app(store, partitioned=True)) as client:
        made = await get(client, "/set", key="a", value="1")
        sid = issued(made)
        expired = await get(client, "/logout", sid)
    for response in (made, expired):
        attrs = attrs_of(response)
        assert "partitioned" in attrs
        assert "secure" in attrs
    with pytest.raises(ConfigurationError, match="partitioned"):
        SessionMiddleware(Starlette(), store, partitioned=True, https_only=False)


@pytest.mark.parametrize("name", ["__Host-sid", "__host-sid", "__Secure-sid", "__SECURE-sid"])
@pytest.mark.parametrize("base_url", ["http://testserver", "https://testserver"])
async def test_prefixed_cookie_names_are_always_secure(
    memory_cache: Cache, name: str, base_url: str
) -> None:
    """__Host-/__Secure- cookies get Secure on plain HTTP too (a proxy that ends TLS)."""
    store = RedisSessionStore(memory_cache)
    async with client_for(make_app(store, cookie_name=name), base_url=base_url) as client:
        made = await get(client, "/set", key="a", value="1")
        [header] = set_cookies(made)
        got, sid, attrs = cookie_parts(header)
        assert got == name
        assert is_session_id(sid)
        assert "secure" in attrs
        assert attrs["path"] == "/"
        assert "domain" not in attrs
        expired = await get(client, "/logout", cookie=f"{name}={sid}")
        assert "secure" in attrs_of(expired)
        assert attrs_of(expired)["max-age"] == "0"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cookie_name": "__Host-sid", "domain": "example.com"}, "must not have a domain"),
        ({"cookie_name": "__Host-sid", "path": "/shop"}, "needs path='/'"),
        ({"cookie_name": "__host-sid", "domain": "example.com"}, "must not have a domain"),
        ({"cookie_name": "__Host-sid", "https_only": False}, "always Secure"),
        ({"session_cookie": "__Secure-sid", "https_only": False}, "always Secure"),
    ],
)
def test_prefixed_cookie_settings_browsers_would_drop_are_refused(
    memory_cache: Cache, options: dict[str, Any], message: str
) -> None:
    """A __Host- cookie with a Domain or another Path, or either prefix without Secure: refused."""
    with pytest.raises(ConfigurationError, match=message):
        SessionMiddleware(Starlette(), RedisSessionStore(memory_cache), **options)


async def test_secure_prefix_keeps_domain_and_path(memory_cache: Cache) -> None:
    """__Secure- only needs Secure: a Domain and a Path are allowed."""
    store = RedisSessionStore(memory_cache)
    app = make_app(store, cookie_name="__Secure-sid", domain="example.com", path="/")
    async with client_for(app) as client:
        attrs = attrs_of(await get(client, "/set", key="a", value="1"))
    assert attrs["domain"] == "example.com"
    assert "secure" in attrs


async def test_rolling_costs_no_extra_round_trip(private_redis: PrivateServer) -> None:
    """A read that re-sends the cookie is still one script call: the load decides and notes it."""
    cache = Cache.from_url(private_redis.url, prefix="rolling", **PATIENT)
    store = RedisSessionStore(cache)
    server = redis.Redis.from_url(private_redis.url)
    try:
        app = make_app(store, max_age=600, rolling_interval=0.001)
        async with client_for(app) as client:
            sid = issued(await get(client, "/set", key="a", value="1"))
            await get(client, "/read", sid)  # every script is loaded by now
            for _ in range(3):
                await asyncio.sleep(0.005)
                before = script_calls(server)
                rolled = await get(client, "/read", sid)
                assert script_calls(server) - before == 1
                assert issued(rolled) == sid
    finally:
        server.close()
        await cache.close()
