"""``SessionMiddleware``: server-side sessions for any ASGI app, pure ASGI.

The cookie holds only the session id. It is read from the request, checked for the exact
form of an issued id (anything else - any bytes, any length - is "no session" and never
reaches a Redis key), and the session is saved as the response starts, which is also
when the cookie is set (a new or regenerated id) or expired (the session ended). A
response that read the session carries ``Vary: Cookie``; one that sets the cookie carries
``Cache-Control: no-store``, so no shared cache replays one user's cookie to another.

A response with a 5xx status saves nothing: a failed request leaves the session as it
was. When Redis is down the session reads as empty, nothing is saved and the app is still
served (logged once).

Usage::

    app.add_middleware(SessionMiddleware, store=RedisSessionStore(cache))

    async def login(request):
        session = await load_session(request)
        await regenerate_session(request)        # a new id; the old record is gone
        session["user"] = user_id
"""

from __future__ import annotations

import re
from typing import Any, Literal

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cachekit.exceptions import BackendError, ConfigurationError, SessionError
from cachekit.sessions.session import Session
from cachekit.sessions.store import RedisSessionStore, is_session_id

__all__ = ["SessionMiddleware", "load_session", "regenerate_session"]

SameSite = Literal["lax", "strict", "none"]
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token: a valid cookie name
_EXPIRED = "; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT"


class SessionMiddleware:
    """Server-side sessions at ``request.session``, stored by a :class:`RedisSessionStore`.

    **Parameters:**

    * **store** - where records live.
    * **cookie_name** - default ``"session"``, like Starlette's own middleware.
    * **path**, **domain** - the cookie's scope (default ``/``, no domain: this host only).
    * **same_site** - ``"lax"`` (default), ``"strict"`` or ``"none"`` (needs HTTPS).
    * **https_only** - ``Secure`` always (``True``), never (``False``), or when the request
      came over HTTPS (``None``, the default).
    * **max_age** - seconds for a persistent cookie; default ``None``: the cookie ends with
      the browser session (the server ends the session itself by its timeouts).
    * **autoload** - fetch the record before the app runs whenever the request carries a
      well-formed id (one async round trip), instead of on first use.

    Usage::

        app = Starlette(routes=routes, middleware=[
            Middleware(SessionMiddleware, store=RedisSessionStore(cache), same_site="strict"),
        ])
    """

    def __init__(
        self,
        app: ASGIApp,
        store: RedisSessionStore,
        *,
        cookie_name: str = "session",
        path: str = "/",
        domain: str | None = None,
        same_site: SameSite = "lax",
        https_only: bool | None = None,
        max_age: int | None = None,
        autoload: bool = False,
    ) -> None:
        if not _TOKEN.fullmatch(cookie_name):
            raise ConfigurationError(f"invalid cookie name {cookie_name!r}")
        if same_site not in ("lax", "strict", "none"):
            raise ConfigurationError("same_site must be 'lax', 'strict' or 'none'")
        if same_site == "none" and https_only is not True:
            raise ConfigurationError("same_site='none' needs https_only=True")
        if max_age is not None and (type(max_age) is not int or max_age < 1):
            raise ConfigurationError("max_age is a positive number of seconds, or None")
        for name, value in (("path", path), ("domain", domain or "")):
            if any(c in value for c in ";,\r\n") or not value.isprintable():
                raise ConfigurationError(f"invalid cookie {name} {value!r}")
        self.app = app
        self.store = store
        self.cookie_name = cookie_name
        self.autoload = autoload
        self.https_only = https_only
        scope_attrs = f"; Path={path}" + (f"; Domain={domain}" if domain else "")
        self._attrs = scope_attrs + f"; HttpOnly; SameSite={same_site.capitalize()}"
        self._max_age = f"; Max-Age={max_age}" if max_age else ""
        self._needle = cookie_name.encode("latin-1") + b"="

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        session = Session(self.store, self._sid(scope))
        scope["session"] = session
        if self.autoload:
            await session.load()
        if scope["type"] == "websocket":  # no response headers to carry a cookie: read-only
            await self.app(scope, receive, send)
            return
        responder = _Responder(self, scope, session, send)
        await self.app(scope, receive, responder.send)

    def _sid(self, scope: Scope) -> str | None:
        """The first well-formed id among the request's cookies of our name."""
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        for name, value in headers:
            if name != b"cookie" or self._needle not in value:
                continue
            for pair in value.split(b";"):
                key, sep, candidate = pair.strip().partition(b"=")
                if sep and key == self._needle[:-1]:
                    text = candidate.decode("latin-1")
                    if is_session_id(text):
                        return text
        return None

    def cookie(self, scope: Scope, sid: str | None) -> str:
        """The ``Set-Cookie`` value that sets ``sid`` (``None``: expires the cookie)."""
        secure = self.https_only
        if secure is None:
            secure = scope.get("scheme") in ("https", "wss")
        lifetime = _EXPIRED if sid is None else self._max_age
        value = sid or '""'
        return f"{self.cookie_name}={value}{self._attrs}{lifetime}" + ("; Secure" if secure else "")


class _Responder:
    """Holds the response start until the session is saved and the cookie decided."""

    __slots__ = ("middleware", "scope", "send_next", "session")

    def __init__(
        self, middleware: SessionMiddleware, scope: Scope, session: Session, send: Send
    ) -> None:
        self.middleware = middleware
        self.scope = scope
        self.session = session
        self.send_next = send

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start" and self.session.accessed:
            await self._finish(message)
        await self.send_next(message)

    async def _finish(self, message: Message) -> None:
        session = self.session
        if message["status"] < 500:
            try:
                await session.commit()
            except BackendError as exc:
                log = self.middleware.store.cache._bound().ctx.log
                log.warning(("session-save", type(exc)), "cachekit: session not saved (%s)", exc)
        headers = MutableHeaders(scope=message)
        headers.add_vary_header("Cookie")
        now = session.id
        if now is not None and now != session.client_sid:
            self._set_cookie(headers, now)
        elif now is None and session.ended and session.cookie_sid is not None:
            self._set_cookie(headers, None)

    def _set_cookie(self, headers: MutableHeaders, sid: str | None) -> None:
        headers.append("set-cookie", self.middleware.cookie(self.scope, sid))
        headers["cache-control"] = "no-store"  # no shared cache may replay a session cookie


def _session(conn: Any) -> Session:
    scope = conn if isinstance(conn, dict) else getattr(conn, "scope", None)
    session = None if scope is None else scope.get("session")
    if not isinstance(session, Session):
        raise SessionError("no cachekit session here: add SessionMiddleware to the app")
    return session


async def load_session(request: Any) -> Session:
    """Fetch ``request``'s session without blocking the event loop; the session.

    ``request`` is a Starlette ``Request`` (or ``WebSocket``) or an ASGI scope.

    Usage::

        session = await load_session(request)
        session["seen"] = session.get("seen", 0) + 1
    """
    return await _session(request).load()


async def regenerate_session(request: Any) -> None:
    """Give ``request``'s session a new id and delete the old record (fixation defence).

    Call it on login and on any change of privilege; the data moves to the new id (a
    cart survives login) and the response sets the new cookie.

    Usage::

        await regenerate_session(request)
        request.session["user"] = user_id
    """
    await _session(request).regenerate()
