"""What the session tests share: Redis helpers, cookie parsing, the test app and its client."""

from __future__ import annotations

import contextlib
import json
import random
import string
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import redis
import redis.asyncio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Scope
from starlette.websockets import WebSocket

from cachekit import Cache
from cachekit.sessions import (
    RedisSessionStore,
    Session,
    SessionMiddleware,
    SessionRecord,
    SyncSessionStore,
    is_session_id,
    load_session,
    regenerate_session,
)

ROOT = Path(__file__).resolve().parents[2]
NAME = "session"  # the middleware's default cookie name
ID_CHARS = string.ascii_letters + string.digits + "-_"


# --------------------------------------------------------------------------- helpers


def session_key(prefix: str, sid: str) -> str:
    """Where the record of ``sid`` lives on Redis."""
    return f"{prefix}:session:{{{sid}}}"


def keys_under(raw: redis.Redis, prefix: str) -> list[bytes]:
    """Every key under ``prefix`` (SCAN, as the issue asks)."""
    return list(raw.scan_iter(match=f"{prefix}:*", count=1000))


def hgetall(raw: redis.Redis, key: str) -> dict[bytes, bytes]:
    return cast(dict[bytes, bytes], raw.hgetall(key))


def server_ms(raw: redis.Redis) -> int:
    seconds, micros = raw.time()
    return seconds * 1000 + micros // 1000


def plant(raw: redis.Redis, prefix: str, sid: str, fields: dict[str, bytes], ttl: int = 60) -> str:
    """Write a hash of our own choosing where the record of ``sid`` would live."""
    key = session_key(prefix, sid)
    raw.delete(key)
    raw.hset(key, mapping=cast(Any, fields))
    raw.expire(key, ttl)
    return key


def live_fields(raw: redis.Redis, prefix: str, sid: str) -> dict[bytes, bytes]:
    deadline = str(server_ms(raw) + 600_000).encode()
    return {b"@sid": sid.encode(), b"@deadline": deadline}


def forged_id(rng: random.Random | None = None) -> str:
    """A well-formed id that no server issued."""
    pick = rng or random.Random()
    return "".join(pick.choice(ID_CHARS) for _ in range(43))


def first_well_formed(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The id a request carries by the cookie rules (first well-formed ``session=`` value)."""
    for name, value in headers:
        if name != b"cookie":
            continue
        for pair in value.split(b";"):
            key, sep, candidate = pair.strip().partition(b"=")
            text = candidate.decode("latin-1")
            if sep and key == NAME.encode() and is_session_id(text):
                return text
    return None


def script_calls(client: redis.Redis) -> int:
    """EVALSHA + EVAL calls the server has answered so far (every session op is one script)."""
    stats = cast(dict[str, dict[str, int]], client.info("commandstats"))
    return sum(stats.get(f"cmdstat_{cmd}", {}).get("calls", 0) for cmd in ("evalsha", "eval"))


def expired_only(cookies: list[str]) -> bool:
    """Whether ``cookies`` is exactly one Set-Cookie that expires the session cookie."""
    return len(cookies) == 1 and cookies[0].startswith('session=""') and "Max-Age=0" in cookies[0]


def set_cookies(response: httpx.Response) -> list[str]:
    return response.headers.get_list("set-cookie")


def cookie_parts(header: str) -> tuple[str, str, dict[str, str]]:
    """``name``, ``value`` and the attributes (lower-cased names) of a Set-Cookie value."""
    first, *rest = header.split(";")
    name, _, value = first.strip().partition("=")
    attrs = {}
    for part in rest:
        key, _, val = part.strip().partition("=")
        attrs[key.lower()] = val
    return name, value, attrs


def issued(response: httpx.Response) -> str:
    """The id the response's one Set-Cookie sets (fails if there is not exactly one)."""
    headers = set_cookies(response)
    assert len(headers) == 1, headers
    name, value, attrs = cookie_parts(headers[0])
    assert name == NAME
    assert "max-age" not in attrs or attrs["max-age"] != "0"
    return value


def vary(response: httpx.Response) -> list[str]:
    return [v.strip().lower() for v in response.headers.get("vary", "").split(",") if v.strip()]


def body(response: httpx.Response) -> dict[str, Any]:
    data = response.json()
    assert isinstance(data, dict)
    return data


def the_session(request: Request | WebSocket) -> Session:
    session = request.scope["session"]
    assert isinstance(session, Session)
    return session


# ----------------------------------------------------------------------------- the app


def make_app(
    store: RedisSessionStore, extra: Sequence[BaseRoute] = (), **options: Any
) -> Starlette:
    """A Starlette app with the routes the tests drive, behind ``SessionMiddleware``."""

    def report(session: Session) -> JSONResponse:
        return JSONResponse(
            {"data": dict(session), "id": session.id, "available": session.available}
        )

    async def read(request: Request) -> Response:
        return report(await load_session(request))

    def read_sync(request: Request) -> Response:
        return report(the_session(request))  # the lazy load through the sync face

    def contains(request: Request) -> Response:
        return PlainTextResponse(str("user" in the_session(request)))

    async def plain(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def set_value(request: Request) -> Response:
        session = await load_session(request)
        session[request.query_params["key"]] = json.loads(request.query_params["value"])
        return report(session)

    def set_sync(request: Request) -> Response:
        session = the_session(request)
        session[request.query_params["key"]] = json.loads(request.query_params["value"])
        return report(session)

    async def delete(request: Request) -> Response:
        session = await load_session(request)
        del session[request.query_params["key"]]
        return report(session)

    async def logout(request: Request) -> Response:
        (await load_session(request)).clear()
        return PlainTextResponse("bye")

    async def login(request: Request) -> Response:
        session = await load_session(request)
        await regenerate_session(request)
        session["user"] = request.query_params.get("user", "alice")
        return report(session)

    async def regenerate(request: Request) -> Response:
        await regenerate_session(request)
        return report(the_session(request))

    async def fail(request: Request) -> Response:
        session = await load_session(request)
        session["failed"] = True
        return PlainTextResponse("boom", status_code=int(request.query_params.get("status", 500)))

    async def bad_value(request: Request) -> Response:
        session = await load_session(request)
        session["bad"] = {1, 2} if request.query_params.get("kind") == "set" else object()
        return PlainTextResponse("ok")

    async def cached(request: Request) -> Response:
        session = await load_session(request)
        if "write" in request.query_params:
            session["w"] = 1
        return PlainTextResponse(
            "ok", headers={"Cache-Control": "public, max-age=60", "Vary": "Accept-Encoding"}
        )

    routes: list[BaseRoute] = [
        Route("/read", read),
        Route("/read-sync", read_sync),
        Route("/contains", contains),
        Route("/plain", plain),
        Route("/set", set_value),
        Route("/set-sync", set_sync),
        Route("/delete", delete),
        Route("/logout", logout),
        Route("/login", login),
        Route("/regenerate", regenerate),
        Route("/fail", fail),
        Route("/bad-value", bad_value),
        Route("/cached", cached),
        *extra,
    ]
    return Starlette(
        routes=routes, middleware=[Middleware(SessionMiddleware, store=store, **options)]
    )


@contextlib.asynccontextmanager
async def client_for(
    app: ASGIApp, *, base_url: str = "http://testserver", raise_app_exceptions: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
        yield client


async def get(
    client: httpx.AsyncClient,
    path: str,
    sid: str | None = None,
    *,
    cookie: str | None = None,
    **params: str,
) -> httpx.Response:
    """One request carrying exactly the cookie given (the client's jar is not used)."""
    client.cookies.clear()
    headers = {}
    if sid is not None:
        headers["cookie"] = f"{NAME}={sid}"
    if cookie is not None:
        headers["cookie"] = cookie
    return await client.get(path, params=params, headers=headers)


@dataclass
class Reply:
    """What a bare ASGI call sent back."""

    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""

    def values(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key.lower() == name]


async def asgi_get(
    app: ASGIApp, path: str, headers: Sequence[tuple[bytes, bytes]] = (), scheme: str = "http"
) -> Reply:
    """GET ``path`` with exactly these raw header bytes, as a server would pass them on."""
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": scheme,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    reply = Reply()
    requested = False

    async def receive() -> Message:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            reply.status = message["status"]
            reply.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            reply.body += message.get("body", b"")

    await app(scope, receive, send)
    return reply


class RecordingStore(RedisSessionStore):
    """A store that remembers every id the middleware asked it to load."""

    def __init__(self, cache: Cache) -> None:
        super().__init__(cache)
        self.asked: list[str] = []
        self.sync = _RecordingSync(self)

    async def load(self, sid: str) -> SessionRecord | None:
        self.asked.append(sid)
        return await super().load(sid)


class _RecordingSync(SyncSessionStore):
    def __init__(self, store: RecordingStore) -> None:
        super().__init__(store)
        self._recording = store

    def load(self, sid: str) -> SessionRecord | None:
        self._recording.asked.append(sid)
        return super().load(sid)


# cachekit's default Redis timeouts and its per-operation deadline are 0.25 s, and a
# session that cannot be loaded or saved in time is (by design) served empty and not saved.
# These tests assert behaviour, not latency, so their caches wait longer: a busy CI box
# must not turn a load into an empty session or a save into a drop (the deadline was left
# at 0.25 s once, and a 50-request test found its session empty in CI).
PATIENT = {
    "deadline": 10,
    "socket_timeout": 10,
    "socket_connect_timeout": 10,
    "pool_timeout": 10,
}
