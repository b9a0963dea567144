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
the absolute lifetime is fixed at creation. Both run on the server's clock, which also
stamps the record's creation, its last access and the last time its cookie was sent
(for rolling expiry): :class:`SessionMetadata`.

Values are JSON (orjson; keys of nested mappings that are numbers, booleans or ``None``
become strings, as ``json.dumps`` does for Starlette's sessions). With ``encrypt_keys``
every value is sealed with AES-256-GCM before it reaches Redis (:mod:`.crypto`).

Usage::

    store = RedisSessionStore(cache, idle_timeout=1800, absolute_timeout=8 * 3600)
    record = await store.save(None, {"user": "alice"})     # a new session
    record = await store.load(record.sid)
    store.sync.load(record.sid)                            # the blocking twin
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import orjson

from cachekit.backends.ops import Delete, ms
from cachekit.backends.records import CREATED, DEADLINE, SID, SaveSession, Touched, TouchSession
from cachekit.config import to_seconds
from cachekit.context import Context
from cachekit.effects import Flow
from cachekit.exceptions import ConfigurationError, SerializationError, SessionError
from cachekit.raw import deferrable
from cachekit.sessions.crypto import SessionCipher

if TYPE_CHECKING:
    from cachekit.cache import Cache

__all__ = [
    "RedisSessionStore",
    "SessionMetadata",
    "SessionRecord",
    "SyncSessionStore",
    "is_session_id",
    "new_session_id",
]

_ID_BYTES = 32
_ID = re.compile(r"[A-Za-z0-9_-]{43}")
_DATA = "d:"  # field prefix of session keys; meta fields start with "@"
_ISSUE_ATTEMPTS = 3
_JSON = orjson.OPT_NON_STR_KEYS  # {42: 1} is stored as {"42": 1}, as json.dumps does
DEFAULT_IDLE = 1800.0
DEFAULT_LIFETIME = 8 * 3600.0
# "No absolute limit" (a rolling cookie's session lives while it is used): a deadline
# a century away keeps one record layout and one script for both cases.
UNBOUNDED = 100 * 365 * 86400.0


def new_session_id() -> str:
    """A fresh session id: 256 random bits, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(_ID_BYTES)


def is_session_id(value: str) -> bool:
    """Whether ``value`` has the exact form of an id this module issues."""
    return len(value) == 43 and _ID.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class SessionMetadata:
    """When a session began, was last used, and will end; Unix seconds, server clock.

    * **created** - when it was first saved (``None`` for records older than this field).
    * **last_access** - the load before this request's (``None``: never loaded before).
    * **idle_expiry** - when it ends if not used again; **absolute_expiry** - when it ends
      however much it is used (``None``: no absolute limit, a rolling cookie's session).
    * **remaining** - seconds until the earlier of the two, as of this request's load.

    Usage::

        meta = get_session_metadata(request)
        if meta is not None and meta.remaining < 300:
            ...   # warn the user that the session is about to end
    """

    created: float | None
    last_access: float | None
    idle_expiry: float
    absolute_expiry: float | None
    remaining: float


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A stored session: its id, its data, and each value's JSON as stored.

    ``encoded`` is what a later save compares against to send only what changed.
    ``metadata`` and ``rolled`` (the cookie is due to be re-sent) come with a load.
    """

    sid: str
    data: dict[str, Any]
    encoded: dict[str, bytes]
    metadata: SessionMetadata | None = field(default=None, compare=False)
    rolled: bool = field(default=False, compare=False)


@dataclass(frozen=True, slots=True)
class _Config:
    idle: float
    lifetime: float
    max_bytes: int
    roll: float = 0.0  # the rolling interval; 0: the cookie is never re-sent
    bounded: bool = True  # False: no absolute limit (``lifetime`` is UNBOUNDED)
    cipher: SessionCipher | None = None


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
            encoded[name] = raw = orjson.dumps(value, option=_JSON)
        except orjson.JSONEncodeError as exc:
            raise SessionError(f"session value {name!r} is not JSON: {exc}") from exc
        size += len(raw)
    if size > max_bytes:
        raise SessionError(f"the session holds {size} bytes, more than max_bytes={max_bytes}")
    return encoded


def _decode(ctx: Context, config: _Config, sid: str, touched: Touched) -> SessionRecord | None:
    fields = touched.fields
    # The record must say it belongs to the id asked for (the redundant check that keeps
    # one user's session from ever being served for another id).
    if fields.get(SID) != sid.encode():
        _invalid(ctx, "a session record that names another id")
        return None
    if not fields.get(DEADLINE, b"").isdigit():  # Lua's tonumber took what int() would not
        _invalid(ctx, "a session record whose deadline is not a time")
        return None
    cipher = config.cipher
    data, encoded = {}, {}
    for name, raw in fields.items():
        if not name.startswith(_DATA):
            continue
        key, stale = name[2:], False
        if cipher is not None:
            opened = cipher.open(sid, key, raw)
            if opened is None:
                _invalid(ctx, "a session value that does not decrypt")
                return None
            raw, stale = opened
        try:
            data[key] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            _invalid(ctx, "a session record that is not JSON")
            return None
        # A value sealed with an older key compares unequal, so the next save re-seals it.
        encoded[key] = b"" if stale else raw
    return SessionRecord(sid, data, encoded, _metadata(config, touched), touched.rolled)


def _metadata(config: _Config, touched: Touched) -> SessionMetadata:
    fields = touched.fields
    created = fields.get(CREATED, b"")
    deadline = int(fields[DEADLINE])
    now = touched.now_ms
    return SessionMetadata(
        created=int(created) / 1000 if created.isdigit() else None,
        last_access=None if touched.seen_ms is None else touched.seen_ms / 1000,
        idle_expiry=(now + min(ms(config.idle), deadline - now)) / 1000,
        absolute_expiry=deadline / 1000 if config.bounded else None,
        remaining=touched.ttl_ms / 1000,
    )


def _invalid(ctx: Context, what: str) -> None:
    ctx.stats.incr("invalid_payloads")
    ctx.log.warning(("session", what), "cachekit: ignored %s", what)


def _load(ctx: Context, config: _Config, sid: str) -> Flow[SessionRecord | None]:
    if not is_session_id(sid):
        return None  # never reaches a key
    try:
        touched = yield TouchSession(_key(ctx, sid), config.idle, config.roll)
    except SerializationError as exc:
        _invalid(ctx, str(exc))
        return None
    return None if touched is None else _decode(ctx, config, sid, touched)


def _sealed(config: _Config, sid: str, fields: Mapping[str, bytes]) -> dict[str, bytes]:
    """``fields`` (session keys to JSON) as hash fields, each value sealed if encrypting."""
    cipher = config.cipher
    if cipher is None:
        return {_DATA + k: v for k, v in fields.items()}
    return {_DATA + k: cipher.seal(sid, k, v) for k, v in fields.items()}


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
    changed = _sealed(
        config, record.sid, {k: v for k, v in encoded.items() if previous.get(k) != v}
    )
    removed = [_DATA + k for k in previous if k not in encoded]
    if changed or removed:
        saved = yield SaveSession(
            _key(ctx, record.sid), record.sid, False, config.idle, config.lifetime, changed, removed
        )
        if saved != "saved":
            return None
    # The load's metadata and rolling verdict stay with the record for this request.
    return replace(record, data=dict(data), encoded=encoded)


def _create(
    ctx: Context, config: _Config, data: Mapping[str, Any], encoded: dict[str, bytes]
) -> Flow[SessionRecord | None]:
    if not encoded:
        return None  # nothing to keep: no record, no id
    for _ in range(_ISSUE_ATTEMPTS):
        sid = new_session_id()
        fields = _sealed(config, sid, encoded)  # the id is part of what each value is bound to
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
    * **idle_timeout** - a session unused this long ends; every load restarts it.
    * **absolute_timeout** - a session ends this long after it began, used or not.
    * **max_bytes** - the largest session, as JSON (default 64 KiB); a larger save raises
      :class:`~cachekit.exceptions.SessionError`.
    * **encrypt_keys** - seal every value with AES-256-GCM (needs
      ``cachekit[encryption]``); newest key first, each 32 bytes raw or URL-safe base64
      (:func:`~cachekit.sessions.new_encryption_key`). Records written without
      encryption (or with a key no longer listed) then read as no session.

    Timeouts left unset follow the cookie of the :class:`SessionMiddleware` that uses
    the store:

    ============================  ===============  ======================
    middleware                    idle_timeout     absolute_timeout
    ============================  ===============  ======================
    ``max_age`` unset / 0         30 minutes       8 hours
    ``max_age=N``, rolling        N                none (while used)
    ``max_age=N, rolling=False``  N                N
    ============================  ===============  ======================

    A timeout given here always wins.

    Usage::

        app.add_middleware(SessionMiddleware, store=RedisSessionStore(cache))
        RedisSessionStore(cache, encrypt_keys=[os.environ["SESSION_KEY"], old_key])
    """

    def __init__(
        self,
        cache: Cache,
        *,
        idle_timeout: float | timedelta | None = None,
        absolute_timeout: float | timedelta | None = None,
        max_bytes: int = 64 * 1024,
        encrypt_keys: Iterable[bytes | str] | None = None,
    ) -> None:
        self._idle = to_seconds(idle_timeout, name="idle_timeout")
        self._lifetime = to_seconds(absolute_timeout, name="absolute_timeout")
        if max_bytes < 1:
            raise ConfigurationError("max_bytes must be positive")
        cipher = None if encrypt_keys is None else SessionCipher(encrypt_keys)
        self.cache = cache
        self.config = _Config(
            self._idle or DEFAULT_IDLE, self._lifetime or DEFAULT_LIFETIME, max_bytes, 0.0, True,
            cipher,
        )  # fmt: skip
        self._bound_to: _Config | None = None
        self.sync = SyncSessionStore(self)

    def _follow_cookie(self, max_age: float | None, roll: float) -> None:
        """Take the unset timeouts from the middleware's cookie (the table above).

        A store serves one cookie policy: a second middleware with another one is an error.
        """
        idle, lifetime, bounded = self._idle, self._lifetime, True
        if max_age:
            idle = idle or max_age
            if lifetime is None and roll:
                lifetime, bounded = UNBOUNDED, False
            lifetime = lifetime or max_age
        config = replace(
            self.config,
            idle=idle or DEFAULT_IDLE,
            lifetime=lifetime or DEFAULT_LIFETIME,
            roll=roll,
            bounded=bounded,
        )
        if self._bound_to is not None and self._bound_to != config:
            raise ConfigurationError(
                "this RedisSessionStore already serves a SessionMiddleware with another "
                "max_age or rolling setting; give each middleware its own store"
            )
        self.config = self._bound_to = config

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
