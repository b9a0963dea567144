"""Server-side session records in Redis: strict ids, per-key merging, server-side expiry.

A session id is 256 bits from :mod:`secrets` (43 URL-safe characters) and means nothing
but itself. It is checked against that exact form before it is ever put into a key, and
an id whose record does not exist is never adopted: a new id is issued when the session
is first written (OWASP's "strict" rule; starsessions adopts attacker-chosen ids).

Records live under their own namespace (``<prefix>:session:{id}``), out of reach of any
cache key. Each session key is one hash field holding that value's JSON, and a save
writes only the keys whose JSON changed (or were deleted): two concurrent requests that
change different keys both keep their change; two that change the same key: the last
one to finish wins. A save never brings back a record that was deleted meanwhile
(logout in another tab, regeneration, expiry). The idle timeout slides on every load;
the absolute lifetime is fixed at creation. Both run on the server's clock.

Usage::

    store = RedisSessionStore(cache, idle_timeout=1800, absolute_timeout=8 * 3600)
    record = await store.save(None, {"user": "alice"})     # a new session
    record = await store.load(record.sid)
    store.sync.load(record.sid)                            # the blocking twin
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import orjson

from cachekit.backends.ops import Delete
from cachekit.backends.records import SID, SaveSession, TouchSession
from cachekit.config import to_seconds
from cachekit.context import Context
from cachekit.effects import Flow
from cachekit.exceptions import ConfigurationError, SerializationError, SessionError
from cachekit.raw import deferrable

if TYPE_CHECKING:
    from cachekit.cache import Cache

__all__ = [
    "RedisSessionStore",
    "SessionRecord",
    "SyncSessionStore",
    "is_session_id",
    "new_session_id",
]

_ID_BYTES = 32
_ID = re.compile(r"[A-Za-z0-9_-]{43}")
_DATA = "d:"  # field prefix of session keys; meta fields start with "@"
_ISSUE_ATTEMPTS = 3


def new_session_id() -> str:
    """A fresh session id: 256 random bits, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(_ID_BYTES)


def is_session_id(value: str) -> bool:
    """Whether ``value`` has the exact form of an id this module issues."""
    return len(value) == 43 and _ID.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A stored session: its id, its data, and each value's JSON as stored.

    ``encoded`` is what a later save compares against to send only what changed.
    """

    sid: str
    data: dict[str, Any]
    encoded: dict[str, bytes]


@dataclass(frozen=True, slots=True)
class _Config:
    idle: float
    lifetime: float
    max_bytes: int


def _key(ctx: Context, sid: str) -> str:
    return ctx.keyspace.namespaced("session", sid)


def _encode(data: Mapping[str, Any], max_bytes: int) -> dict[str, bytes]:
    encoded = {}
    size = 0
    for name, value in data.items():
        if type(name) is not str:
            raise SessionError(f"session keys are strings, got {type(name).__name__}")
        try:
            size += len(name.encode())
        except UnicodeEncodeError:
            raise SessionError(f"session key {name!r} is not valid Unicode") from None
        try:
            encoded[name] = raw = orjson.dumps(value)
        except orjson.JSONEncodeError as exc:
            raise SessionError(f"session value {name!r} is not JSON: {exc}") from exc
        size += len(raw)
    if size > max_bytes:
        raise SessionError(f"the session holds {size} bytes, more than max_bytes={max_bytes}")
    return encoded


def _decode(ctx: Context, sid: str, fields: dict[str, bytes] | None) -> SessionRecord | None:
    if fields is None:
        return None
    # The record must say it belongs to the id asked for (the redundant check that keeps
    # one user's session from ever being served for another id).
    if fields.get(SID) != sid.encode():
        _invalid(ctx, "a session record that names another id")
        return None
    data, encoded = {}, {}
    for field, raw in fields.items():
        if field.startswith(_DATA):
            try:
                data[field[2:]] = orjson.loads(raw)
            except orjson.JSONDecodeError:
                _invalid(ctx, "a session record that is not JSON")
                return None
            encoded[field[2:]] = raw
    return SessionRecord(sid, data, encoded)


def _invalid(ctx: Context, what: str) -> None:
    ctx.stats.incr("invalid_payloads")
    ctx.log.warning(("session", what), "cachekit: ignored %s", what)


def _load(ctx: Context, config: _Config, sid: str) -> Flow[SessionRecord | None]:
    if not is_session_id(sid):
        return None  # never reaches a key
    try:
        fields = yield TouchSession(_key(ctx, sid), config.idle)
    except SerializationError as exc:
        _invalid(ctx, str(exc))
        return None
    return _decode(ctx, sid, fields)


def _save(
    ctx: Context, config: _Config, record: SessionRecord | None, data: Mapping[str, Any]
) -> Flow[SessionRecord | None]:
    encoded = _encode(data, config.max_bytes)
    if record is None:
        return (yield from _create(ctx, config, data, encoded))
    if not encoded:  # emptied: the session ends
        yield Delete([_key(ctx, record.sid)])
        return None
    previous = record.encoded
    changed = {_DATA + k: v for k, v in encoded.items() if previous.get(k) != v}
    removed = [_DATA + k for k in previous if k not in encoded]
    if changed or removed:
        saved = yield SaveSession(
            _key(ctx, record.sid), record.sid, False, config.idle, config.lifetime, changed, removed
        )
        if saved != "saved":
            return None
    return SessionRecord(record.sid, dict(data), encoded)


def _create(
    ctx: Context, config: _Config, data: Mapping[str, Any], encoded: dict[str, bytes]
) -> Flow[SessionRecord | None]:
    if not encoded:
        return None  # nothing to keep: no record, no id
    fields = {_DATA + k: v for k, v in encoded.items()}
    for _ in range(_ISSUE_ATTEMPTS):
        sid = new_session_id()
        saved = yield SaveSession(
            _key(ctx, sid), sid, True, config.idle, config.lifetime, fields, ()
        )
        if saved == "saved":
            return SessionRecord(sid, dict(data), encoded)
    raise SessionError("could not issue a session id")  # 2**-256: a broken RNG, not luck


def _regenerate(
    ctx: Context, config: _Config, record: SessionRecord | None, data: Mapping[str, Any]
) -> Flow[SessionRecord | None]:
    fresh = yield from _create(ctx, config, data, _encode(data, config.max_bytes))
    if record is not None:
        # Retried in the background if Redis fails now: the old record holds only what
        # the session held before the privilege change, nothing an attacker could gain.
        yield from deferrable(ctx, Delete([_key(ctx, record.sid)]))
    return fresh


class RedisSessionStore:
    """Session records in the Redis of ``cache``; async methods, ``.sync`` twins.

    **Parameters:**

    * **cache** - the :class:`~cachekit.Cache` whose Redis holds the records.
    * **idle_timeout** - a session unused this long ends (default 30 minutes); every
      load restarts it.
    * **absolute_timeout** - a session ends this long after it began, used or not
      (default 8 hours).
    * **max_bytes** - the largest session, as JSON (default 64 KiB); a larger save raises
      :class:`~cachekit.exceptions.SessionError`.

    Usage::

        app.add_middleware(SessionMiddleware, store=RedisSessionStore(cache))
    """

    def __init__(
        self,
        cache: Cache,
        *,
        idle_timeout: float | timedelta = 1800,
        absolute_timeout: float | timedelta = 8 * 3600,
        max_bytes: int = 64 * 1024,
    ) -> None:
        idle = to_seconds(idle_timeout, name="idle_timeout")
        lifetime = to_seconds(absolute_timeout, name="absolute_timeout")
        if max_bytes < 1:
            raise ConfigurationError("max_bytes must be positive")
        self.cache = cache
        self.config = _Config(idle, lifetime, max_bytes)
        self.sync = SyncSessionStore(self)

    async def load(self, sid: str) -> SessionRecord | None:
        """The live record of ``sid`` (its idle timeout restarted), else ``None``."""
        b = self.cache._bound()
        return await b.aio.drive(_load(b.ctx, self.config, sid))

    async def save(
        self, record: SessionRecord | None, data: Mapping[str, Any]
    ) -> SessionRecord | None:
        """Store ``data`` as the new state of ``record`` (``None``: a new session).

        Sends only the keys that changed. Returns the record now stored, or ``None`` when
        there is none: ``data`` was empty (the record is deleted) or the record was gone.
        """
        b = self.cache._bound()
        return await b.aio.drive(_save(b.ctx, self.config, record, data))

    async def regenerate(
        self, record: SessionRecord | None, data: Mapping[str, Any]
    ) -> SessionRecord | None:
        """Move ``data`` to a new id and delete ``record`` (login, privilege change)."""
        b = self.cache._bound()
        return await b.aio.drive(_regenerate(b.ctx, self.config, record, data))

    async def delete(self, sid: str) -> None:
        """End the session ``sid`` on the server."""
        if is_session_id(sid):
            b = self.cache._bound()
            await b.aio.drive(_delete(b.ctx, sid))


def _delete(ctx: Context, sid: str) -> Flow[None]:
    yield Delete([_key(ctx, sid)])


class SyncSessionStore:
    """The blocking twin of :class:`RedisSessionStore`, at ``store.sync``.

    Usage::

        record = store.sync.load(sid)
    """

    def __init__(self, store: RedisSessionStore) -> None:
        self._store = store

    def load(self, sid: str) -> SessionRecord | None:
        """The live record of ``sid`` (its idle timeout restarted), else ``None``."""
        b = self._store.cache._bound()
        return b.sync.drive(_load(b.ctx, self._store.config, sid))

    def save(self, record: SessionRecord | None, data: Mapping[str, Any]) -> SessionRecord | None:
        """Store ``data`` as the new state of ``record`` (``None``: a new session)."""
        b = self._store.cache._bound()
        return b.sync.drive(_save(b.ctx, self._store.config, record, data))

    def regenerate(
        self, record: SessionRecord | None, data: Mapping[str, Any]
    ) -> SessionRecord | None:
        """Move ``data`` to a new id and delete ``record``."""
        b = self._store.cache._bound()
        return b.sync.drive(_regenerate(b.ctx, self._store.config, record, data))

    def delete(self, sid: str) -> None:
        """End the session ``sid`` on the server."""
        if is_session_id(sid):
            b = self._store.cache._bound()
            b.sync.drive(_delete(b.ctx, sid))
