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
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from cachekit.backends.ops import Delete
from cachekit.backends.ops.records import SaveSession, TouchSession
from cachekit.config import to_seconds
from cachekit.exceptions import ConfigurationError, SerializationError, SessionError
from cachekit.flow.context import Context
from cachekit.flow.effects import Flow
from cachekit.flow.raw import deferrable
from cachekit.sessions.crypto import SessionCipher
from cachekit.sessions.record import (
    DATA,
    SessionMetadata,
    SessionRecord,
    StoreConfig,
    decode,
    encode,
    invalid,
    sealed,
)

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
_ISSUE_ATTEMPTS = 3
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


def _key(ctx: Context, sid: str) -> str:
    return ctx.keyspace.namespaced("session", sid)


def _load(ctx: Context, config: StoreConfig, sid: str) -> Flow[SessionRecord | None]:
    if not is_session_id(sid):
        return None  # never reaches a key
    try:
        touched = yield TouchSession(_key(ctx, sid), config.idle, config.roll)
    except SerializationError as exc:
        invalid(ctx, str(exc))
        return None
    return None if touched is None else decode(ctx, config, sid, touched)


def _save(
    ctx: Context, config: StoreConfig, record: SessionRecord | None, data: Mapping[str, Any]
) -> Flow[SessionRecord | None]:
    encoded = encode(data, config.max_bytes)
    if record is None:
        return (yield from _create(ctx, config, data, encoded))
    if not encoded:  # emptied: the session ends
        yield Delete([_key(ctx, record.sid)])
        return None
    previous = record.encoded
    changed = sealed(config, record.sid, {k: v for k, v in encoded.items() if previous.get(k) != v})
    removed = [DATA + k for k in previous if k not in encoded]
    if changed or removed:
        saved = yield SaveSession(
            _key(ctx, record.sid), record.sid, False, config.idle, config.lifetime, changed, removed
        )
        if saved != "saved":
            return None
    # The load's metadata and rolling verdict stay with the record for this request.
    return replace(record, data=dict(data), encoded=encoded)


def _create(
    ctx: Context, config: StoreConfig, data: Mapping[str, Any], encoded: dict[str, bytes]
) -> Flow[SessionRecord | None]:
    if not encoded:
        return None  # nothing to keep: no record, no id
    for _ in range(_ISSUE_ATTEMPTS):
        sid = new_session_id()
        fields = sealed(config, sid, encoded)  # the id is part of what each value is bound to
        saved = yield SaveSession(
            _key(ctx, sid), sid, True, config.idle, config.lifetime, fields, ()
        )
        if saved == "saved":
            return SessionRecord(sid, dict(data), encoded)
    raise SessionError("could not issue a session id")  # 2**-256: a broken RNG, not luck


def _regenerate(
    ctx: Context, config: StoreConfig, record: SessionRecord | None, data: Mapping[str, Any]
) -> Flow[SessionRecord | None]:
    fresh = yield from _create(ctx, config, data, encode(data, config.max_bytes))
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
      ``cachekit-redis[encryption]``); newest key first, each 32 bytes raw or URL-safe base64
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
        self.config = StoreConfig(
            self._idle or DEFAULT_IDLE, self._lifetime or DEFAULT_LIFETIME, max_bytes, 0.0, True,
            cipher,
        )  # fmt: skip
        self._bound_to: StoreConfig | None = None
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
        b = self.cache.bound()
        return await b.aio.drive(_load(b.ctx, self.config, sid))

    async def save(
        self, record: SessionRecord | None, data: Mapping[str, Any]
    ) -> SessionRecord | None:
        """Store ``data`` as the new state of ``record`` (``None``: a new session).

        Sends only the keys that changed. Returns the record now stored, or ``None`` when
        there is none: ``data`` was empty (the record is deleted) or the record was gone.
        """
        b = self.cache.bound()
        return await b.aio.drive(_save(b.ctx, self.config, record, data))

    async def regenerate(
        self, record: SessionRecord | None, data: Mapping[str, Any]
    ) -> SessionRecord | None:
        """Move ``data`` to a new id and delete ``record`` (login, privilege change)."""
        b = self.cache.bound()
        return await b.aio.drive(_regenerate(b.ctx, self.config, record, data))

    async def delete(self, sid: str) -> None:
        """End the session ``sid`` on the server."""
        if is_session_id(sid):
            b = self.cache.bound()
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
        b = self._store.cache.bound()
        return b.sync.drive(_load(b.ctx, self._store.config, sid))

    def save(self, record: SessionRecord | None, data: Mapping[str, Any]) -> SessionRecord | None:
        """Store ``data`` as the new state of ``record`` (``None``: a new session)."""
        b = self._store.cache.bound()
        return b.sync.drive(_save(b.ctx, self._store.config, record, data))

    def regenerate(
        self, record: SessionRecord | None, data: Mapping[str, Any]
    ) -> SessionRecord | None:
        """Move ``data`` to a new id and delete ``record``."""
        b = self._store.cache.bound()
        return b.sync.drive(_regenerate(b.ctx, self._store.config, record, data))

    def delete(self, sid: str) -> None:
        """End the session ``sid`` on the server."""
        if is_session_id(sid):
            b = self._store.cache.bound()
            b.sync.drive(_delete(b.ctx, sid))
