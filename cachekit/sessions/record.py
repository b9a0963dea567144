"""A session record's format: JSON values, sealed when encrypting, and its metadata.

A record is a Redis hash (see :mod:`cachekit.backends.ops.records`): meta fields that start
with ``@`` and one ``d:<key>`` field per session key holding the value's JSON - sealed
with AES-256-GCM when the store encrypts (:mod:`.crypto`). This module turns a session's
data into those fields and back, checking every field; anything that is not a record of
ours (another id, a value that is not JSON or does not decrypt) is counted and read as
no session.

Usage::

    fields = sealed(config, sid, encode(data, config.max_bytes))
    record = decode(ctx, config, sid, touched)      # a TouchSession answer
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from cachekit.backends.ops import ms
from cachekit.backends.ops.records import CREATED, DEADLINE, SID, Touched
from cachekit.exceptions import SessionError
from cachekit.flow.context import Context
from cachekit.sessions.crypto import SessionCipher

__all__ = [
    "DATA",
    "SessionMetadata",
    "SessionRecord",
    "StoreConfig",
    "decode",
    "encode",
    "invalid",
    "sealed",
]

DATA = "d:"  # field prefix of session keys; meta fields start with "@"
_JSON = orjson.OPT_NON_STR_KEYS  # {42: 1} is stored as {"42": 1}, as json.dumps does


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
class StoreConfig:
    """A store's settings as its flows read them (timeouts in seconds)."""

    idle: float
    lifetime: float
    max_bytes: int
    roll: float = 0.0  # the rolling interval; 0: the cookie is never re-sent
    bounded: bool = True  # False: no absolute limit (``lifetime`` is UNBOUNDED)
    cipher: SessionCipher | None = None


def encode(data: Mapping[str, Any], max_bytes: int) -> dict[str, bytes]:
    """Each value's JSON; :class:`SessionError` for what cannot be stored or is too large."""
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


def decode(ctx: Context, config: StoreConfig, sid: str, touched: Touched) -> SessionRecord | None:
    """The record a :class:`TouchSession` found; ``None`` (counted) if it is not one of ours."""
    fields = touched.fields
    # The record must say it belongs to the id asked for (the redundant check that keeps
    # one user's session from ever being served for another id).
    if fields.get(SID) != sid.encode():
        invalid(ctx, "a session record that names another id")
        return None
    if not fields.get(DEADLINE, b"").isdigit():  # Lua's tonumber took what int() would not
        invalid(ctx, "a session record whose deadline is not a time")
        return None
    cipher = config.cipher
    data, encoded = {}, {}
    for name, raw in fields.items():
        if not name.startswith(DATA):
            continue
        key, stale = name[2:], False
        if cipher is not None:
            opened = cipher.open(sid, key, raw)
            if opened is None:
                invalid(ctx, "a session value that does not decrypt")
                return None
            raw, stale = opened
        try:
            data[key] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            invalid(ctx, "a session record that is not JSON")
            return None
        # A value sealed with an older key compares unequal, so the next save re-seals it.
        encoded[key] = b"" if stale else raw
    return SessionRecord(sid, data, encoded, _metadata(config, touched), touched.rolled)


def _metadata(config: StoreConfig, touched: Touched) -> SessionMetadata:
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


def invalid(ctx: Context, what: str) -> None:
    """Count and log (once per kind) a record that was read as no session."""
    ctx.stats.incr("invalid_payloads")
    ctx.log.warning(("session", what), "cachekit: ignored %s", what)


def sealed(config: StoreConfig, sid: str, fields: Mapping[str, bytes]) -> dict[str, bytes]:
    """``fields`` (session keys to JSON) as hash fields, each value sealed if encrypting."""
    cipher = config.cipher
    if cipher is None:
        return {DATA + k: v for k, v in fields.items()}
    return {DATA + k: cipher.seal(sid, k, v) for k, v in fields.items()}
