"""Starlette's own ``SessionMiddleware`` tests, ported: the one-line switch (issue 20).

The seven behaviours of Starlette's ``tests/middleware/test_session.py`` (view, update
and clear a session; expiry; ``https_only``; a sub-path cookie; an invalid cookie; a
browser-session cookie; a domain cookie), with Starlette's own endpoints unchanged -
``JSONResponse({"session": request.session})``, ``request.session.update(...)``,
``request.session.clear()``. Only the middleware line differs:

    Middleware(SessionMiddleware, secret_key="example")            # Starlette
    Middleware(SessionMiddleware, store=RedisSessionStore(cache))  # cachekit

Where an assertion differs from Starlette's it is for a documented reason, said at the
place: attribute names are written ``Path``/``Domain`` (matched without regard to case,
as browsers do), the default cookie is a browser-session one (``max_age`` opts in to a
lifetime), and expiry is enforced by the server (Starlette's ``max_age=-1`` is refused;
the same behaviour is shown on a fake clock).

Each behaviour runs through Starlette's ``TestClient`` used with ``with`` and through
``httpx.ASGITransport``, against real Redis. ``TestClient`` without ``with`` (a new event
loop per request) is the last test.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any, Protocol

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from cachekit import Cache
from cachekit.exceptions import ConfigurationError
from cachekit.sessions import RedisSessionStore, SessionMiddleware
from cachekit.testing import FakeClock
from tests.sessions.support import PATIENT
from tests.support.starlette_testclient import TestClient

# ------------------------------------------------- Starlette's endpoints, unchanged


def view_session(request: Request) -> JSONResponse:
    return JSONResponse({"session": request.session})


async def update_session(request: Request) -> JSONResponse:
    data = await request.json()
    request.session.update(data)
    return JSONResponse({"session": request.session})


async def clear_session(request: Request) -> JSONResponse:
    request.session.clear()
    return JSONResponse({"session": request.session})


def routes() -> list[Route]:
    return [
        Route("/view_session", endpoint=view_session),
        Route("/update_session", endpoint=update_session, methods=["POST"]),
        Route("/clear_session", endpoint=clear_session, methods=["POST"]),
    ]


def closing(cache: Cache) -> Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]:
    """A lifespan that closes ``cache`` at shutdown, on the loop that used it."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await cache.close()  # TestClient's own loop, under `with`

    return lifespan


def session_app(cache: Cache, **options: Any) -> Starlette:
    """Starlette's test app, with the one line that differs (and the cache closed at exit)."""
    store = RedisSessionStore(cache)
    middleware = [Middleware(SessionMiddleware, store=store, **options)]
    return Starlette(routes=routes(), middleware=middleware, lifespan=closing(cache))


# ------------------------------------------------------------------- two drivers


class Headers(Protocol):
    def get_list(self, key: str) -> list[str]: ...


class Reply(Protocol):
    """What a behaviour reads of a response: httpx's, or httpx2's under TestClient."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Headers: ...

    def json(self) -> Any: ...


class Jar(Protocol):
    def set(self, name: str, value: str) -> None: ...

    def delete(self, name: str) -> None: ...

    def clear(self) -> None: ...


class Client:
    """The calls a behaviour makes, the same through either driver."""

    def __init__(self, send: Callable[..., Awaitable[Reply]], cookies: Jar):
        self._send = send
        self.cookies = cookies

    async def get(self, url: str, **kwargs: Any) -> Reply:
        return await self._send("GET", url, **kwargs)

    async def post(self, url: str, **kwargs: Any) -> Reply:
        return await self._send("POST", url, **kwargs)


Connect = Callable[[Starlette, str], contextlib.AbstractAsyncContextManager[Client]]


@contextlib.asynccontextmanager
async def through_testclient(app: Starlette, base_url: str) -> AsyncIterator[Client]:
    """Starlette's TestClient used with ``with`` (one event loop for the whole block)."""
    with TestClient(app, base_url=base_url) as client:

        async def send(method: str, url: str, **kwargs: Any) -> Reply:
            # TestClient blocks; it runs the app on its own loop in its own thread.
            response: Reply = client.request(method, url, **kwargs)
            return response

        yield Client(send, client.cookies)


@contextlib.asynccontextmanager
async def through_httpx(app: Starlette, base_url: str) -> AsyncIterator[Client]:
    """httpx's ASGITransport on the test's own event loop."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
        yield Client(client.request, client.cookies)


@pytest.fixture(params=["testclient", "httpx"])
def connect(request: pytest.FixtureRequest) -> Connect:
    return through_testclient if request.param == "testclient" else through_httpx


@pytest.fixture
async def cache_factory(redis_url: str, prefix: str) -> AsyncIterator[Callable[[], Cache]]:
    """Caches under the test's prefix, closed at the end on the test's loop.

    (Under TestClient the app's lifespan has closed it already, on TestClient's loop.)
    """
    made: list[Cache] = []

    def make() -> Cache:
        cache = Cache.from_url(redis_url, prefix=prefix, **PATIENT)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        await cache.close()


def header(response: Reply) -> str:
    [value] = response.headers.get_list("set-cookie")
    return value


# ------------------------------------------------------------ the seven behaviours


async def test_session(connect: Connect, cache_factory: Callable[[], Cache]) -> None:
    """View, update, clear: Starlette's test_session, through both drivers."""
    app = session_app(cache_factory())
    async with connect(app, "http://testserver") as client:
        response = await client.get("/view_session")
        assert response.json() == {"session": {}}

        response = await client.post("/update_session", json={"some": "data"})
        assert response.json() == {"session": {"some": "data"}}

        # Starlette checks its default Max-Age of 14 days here. cachekit's default is a
        # browser-session cookie (the server ends the session by its own timeouts):
        # the Max-Age appears when asked for, see test_max_age_like_starlettes_default.
        set_cookie = header(response)
        assert re.search(r"; Max-Age=", set_cookie, re.IGNORECASE) is None
        assert "httponly" in set_cookie.lower()
        assert "samesite=lax" in set_cookie.lower()

        response = await client.get("/view_session")
        assert response.json() == {"session": {"some": "data"}}

        response = await client.post("/clear_session")
        assert response.json() == {"session": {}}

        response = await client.get("/view_session")
        assert response.json() == {"session": {}}


async def test_max_age_like_starlettes_default(
    connect: Connect, cache_factory: Callable[[], Cache]
) -> None:
    """With max_age=14 days the cookie carries Starlette's Max-Age, found by its own regex."""
    app = session_app(cache_factory(), max_age=timedelta(days=14))
    async with connect(app, "http://testserver") as client:
        response = await client.post("/update_session", json={"some": "data"})
        max_age_matches = re.search(r"; Max-Age=([0-9]+);", header(response))
        assert max_age_matches is not None
        assert int(max_age_matches[1]) == 14 * 24 * 3600


async def test_session_expires(memory_cache: Cache, clock: FakeClock) -> None:
    """An expired session reads as empty even though its cookie is sent back.

    Starlette shows this with max_age=-1 (a cookie already expired); cachekit refuses a
    negative max_age and enforces expiry on the server, so the test lets max_age pass
    on a fake clock instead and sends the old cookie back explicitly, as Starlette's does.
    """
    with pytest.raises(ConfigurationError, match="max_age"):
        SessionMiddleware(Starlette(), RedisSessionStore(memory_cache), max_age=-1)
    app = session_app(memory_cache, max_age=10, rolling=False)
    async with through_httpx(app, "http://testserver") as client:
        response = await client.post("/update_session", json={"some": "data"})
        assert response.json() == {"session": {"some": "data"}}
        expired_session_match = re.search(r"session=([^;]*);", header(response))
        assert expired_session_match is not None
        clock.advance(11)
        client.cookies.delete("session")
        client.cookies.set("session", expired_session_match[1])
        response = await client.get("/view_session")
        assert response.json() == {"session": {}}


async def test_secure_session(connect: Connect, cache_factory: Callable[[], Cache]) -> None:
    """https_only: the cookie is Secure, so a client on plain HTTP never sends it back."""
    # Two instances of the app (on one Redis prefix): TestClient's lifespan closes a cache.
    secure_app = session_app(cache_factory(), https_only=True)
    async with connect(secure_app, "http://testserver") as client:
        response = await client.get("/view_session")
        assert response.json() == {"session": {}}

        response = await client.post("/update_session", json={"some": "data"})
        assert response.json() == {"session": {"some": "data"}}
        assert "secure" in header(response).lower()

        response = await client.get("/view_session")
        assert response.json() == {"session": {}}

    secure_app = session_app(cache_factory(), https_only=True)
    async with connect(secure_app, "https://testserver") as secure_client:
        response = await secure_client.get("/view_session")
        assert response.json() == {"session": {}}

        response = await secure_client.post("/update_session", json={"some": "data"})
        assert response.json() == {"session": {"some": "data"}}

        response = await secure_client.get("/view_session")
        assert response.json() == {"session": {"some": "data"}}

        response = await secure_client.post("/clear_session")
        assert response.json() == {"session": {}}

        response = await secure_client.get("/view_session")
        assert response.json() == {"session": {}}


async def test_session_cookie_subpath(connect: Connect, cache_factory: Callable[[], Cache]) -> None:
    """A session app mounted under a path sets its cookie for that path."""
    cache = cache_factory()
    second_app = session_app(cache, path="/second_app")
    # A mounted app's lifespan does not run: the outer app closes the cache.
    app = Starlette(routes=[Mount("/second_app", app=second_app)], lifespan=closing(cache))
    async with connect(app, "http://testserver") as client:
        response = await client.post("/second_app/update_session", json={"some": "data"})
        assert response.status_code == 200
        cookie = header(response)
        # Starlette's regex, without regard to case: cachekit writes "Path=".
        cookie_path_match = re.search(r"; path=(\S+);", cookie, re.IGNORECASE)
        assert cookie_path_match is not None
        assert cookie_path_match.groups()[0] == "/second_app"


async def test_invalid_session_cookie(connect: Connect, cache_factory: Callable[[], Cache]) -> None:
    """A cookie that is not a session id is no session (and no error)."""
    app = session_app(cache_factory())
    async with connect(app, "http://testserver") as client:
        response = await client.post("/update_session", json={"some": "data"})
        assert response.json() == {"session": {"some": "data"}}

        # we expect it to not raise an exception if we provide a bogus session cookie
        client.cookies.clear()
        client.cookies.set("session", "invalid")
        response = await client.get("/view_session")
        assert response.json() == {"session": {}}


async def test_session_cookie(connect: Connect, cache_factory: Callable[[], Cache]) -> None:
    """max_age=None: a cookie without Max-Age, gone when the browser forgets it."""
    app = session_app(cache_factory(), max_age=None)
    async with connect(app, "http://testserver") as client:
        response = await client.post("/update_session", json={"some": "data"})
        assert response.json() == {"session": {"some": "data"}}

        # check cookie max-age
        set_cookie = header(response)
        assert "max-age" not in set_cookie.lower()

        client.cookies.delete("session")
        response = await client.get("/view_session")
        assert response.json() == {"session": {}}


async def test_domain_cookie(connect: Connect, cache_factory: Callable[[], Cache]) -> None:
    """domain=... reaches the cookie."""
    app = session_app(cache_factory(), domain=".example.com")
    async with connect(app, "http://testserver") as client:
        response = await client.post("/update_session", json={"some": "data"})
        assert response.json() == {"session": {"some": "data"}}

        # check cookie max-age
        set_cookie = header(response)
        assert "; domain=.example.com" in set_cookie.lower()

        client.cookies.delete("session")
        response = await client.get("/view_session")
        assert response.json() == {"session": {}}


# --------------------------------------------- TestClient without `with` (new loops)


def test_starlette_session_through_testclient_without_with(
    cache_factory: Callable[[], Cache],
) -> None:
    """TestClient without ``with`` runs every request on a new event loop; sessions still work.

    The async face keeps one Redis client per event loop, closed with its loop: no request
    fails on a client of a closed loop, and no socket is left behind.
    """
    client = TestClient(session_app(cache_factory()))
    assert client.get("/view_session").json() == {"session": {}}
    response = client.post("/update_session", json={"some": "data"})
    assert response.json() == {"session": {"some": "data"}}
    assert client.get("/view_session").json() == {"session": {"some": "data"}}
    assert client.post("/clear_session").json() == {"session": {}}
    assert client.get("/view_session").json() == {"session": {}}
