"""``SessionMiddleware``: server-side sessions for any ASGI app, pure ASGI.

The cookie holds only the session id. It is read from the request, checked for the exact
form of an issued id (anything else - any bytes, any length - is "no session" and never
reaches a Redis key), and the session is saved as the response starts, which is also
when the cookie is set (a new or regenerated id) or expired (the session ended). A
response that read the session carries ``Vary: Cookie``; one that sets the cookie carries
``Cache-Control: no-store``, so no shared cache replays one user's cookie to another.

With a ``max_age`` the cookie is persistent and, by default, rolling: a response that
read or wrote the session re-sends it with a fresh ``Max-Age`` when it was last sent a
``rolling_interval`` ago or more (the record notes each send, on the server's clock), so
an active user stays signed in without a ``Set-Cookie`` on every response.

``request.session`` is a ``dict`` loaded when the app first gets it: for a request whose
cookie holds a well-formed id, the app sees a copy of the scope in which looking up
``"session"`` loads it (changes to that scope are written through to the server's, so
outer middleware still sees the route). Requests that never get the session cost no I/O.

A response with a 5xx status saves nothing and sends no cookie: a failed request leaves
the session as it was. When Redis is down the session reads as empty, nothing is saved
and the app is still served (logged once).

Usage::

    app.add_middleware(SessionMiddleware, store=RedisSessionStore(cache))
    app.add_middleware(SessionMiddleware, store=store, max_age=timedelta(days=14))

    async def login(request):
        session = await load_session(request)
        await regenerate_session(request)        # a new id; the old record is gone
        session["user"] = user_id
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Any, Literal

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cachekit.config import to_seconds
from cachekit.exceptions import BackendError, ConfigurationError, SessionError
from cachekit.sessions.session import Session
from cachekit.sessions.store import RedisSessionStore, SessionMetadata, is_session_id

__all__ = [
    "SessionMiddleware",
    "get_session_id",
    "get_session_metadata",
    "load_session",
    "regenerate_session",
]

SameSite = Literal["lax", "strict", "none"]
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token: a valid cookie name
_EXPIRED = "; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT"


def _max_age(value: float | timedelta | None) -> int | None:
    """``max_age`` as whole seconds; ``None`` for a browser-session cookie (0 or None)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | timedelta):
        raise ConfigurationError(f"max_age is seconds or a timedelta, got {value!r}")
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds == 0:
        return None
    if not 1 <= seconds < math.inf:  # negative, NaN, inf, under a second (cookies count seconds)
        raise ConfigurationError(
            f"max_age must be at least 1 second, or 0/None for a browser-session cookie; "
            f"got {value!r}"
        )
    return int(seconds)


class SessionMiddleware:
    """Server-side sessions at ``request.session``, stored by a :class:`RedisSessionStore`.

    **Parameters:**

    * **store** - where records live.
    * **cookie_name** - default ``"session"``, like Starlette's own middleware;
      **session_cookie** is accepted as its alias (Starlette's name for it). A name with
      the ``__Host-`` or ``__Secure-`` prefix always gets ``Secure`` (browsers drop such a
      cookie without it, and a TLS-terminating proxy makes the request look like plain
      HTTP); ``__Host-`` also needs ``path="/"`` and no ``domain``.
    * **path**, **domain** - the cookie's scope (default ``/``, no domain: this host only).
    * **same_site** - ``"lax"`` (default), ``"strict"`` or ``"none"`` (needs HTTPS).
    * **https_only** - ``Secure`` always (``True``), never (``False``), or when the request
      came over HTTPS (``None``, the default).
    * **max_age** - the cookie's lifetime, seconds or a ``timedelta``; ``None`` or ``0``
      (the default): the cookie ends with the browser session. Store timeouts left unset
      follow it (see :class:`RedisSessionStore`).
    * **rolling** - re-send the cookie with a fresh ``Max-Age`` on responses that read or
      write the session, at most once per **rolling_interval** (default 60 s), so active
      users stay signed in. Default: on when ``max_age`` is set.
    * **partitioned** - ``Partitioned`` (CHIPS): a cookie kept per top-level site, for apps
      embedded in other sites' frames; implies ``Secure``.
    * **autoload** - fetch the record before the app runs whenever the request carries a
      well-formed id (one async round trip), instead of on first use.

    Usage::

        app = Starlette(routes=routes, middleware=[
            Middleware(SessionMiddleware, store=RedisSessionStore(cache), same_site="strict"),
        ])
        Middleware(SessionMiddleware, store=store, max_age=timedelta(days=14))  # rolling
    """

    def __init__(
        self,
        app: ASGIApp,
        store: RedisSessionStore,
        *,
        cookie_name: str | None = None,
        session_cookie: str | None = None,
        path: str = "/",
        domain: str | None = None,
        same_site: SameSite = "lax",
        https_only: bool | None = None,
        max_age: float | timedelta | None = None,
        rolling: bool | None = None,
        rolling_interval: float | timedelta = 60,
        partitioned: bool = False,
        autoload: bool = False,
    ) -> None:
        if cookie_name is not None and session_cookie is not None and cookie_name != session_cookie:
            raise ConfigurationError("cookie_name and session_cookie name the same thing; give one")
        name = next((n for n in (cookie_name, session_cookie) if n is not None), "session")
        if not _TOKEN.fullmatch(name):
            raise ConfigurationError(f"invalid cookie name {name!r}")
        if same_site not in ("lax", "strict", "none"):
            raise ConfigurationError("same_site must be 'lax', 'strict' or 'none'")
        if same_site == "none" and https_only is not True:
            raise ConfigurationError("same_site='none' needs https_only=True")
        for attr, value in (("path", path), ("domain", domain or "")):
            if any(c in value for c in ";,\r\n") or not value.isprintable():
                raise ConfigurationError(f"invalid cookie {attr} {value!r}")
        seconds = _max_age(max_age)
        if rolling is None:
            rolling = seconds is not None
        if rolling and seconds is None:
            raise ConfigurationError(
                "rolling=True needs a max_age: a browser-session cookie has no lifetime to renew"
            )
        interval = to_seconds(rolling_interval, name="rolling_interval")
        secure = _secure_policy(name, path, domain, https_only, partitioned)
        store._follow_cookie(seconds, interval if rolling else 0.0)
        self.app = app
        self.store = store
        self.cookie_name = name
        self.autoload = autoload
        self.https_only = secure
        self.max_age = seconds
        self.rolling = rolling
        self._path = f"; Path={path}"
        self._flags = (
            f"; Domain={domain}" if domain else ""
        ) + f"; HttpOnly; SameSite={same_site.capitalize()}"
        self._partitioned = "; Partitioned" if partitioned else ""
        # Max-Age right after Path, as Starlette writes it (tests that grep for it work).
        self._max_age = f"; Max-Age={seconds}" if seconds else ""
        self._needle = name.encode("latin-1") + b"="

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        session = Session(self.store, self._sid(scope))
        scope["session"] = session
        if self.autoload:
            await session.load()
        elif session.cookie_sid is not None:
            # The app gets `request.session` (scope["session"]) already loaded, so that
            # every JSON encoder sees its data - orjson and json read a dict's storage
            # without calling its methods. Without a cookie there is nothing to load.
            scope = _LoadingScope(scope)
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
        return (
            f"{self.cookie_name}={value}{self._path}{lifetime}{self._flags}"
            + ("; Secure" if secure else "")
            + self._partitioned
        )


def _secure_policy(
    name: str, path: str, domain: str | None, https_only: bool | None, partitioned: bool
) -> bool | None:
    """``Secure``: always (``True``), never, or by the request's scheme (``None``).

    Browsers refuse a ``__Secure-``/``__Host-`` cookie, and a ``Partitioned`` one, that is
    not ``Secure``; behind a proxy that ends TLS the app sees plain HTTP, so for those the
    flag is not left to the scheme. ``__Host-`` is also refused with a Domain or another
    Path than ``/`` - these are errors in the settings, reported before any request.
    """
    lowered = name.lower()  # browsers match the prefixes without regard to case
    required = None
    if lowered.startswith("__host-"):
        if domain:
            raise ConfigurationError(
                f"a __Host- cookie ({name!r}) must not have a domain: browsers drop it"
            )
        if path != "/":
            raise ConfigurationError(f"a __Host- cookie ({name!r}) needs path='/', not {path!r}")
        required = "a __Host- cookie"
    elif lowered.startswith("__secure-"):
        required = "a __Secure- cookie"
    elif partitioned:
        required = "a partitioned cookie"
    if required is None:
        return https_only
    if https_only is False:
        raise ConfigurationError(f"{required} ({name!r}) is always Secure: https_only=False")
    return True


class _LoadingScope(dict[str, Any]):
    """The scope the app sees: the server's, where getting ``scope["session"]`` loads it.

    It is a copy, so every change the app makes (Starlette's router sets the route and
    the endpoint) is written through to the server's scope, where outer middleware reads it.
    """

    __slots__ = ("_outer",)

    def __init__(self, outer: Scope) -> None:
        super().__init__(outer)
        self._outer = outer

    def __getitem__(self, key: str) -> Any:
        value = dict.__getitem__(self, key)
        if key == "session" and isinstance(value, Session):
            value._ensure()
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        dict.__setitem__(self, key, value)
        self._outer[key] = value

    def __delitem__(self, key: str) -> None:
        dict.__delitem__(self, key)
        self._outer.pop(key, None)

    def setdefault(self, key: str, default: Any = None) -> Any:
        if not dict.__contains__(self, key):
            self[key] = default
        return dict.__getitem__(self, key)

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        changes = dict(other, **kwargs)
        dict.update(self, changes)
        self._outer.update(changes)

    def pop(self, key: str, *default: Any) -> Any:
        self._outer.pop(key, None)
        return dict.pop(self, key, *default)

    def __ior__(self, other: Any) -> _LoadingScope:  # type: ignore[override,misc]
        self.update(other)
        return self


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
        failed = message["status"] >= 500  # a failed request leaves the session as it was
        if not failed:
            try:
                await session.commit()
            except BackendError as exc:
                log = self.middleware.store.cache.bound().ctx.log
                log.warning(("session-save", type(exc)), "cachekit: session not saved (%s)", exc)
        headers = MutableHeaders(scope=message)
        headers.add_vary_header("Cookie")
        now = session.id
        if now is not None and now != session.client_sid:
            self._set_cookie(headers, now)
        elif now is None and session.ended and session.cookie_sid is not None:
            self._set_cookie(headers, None)
        elif now is not None and session.rolled and not failed:
            # Rolling expiry: the load found the cookie last sent a rolling interval ago or
            # more (and noted this send), so the same id goes out with a fresh Max-Age.
            self._set_cookie(headers, now)

    def _set_cookie(self, headers: MutableHeaders, sid: str | None) -> None:
        headers.append("set-cookie", self.middleware.cookie(self.scope, sid))
        headers["cache-control"] = "no-store"  # no shared cache may replay a session cookie


def _session(conn: Any) -> Session:
    scope = conn if isinstance(conn, dict) else getattr(conn, "scope", None)
    # dict.get: looking the session up must not load it (see _LoadingScope).
    session = dict.get(scope, "session") if isinstance(scope, dict) else None
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


def get_session_id(request: Any) -> str | None:
    """The id of ``request``'s session, without loading it; ``None`` when there is none.

    Before the session is loaded this is the well-formed id the cookie carries (it may
    name a session that has ended; the load decides and never adopts an unknown id); after
    it, the stored record's id - a new one once a login regenerated it. Named like
    starsessions' helper.

    Usage::

        log.info("request in session %s", get_session_id(request))
    """
    return _session(request).id


def get_session_metadata(request: Any) -> SessionMetadata | None:
    """When ``request``'s session began, was last used and will end; ``None``: no session.

    Loads the session if it is not yet (through the sync face: await
    :func:`load_session` first in async handlers). ``None`` also for a session created in
    this request (it is stored as the response starts).

    Usage::

        await load_session(request)
        meta = get_session_metadata(request)
        if meta is not None:
            expires_in = meta.remaining            # seconds, on the server's clock
    """
    session = _session(request)
    session._ensure()
    return session.metadata
