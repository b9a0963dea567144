"""Server-side sessions (issue 7): ``SessionMiddleware``, ``RedisSessionStore``, ``Session``.

Covered: strict server-issued ids (a forged id is never adopted, no key is made under
it); lazy loading and writing back only what changed (counted in script calls on a
private server); the cookie's flags and options; ``Vary: Cookie`` and
``Cache-Control: no-store``; fixation (regeneration deletes the old record); logout;
idle and absolute timeouts on the fake clock and on real Redis; hostile records and
hostile cookies (10,000 requests that must create nothing, a hypothesis fuzz of the raw
Cookie header); JSON only; 5xx and Redis-down behaviour; websocket and lifespan scopes;
per-key merging of concurrent writes within one process and across worker processes
(``tests/workers/session_worker.py``), and a logout that no racing write can undo.

Apps are driven in-process through httpx's ASGI transport, or through a bare ASGI call
when the test needs headers httpx would not send (arbitrary bytes).
"""

from __future__ import annotations

import asyncio
import base64
import json
import pickle
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from typing import Any, cast

import httpx
import pytest
import redis
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Message, Scope
from starlette.websockets import WebSocket

import cachekit.sessions.store as store_module
from cachekit import Cache
from cachekit.exceptions import ConfigurationError, SessionError
from cachekit.sessions import (
    RedisSessionStore,
    Session,
    SessionMiddleware,
    is_session_id,
    load_session,
    new_session_id,
    regenerate_session,
)
from cachekit.testing import FakeClock
from tests.sessions.support import (
    ID_CHARS,
    NAME,
    PATIENT,
    RecordingStore,
    Reply,
    asgi_get,
    body,
    client_for,
    cookie_parts,
    expired_only,
    first_well_formed,
    forged_id,
    get,
    hgetall,
    issued,
    keys_under,
    live_fields,
    make_app,
    plant,
    script_calls,
    server_ms,
    session_key,
    set_cookies,
    the_session,
    vary,
)
from tests.support.fleet import run_fleet
from tests.support.servers import PrivateServer

# ------------------------------------------------------------------- 1. the store itself


def test_new_session_ids_are_256_random_bits_from_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ids come from secrets.token_urlsafe(32): 43 URL-safe characters, 32 random bytes, unique."""
    calls: list[int] = []
    real = secrets.token_urlsafe

    def spy(nbytes: int | None = None) -> str:
        calls.append(cast(int, nbytes))
        return real(nbytes)

    monkeypatch.setattr(secrets, "token_urlsafe", spy)
    ids = {new_session_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert calls == [32] * 2000
    for sid in list(ids)[:50]:
        assert is_session_id(sid)
        assert len(base64.urlsafe_b64decode(sid + "=")) == 32


@pytest.mark.parametrize(
    "value",
    ["", "a", "A" * 42, "A" * 44, "A" * 42 + "=", "A" * 42 + ".", "A" * 42 + "\n",
     " " + "A" * 42, "A" * 42 + "é", "../" * 14 + "A", "A" * 42 + "*", "A" * 42 + "}"],
)  # fmt: skip
def test_is_session_id_rejects_every_other_form(value: str) -> None:
    """Only exactly 43 characters of [A-Za-z0-9_-] are a session id."""
    assert not is_session_id(value)


async def test_store_create_load_update_delete(clocked_cache: Cache) -> None:
    """save(None) issues a new id; load returns the data; an update changes and removes keys."""
    store = RedisSessionStore(clocked_cache)
    record = await store.save(None, {"user": "alice", "cart": [1, 2], "n": None})
    assert record is not None
    assert is_session_id(record.sid)
    loaded = await store.load(record.sid)
    assert loaded is not None
    assert loaded.data == {"user": "alice", "cart": [1, 2], "n": None}
    updated = await store.save(loaded, {"user": "bob", "cart": [1, 2], "new": {"a": 1.5}})
    assert updated is not None
    assert updated.sid == record.sid
    again = await store.load(record.sid)
    assert again is not None
    assert again.data == {"user": "bob", "cart": [1, 2], "new": {"a": 1.5}}
    await store.delete(record.sid)
    assert await store.load(record.sid) is None


async def test_store_sync_twins(clocked_cache: Cache) -> None:
    """store.sync.save/load/regenerate/delete behave as their async twins."""
    store = RedisSessionStore(clocked_cache)
    record = store.sync.save(None, {"a": 1})
    assert record is not None
    loaded = store.sync.load(record.sid)
    assert loaded is not None
    assert loaded.data == {"a": 1}
    changed = store.sync.save(loaded, {"a": 1, "b": 2})
    assert changed is not None
    fresh = store.sync.regenerate(changed, changed.data)
    assert fresh is not None
    assert fresh.sid != record.sid
    assert store.sync.load(record.sid) is None
    assert (await store.load(fresh.sid)) is not None
    reloaded = store.sync.load(fresh.sid)
    assert reloaded is not None
    assert reloaded.data == {"a": 1, "b": 2}
    store.sync.delete(fresh.sid)
    assert store.sync.load(fresh.sid) is None
    assert store.sync.save(None, {}) is None


async def test_store_empty_session_is_never_stored(
    redis_cache: Cache, raw_redis: redis.Redis, prefix: str
) -> None:
    """Saving an empty new session issues no id and writes no key."""
    store = RedisSessionStore(redis_cache)
    assert await store.save(None, {}) is None
    assert await store.regenerate(None, {}) is None
    assert keys_under(raw_redis, prefix) == []


async def test_store_emptied_session_deletes_its_record(clocked_cache: Cache) -> None:
    """Saving a record as empty ends the session: the record is deleted."""
    store = RedisSessionStore(clocked_cache)
    record = await store.save(None, {"a": 1})
    assert record is not None
    assert await store.save(record, {}) is None
    assert await store.load(record.sid) is None


async def test_store_save_never_resurrects_a_deleted_record(clocked_cache: Cache) -> None:
    """An update of a record deleted meanwhile returns None and writes nothing."""
    store = RedisSessionStore(clocked_cache)
    record = await store.save(None, {"a": 1})
    assert record is not None
    await store.delete(record.sid)
    assert await store.save(record, {"a": 1, "b": 2}) is None
    assert await store.load(record.sid) is None


async def test_store_regenerate_moves_data_and_deletes_old(clocked_cache: Cache) -> None:
    """regenerate() puts the data under a new id and the old id no longer loads."""
    store = RedisSessionStore(clocked_cache)
    old = await store.save(None, {"cart": ["sku-1"]})
    assert old is not None
    new = await store.regenerate(old, {"cart": ["sku-1"], "user": "alice"})
    assert new is not None
    assert new.sid != old.sid
    assert is_session_id(new.sid)
    assert await store.load(old.sid) is None
    loaded = await store.load(new.sid)
    assert loaded is not None
    assert loaded.data == {"cart": ["sku-1"], "user": "alice"}


async def test_store_regenerate_with_empty_data(clocked_cache: Cache) -> None:
    """regenerate() of an empty session deletes the old record and issues no new id."""
    store = RedisSessionStore(clocked_cache)
    old = await store.save(None, {"a": 1})
    assert old is not None
    assert await store.regenerate(old, {}) is None
    assert await store.load(old.sid) is None


async def test_store_malformed_ids_never_reach_redis(
    store: RedisSessionStore, raw_redis: redis.Redis, prefix: str
) -> None:
    """load/delete of a malformed id answer None/nothing without touching Redis keys."""
    for sid in ["", "*", f"{prefix}:*", "A" * 44, "A" * 42 + "}", "x" * 100_000, "\x00" * 43]:
        assert await store.load(sid) is None
        assert store.sync.load(sid) is None
        await store.delete(sid)
        store.sync.delete(sid)
    assert keys_under(raw_redis, prefix) == []


async def test_store_unknown_well_formed_id_loads_nothing_and_creates_nothing(
    store: RedisSessionStore, raw_redis: redis.Redis, prefix: str
) -> None:
    """A well-formed id with no record loads as None and leaves no key behind."""
    assert await store.load(forged_id()) is None
    assert keys_under(raw_redis, prefix) == []


async def test_store_never_takes_over_an_existing_key_when_issuing(
    store: RedisSessionStore,
    raw_redis: redis.Redis,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issuing an id whose key exists draws another id and leaves that record alone."""
    taken = new_session_id()
    planted = plant(raw_redis, prefix, taken, {"@sid": taken.encode(), "d:user": b'"victim"'})
    fresh = new_session_id()
    draws = iter([taken, taken, fresh])
    monkeypatch.setattr(store_module, "new_session_id", lambda: next(draws))
    record = await store.save(None, {"user": "mallory"})
    assert record is not None
    assert record.sid == fresh
    assert hgetall(raw_redis, planted) == {b"@sid": taken.encode(), b"d:user": b'"victim"'}
    monkeypatch.setattr(store_module, "new_session_id", lambda: taken)
    with pytest.raises(SessionError, match="could not issue"):
        await store.save(None, {"user": "mallory"})
    assert hgetall(raw_redis, planted) == {b"@sid": taken.encode(), b"d:user": b'"victim"'}


async def test_store_is_json_only(clocked_cache: Cache) -> None:
    """JSON values round-trip (tuples come back as lists); anything else is a SessionError."""
    store = RedisSessionStore(clocked_cache)
    record = await store.save(None, {"t": (1, 2), "s": "é\u2603", "f": 1.25, "b": False})
    assert record is not None
    loaded = await store.load(record.sid)
    assert loaded is not None
    assert loaded.data == {"t": [1, 2], "s": "é\u2603", "f": 1.25, "b": False}
    for bad in ({1, 2}, object(), b"bytes", 2**70, complex(1, 2)):
        with pytest.raises(SessionError):
            await store.save(loaded, {**loaded.data, "bad": bad})
    with pytest.raises(SessionError):
        await store.save(None, {cast(str, 1): "non-string key"})
    assert (await store.load(record.sid)) == loaded  # nothing of the refused saves landed


async def test_store_max_bytes(clocked_cache: Cache) -> None:
    """A session larger than max_bytes raises SessionError and leaves the record as it was."""
    store = RedisSessionStore(clocked_cache, max_bytes=100)
    record = await store.save(None, {"a": "x" * 50})
    assert record is not None
    with pytest.raises(SessionError, match="max_bytes"):
        await store.save(record, {"a": "x" * 50, "b": "y" * 60})
    with pytest.raises(SessionError, match="max_bytes"):
        await store.save(None, {"big": "z" * 200})
    loaded = await store.load(record.sid)
    assert loaded is not None
    assert loaded.data == {"a": "x" * 50}


async def test_store_max_bytes_counts_bytes_of_key_names(clocked_cache: Cache) -> None:
    """max_bytes is a size in bytes: a 20-byte key name plus its value exceeds max_bytes=20."""
    store = RedisSessionStore(clocked_cache, max_bytes=20)
    with pytest.raises(SessionError):
        await store.save(None, {"é" * 10: 1})  # 20 bytes of name + 1 byte of JSON


async def test_store_unencodable_key_name_is_a_session_error(clocked_cache: Cache) -> None:
    """A key name that cannot be stored (a lone surrogate) raises SessionError like a bad value."""
    store = RedisSessionStore(clocked_cache)
    with pytest.raises(SessionError):
        await store.save(None, {"\udcff": 1})


async def test_store_key_names_cannot_reach_the_meta_fields(clocked_cache: Cache) -> None:
    """Session keys named like the record's meta fields are plain data; the record stays intact."""
    store = RedisSessionStore(clocked_cache)
    data = {"@sid": "someone-else", "@deadline": 0, "d:x": 1, "": "empty", "{}": "braces"}
    record = await store.save(None, data)
    assert record is not None
    loaded = await store.load(record.sid)
    assert loaded is not None
    assert loaded.data == data


@pytest.mark.parametrize(
    "options",
    [{"idle_timeout": 0}, {"idle_timeout": -5}, {"absolute_timeout": 0},
     {"absolute_timeout": timedelta(0)}, {"max_bytes": 0}, {"max_bytes": -1}],
)  # fmt: skip
def test_store_rejects_bad_configuration(memory_cache: Cache, options: dict[str, Any]) -> None:
    """Non-positive timeouts or max_bytes raise ConfigurationError."""
    with pytest.raises(ConfigurationError):
        RedisSessionStore(memory_cache, **options)


def test_store_accepts_timedeltas(memory_cache: Cache) -> None:
    """Timeouts may be timedeltas."""
    store = RedisSessionStore(
        memory_cache, idle_timeout=timedelta(minutes=5), absolute_timeout=timedelta(hours=1)
    )
    assert (store.config.idle, store.config.lifetime) == (300.0, 3600.0)


# ------------------------------------------------------------- 2. records on real Redis


async def test_record_layout_on_redis(
    store: RedisSessionStore, raw_redis: redis.Redis, prefix: str
) -> None:
    """A record is a hash in its own namespace: @sid, @deadline, the server-clock stamps
    @created and @cookie (the cookie's last send), one JSON field per key."""
    before = server_ms(raw_redis)
    record = await store.save(None, {"user": "alice", "n": 3})
    assert record is not None
    assert keys_under(raw_redis, prefix) == [session_key(prefix, record.sid).encode()]
    fields = hgetall(raw_redis, session_key(prefix, record.sid))
    assert fields.pop(b"@sid") == record.sid.encode()
    deadline = int(fields.pop(b"@deadline"))
    assert before + 8 * 3600 * 1000 <= deadline <= server_ms(raw_redis) + 8 * 3600 * 1000
    created = int(fields.pop(b"@created"))
    assert before <= created <= server_ms(raw_redis)
    assert int(fields.pop(b"@cookie")) == created
    assert fields == {b"d:user": b'"alice"', b"d:n": b"3"}
    ttl = raw_redis.pttl(session_key(prefix, record.sid))
    assert 0 < ttl <= 1800 * 1000


async def test_record_naming_another_id_is_no_session(
    redis_cache: Cache, store: RedisSessionStore, raw_redis: redis.Redis, prefix: str
) -> None:
    """A record under id A whose @sid says B is never served; counted as an invalid payload."""
    a, b = new_session_id(), new_session_id()
    fields = live_fields(raw_redis, prefix, b)
    fields[b"d:user"] = b'"admin"'
    plant(raw_redis, prefix, a, {k.decode(): v for k, v in fields.items()})
    before = redis_cache.stats()["invalid_payloads"]
    assert await store.load(a) is None
    assert redis_cache.stats()["invalid_payloads"] == before + 1
    async with client_for(make_app(store)) as client:
        response = await get(client, "/read", a)
        assert response.status_code == 200
        assert body(response)["data"] == {}
        assert set_cookies(response) == []
        written = await get(client, "/set", a, key="k", value="1")
        new = issued(written)
        assert new not in (a, b)
    assert hgetall(raw_redis, session_key(prefix, a))[b"d:user"] == b'"admin"'  # untouched


@pytest.mark.parametrize(
    "payload",
    [pickle.dumps({"user": "admin"}), b"\xff\xfe\x00", b"{not json", b"", b"[" * 5000],
    ids=["pickle", "non-utf8", "broken", "empty", "too-deep"],
)
async def test_record_with_non_json_value_is_no_session(
    redis_cache: Cache,
    store: RedisSessionStore,
    raw_redis: redis.Redis,
    prefix: str,
    payload: bytes,
) -> None:
    """A record holding a value that is not JSON (pickle, junk) reads as no session, no 5xx."""
    sid = new_session_id()
    fields = {k.decode(): v for k, v in live_fields(raw_redis, prefix, sid).items()}
    plant(raw_redis, prefix, sid, {**fields, "d:ok": b"1", "d:evil": payload})
    before = redis_cache.stats()["invalid_payloads"]
    assert await store.load(sid) is None
    assert redis_cache.stats()["invalid_payloads"] == before + 1
    async with client_for(make_app(store)) as client:
        for path in ("/read", "/read-sync"):
            response = await get(client, path, sid)
            assert response.status_code == 200
            assert body(response)["data"] == {}


async def test_record_without_deadline_or_of_wrong_type_is_no_session(
    store: RedisSessionStore, raw_redis: redis.Redis, prefix: str
) -> None:
    """A hash without @deadline, one with a junk @deadline, or a plain string: no session, 200."""
    no_deadline, junk_deadline, string_key = new_session_id(), new_session_id(), new_session_id()
    plant(raw_redis, prefix, no_deadline, {"@sid": no_deadline.encode(), "d:a": b"1"})
    plant(raw_redis, prefix, junk_deadline, {"@sid": junk_deadline.encode(), "@deadline": b"x"})
    raw_redis.set(session_key(prefix, string_key), b"planted", ex=60)
    assert await store.load(no_deadline) is None
    assert await store.load(junk_deadline) is None
    async with client_for(make_app(store)) as client:
        for sid in (no_deadline, junk_deadline, string_key):
            response = await get(client, "/read", sid)
            assert response.status_code == 200
            assert body(response)["data"] == {}
            assert set_cookies(response) == []
    assert raw_redis.get(session_key(prefix, string_key)) == b"planted"


async def test_record_with_non_utf8_field_name_is_no_session(
    store: RedisSessionStore, raw_redis: redis.Redis, prefix: str
) -> None:
    """A record with a field name that is not UTF-8 reads as no session instead of raising."""
    sid = new_session_id()
    key = session_key(prefix, sid)
    raw_redis.hset(key, mapping=cast(Any, {**live_fields(raw_redis, prefix, sid), b"d:\xff": b"1"}))
    raw_redis.expire(key, 60)
    assert await store.load(sid) is None


# ----------------------------------------------------------------------- 3. timeouts


async def test_idle_timeout_slides_on_the_fake_clock(memory_cache: Cache, clock: FakeClock) -> None:
    """Each load restarts the idle timeout; a session left idle longer than it ends."""
    store = RedisSessionStore(memory_cache, idle_timeout=10, absolute_timeout=1000)
    record = await store.save(None, {"a": 1})
    assert record is not None
    for _ in range(5):  # 45 s in all, never 10 s idle
        clock.advance(9)
        assert await store.load(record.sid) is not None
    clock.advance(9)
    changed = await store.save(record, {"a": 2})  # a save restarts it too
    assert changed is not None
    clock.advance(9)
    assert await store.load(record.sid) is not None
    clock.advance(10.5)
    assert await store.load(record.sid) is None
    assert await store.save(changed, {"a": 3}) is None  # and it does not come back


async def test_absolute_lifetime_on_the_fake_clock(memory_cache: Cache, clock: FakeClock) -> None:
    """A session ends at its absolute lifetime however busy it is, and no save revives it."""
    store = RedisSessionStore(memory_cache, idle_timeout=10, absolute_timeout=25)
    record = await store.save(None, {"a": 1})
    assert record is not None
    clock.advance(8)
    assert await store.load(record.sid) is not None
    clock.advance(8)
    current = await store.save(record, {"a": 2})
    assert current is not None
    clock.advance(8)  # 24 s: still alive
    assert await store.load(record.sid) is not None
    clock.advance(2)  # 26 s: past the lifetime, though used 2 s ago
    assert await store.save(current, {"a": 3}) is None
    assert await store.load(record.sid) is None


async def test_expired_session_through_the_middleware(
    memory_cache: Cache, clock: FakeClock
) -> None:
    """After the idle timeout the cookie's id reads as empty and a write issues a new id."""
    store = RedisSessionStore(memory_cache, idle_timeout=10, absolute_timeout=1000)
    async with client_for(make_app(store)) as client:
        sid = issued(await get(client, "/set", key="user", value='"alice"'))
        clock.advance(9)
        assert body(await get(client, "/read", sid))["data"] == {"user": "alice"}
        clock.advance(9)  # 18 s after creation, 9 s after the last read
        assert body(await get(client, "/read-sync", sid))["data"] == {"user": "alice"}
        clock.advance(11)
        expired = await get(client, "/read", sid)
        assert body(expired)["data"] == {}
        assert set_cookies(expired) == []
        new = issued(await get(client, "/set", sid, key="user", value='"mallory"'))
        assert new != sid
        assert await store.load(sid) is None


async def test_redis_load_restarts_the_idle_ttl(
    redis_cache: Cache, raw_redis: redis.Redis, prefix: str
) -> None:
    """On Redis a load sets the record's TTL back to the idle timeout (the sliding part)."""
    store = RedisSessionStore(redis_cache, idle_timeout=60, absolute_timeout=3600)
    record = await store.save(None, {"a": 1})
    assert record is not None
    key = session_key(prefix, record.sid)
    raw_redis.pexpire(key, 5000)
    assert raw_redis.pttl(key) <= 5000
    assert await store.load(record.sid) is not None
    assert 5000 < raw_redis.pttl(key) <= 60_000
    raw_redis.pexpire(key, 5000)
    assert store.sync.load(record.sid) is not None
    assert 5000 < raw_redis.pttl(key) <= 60_000


async def test_redis_ttl_is_capped_by_the_absolute_deadline(
    redis_cache: Cache, raw_redis: redis.Redis, prefix: str
) -> None:
    """A session whose lifetime is shorter than its idle timeout gets the lifetime as TTL."""
    store = RedisSessionStore(redis_cache, idle_timeout=600, absolute_timeout=5)
    record = await store.save(None, {"a": 1})
    assert record is not None
    assert 0 < raw_redis.pttl(session_key(prefix, record.sid)) <= 5000
    assert await store.load(record.sid) is not None
    assert 0 < raw_redis.pttl(session_key(prefix, record.sid)) <= 5000


async def test_redis_deadline_is_enforced_by_the_server_not_the_ttl(
    store: RedisSessionStore, raw_redis: redis.Redis, prefix: str
) -> None:
    """A record past its @deadline is deleted by load and by save even while its TTL runs."""
    for op in ("load", "save"):
        record = await store.save(None, {"a": 1})
        assert record is not None
        key = session_key(prefix, record.sid)
        raw_redis.hset(key, "@deadline", str(server_ms(raw_redis) - 1))
        raw_redis.expire(key, 600)
        if op == "load":
            assert await store.load(record.sid) is None
        else:
            assert await store.save(record, {"a": 2}) is None
        assert raw_redis.exists(key) == 0


async def test_redis_idle_and_absolute_timeouts_with_real_time(
    redis_cache: Cache, raw_redis: redis.Redis, prefix: str
) -> None:
    """With short timeouts on real Redis, an idle session and an old one both end."""
    idle = RedisSessionStore(redis_cache, idle_timeout=0.3, absolute_timeout=600)
    short = RedisSessionStore(redis_cache, idle_timeout=600, absolute_timeout=0.3)
    a = await idle.save(None, {"a": 1})
    b = await short.save(None, {"b": 1})
    assert a is not None
    assert b is not None
    await asyncio.sleep(0.8)
    assert await idle.load(a.sid) is None
    assert await short.load(b.sid) is None
    assert await idle.save(a, {"a": 2}) is None
    assert keys_under(raw_redis, prefix) == []


# ------------------------------------------------------- 4. the cookie and its headers


async def test_first_write_sets_a_strict_cookie(store: RedisSessionStore) -> None:
    """The first write sets session=<new id>; Path=/; HttpOnly; SameSite=Lax, no-store, Vary."""
    async with client_for(make_app(store)) as client:
        response = await get(client, "/set", key="user", value='"alice"')
    assert response.status_code == 200
    [header] = set_cookies(response)
    name, value, attrs = cookie_parts(header)
    assert name == NAME
    assert is_session_id(value)
    assert attrs == {"path": "/", "httponly": "", "samesite": "Lax"}  # no Secure on http
    assert response.headers["cache-control"] == "no-store"
    assert vary(response) == ["cookie"]
    assert body(response)["id"] is None  # the body was rendered before the save issued it
    loaded = await store.load(value)
    assert loaded is not None
    assert loaded.data == {"user": "alice"}


@pytest.mark.parametrize(
    ("base_url", "https_only", "secure"),
    [
        ("http://testserver", None, False),
        ("https://testserver", None, True),
        ("http://testserver", True, True),
        ("https://testserver", True, True),
        ("https://testserver", False, False),
        ("http://testserver", False, False),
    ],
)
async def test_secure_flag(
    store: RedisSessionStore, base_url: str, https_only: bool | None, secure: bool
) -> None:
    """Secure follows the request's scheme by default; https_only=True/False forces it."""
    app = make_app(store, https_only=https_only)
    async with client_for(app, base_url=base_url) as client:
        sid = issued(await get(client, "/set", key="a", value="1"))
        expired = await get(client, "/logout", sid)
        made = await get(client, "/set", key="a", value="1")
    for response in (made, expired):
        [header] = set_cookies(response)
        assert ("secure" in cookie_parts(header)[2]) is secure


async def test_secure_flag_on_wss_scheme(store: RedisSessionStore) -> None:
    """The cookie builder treats wss like https."""
    middleware = SessionMiddleware(make_app(store), store)
    assert cookie_parts(middleware.cookie({"scheme": "wss"}, "x"))[2].get("secure") == ""
    assert "secure" not in cookie_parts(middleware.cookie({"scheme": "ws"}, "x"))[2]


async def test_cookie_options(store: RedisSessionStore) -> None:
    """cookie_name, path, domain, same_site and max_age reach the Set-Cookie header."""
    app = make_app(
        store,
        cookie_name="sid",
        path="/shop",
        domain="example.com",
        same_site="strict",
        max_age=3600,
    )
    async with client_for(app) as client:
        response = await get(client, "/set", key="a", value="1")
        [header] = set_cookies(response)
        name, sid, attrs = cookie_parts(header)
        assert name == "sid"
        assert is_session_id(sid)
        assert attrs == {
            "path": "/shop",
            "domain": "example.com",
            "httponly": "",
            "samesite": "Strict",
            "max-age": "3600",
        }
        # The id is read from that cookie name only.
        assert body(await get(client, "/read", cookie=f"sid={sid}"))["data"] == {"a": 1}
        assert body(await get(client, "/read", cookie=f"session={sid}"))["data"] == {}


async def test_same_site_none_needs_and_gets_secure(store: RedisSessionStore) -> None:
    """same_site='none' with https_only=True sets SameSite=None; Secure even over http."""
    async with client_for(make_app(store, same_site="none", https_only=True)) as client:
        [header] = set_cookies(await get(client, "/set", key="a", value="1"))
    attrs = cookie_parts(header)[2]
    assert attrs["samesite"] == "None"
    assert "secure" in attrs


@pytest.mark.parametrize(
    "options",
    [
        {"same_site": "none"},
        {"same_site": "none", "https_only": False},
        {"same_site": "bogus"},
        {"same_site": "Lax"},
        {"cookie_name": "bad name"},
        {"cookie_name": "a=b"},
        {"cookie_name": ""},
        {"cookie_name": "sess;ion"},
        {"cookie_name": "séssion"},
        {"cookie_name": "s\r\nSet-Cookie: x"},
        {"path": "/a;b"},
        {"path": "/a\r\nX: y"},
        {"domain": "example.com; Secure"},
        {"domain": "ex\x00ample.com"},
    ],
)
def test_bad_cookie_options_raise(memory_cache: Cache, options: dict[str, Any]) -> None:
    """Unsafe or inconsistent cookie options raise ConfigurationError at construction."""
    store = RedisSessionStore(memory_cache)
    with pytest.raises(ConfigurationError):
        SessionMiddleware(Starlette(), store, **options)


async def test_vary_cookie_only_when_the_session_was_accessed(store: RedisSessionStore) -> None:
    """Responses that looked at the session vary by Cookie; the others carry no session headers."""
    record = await store.save(None, {"user": "alice"})
    assert record is not None
    async with client_for(make_app(store)) as client:
        for sid in (None, record.sid, forged_id()):
            untouched = await get(client, "/plain", sid)
            assert "vary" not in untouched.headers
            assert "cache-control" not in untouched.headers
            assert set_cookies(untouched) == []
            for path in ("/read", "/read-sync", "/contains"):
                touched = await get(client, path, sid)
                assert vary(touched) == ["cookie"], path
                assert set_cookies(touched) == []
                assert "cache-control" not in touched.headers
        assert (await get(client, "/contains", record.sid)).text == "True"  # `in` reads it


async def test_vary_and_no_store_merge_with_the_apps_headers(store: RedisSessionStore) -> None:
    """Vary: Cookie joins the app's Vary; a response setting the cookie gets no-store instead."""
    async with client_for(make_app(store)) as client:
        read = await get(client, "/cached")
        assert vary(read) == ["accept-encoding", "cookie"]
        assert read.headers["cache-control"] == "public, max-age=60"
        written = await get(client, "/cached", write="1")
        sid = issued(written)
        assert written.headers.get_list("cache-control") == ["no-store"]
        assert vary(written) == ["accept-encoding", "cookie"]
        rewritten = await get(client, "/cached", sid, write="1")  # unchanged data: no cookie
        assert set_cookies(rewritten) == []
        assert rewritten.headers["cache-control"] == "public, max-age=60"


# -------------------------------------------------------------- 5. strict ids, lifecycle


async def test_strict_ids_forged_id_gets_a_new_server_id(
    store: RedisSessionStore, raw_redis: redis.Redis, prefix: str
) -> None:
    """A forged well-formed id is never adopted: a write gets a new id, no key under the forged."""
    forged = forged_id()
    async with client_for(make_app(store)) as client:
        read = await get(client, "/read", forged)
        assert body(read)["data"] == {}
        assert body(read)["id"] is None
        assert set_cookies(read) == []
        written = await get(client, "/set", forged, key="user", value='"mallory"')
        sid = issued(written)
        assert sid != forged
        assert is_session_id(sid)
        logout = await get(client, "/logout", forged)
        assert expired_only(set_cookies(logout))  # the forged cookie is cleared, no state
    assert raw_redis.exists(session_key(prefix, forged)) == 0
    assert keys_under(raw_redis, prefix) == [session_key(prefix, sid).encode()]


async def test_reads_and_non_writes_create_nothing(
    store: RedisSessionStore, raw_redis: redis.Redis, prefix: str
) -> None:
    """Requests that never write (reads, logout, regenerate, a failed delete): no key, no cookie."""
    async with client_for(make_app(store), raise_app_exceptions=False) as client:
        for sid in (None, forged_id()):
            for path, params in [
                ("/read", {}),
                ("/read-sync", {}),
                ("/contains", {}),
                ("/logout", {}),
                ("/regenerate", {}),
                ("/delete", {"key": "missing"}),  # KeyError: a 500 from the app
            ]:
                response = await get(client, path, sid, **params)
                if path == "/logout" and sid is not None:  # a logout clears whatever cookie came
                    assert expired_only(set_cookies(response)), path
                else:
                    assert set_cookies(response) == [], path
    assert keys_under(raw_redis, prefix) == []


async def test_the_record_is_loaded_only_when_read_and_written_only_when_changed(
    private_redis: PrivateServer,
) -> None:
    """Script calls per request: none 0, a read 1 (even twice), a same-value write 1, a change 2."""
    cache = Cache.from_url(private_redis.url, prefix="counted", **PATIENT)
    store = RedisSessionStore(cache)
    server = redis.Redis.from_url(private_redis.url)
    try:

        async def twice(request: Request) -> Response:
            session = await load_session(request)
            await load_session(request)
            return PlainTextResponse(f"{session.get('a')}{len(the_session(request))}")

        app = make_app(store, extra=[Route("/twice", twice)])
        async with client_for(app) as client:
            sid = issued(await get(client, "/set", key="a", value="1"))
            await get(client, "/read", sid)  # every script is loaded by now

            async def calls(path: str, **params: str) -> int:
                before = script_calls(server)
                response = await get(client, path, sid, **params)
                assert response.status_code == 200
                return script_calls(server) - before

            assert await calls("/plain") == 0
            assert await calls("/read") == 1
            assert await calls("/read-sync") == 1
            assert await calls("/twice") == 1
            assert await calls("/set", key="a", value="1") == 1  # same value: nothing to write
            assert await calls("/set", key="a", value="2") == 2
    finally:
        server.close()
        await cache.close()


async def test_unaccessed_session_is_not_even_touched(
    store: RedisSessionStore, raw_redis: redis.Redis, prefix: str
) -> None:
    """A route that ignores the session does not load it: its idle TTL is not restarted."""
    record = await store.save(None, {"a": 1})
    assert record is not None
    key = session_key(prefix, record.sid)
    raw_redis.pexpire(key, 60_000)
    async with client_for(make_app(store)) as client:
        await get(client, "/plain", record.sid)
        assert raw_redis.pttl(key) <= 60_000
        await get(client, "/read", record.sid)
        assert raw_redis.pttl(key) > 60_000


async def test_fixation_regenerate_deletes_the_old_record(
    store: RedisSessionStore, raw_redis: redis.Redis, prefix: str
) -> None:
    """Login regenerates: a new id with the data carried over, the old record deleted."""
    async with client_for(make_app(store)) as client:
        old = issued(await get(client, "/set", key="cart", value='["sku-1"]'))
        login = await get(client, "/login", old, user="alice")
        new = issued(login)
        assert new != old
        assert login.headers["cache-control"] == "no-store"
        assert body(login)["data"] == {"cart": ["sku-1"], "user": "alice"}
        assert raw_redis.exists(session_key(prefix, old)) == 0
        assert body(await get(client, "/read", new))["data"] == {"cart": ["sku-1"], "user": "alice"}
        stale = await get(client, "/read", old)
        assert body(stale)["data"] == {}
    assert keys_under(raw_redis, prefix) == [session_key(prefix, new).encode()]


async def test_regenerate_with_an_empty_session(
    store: RedisSessionStore, raw_redis: redis.Redis, prefix: str
) -> None:
    """Regenerating an emptied session deletes the old record, issues no id, expires the cookie."""

    async def empty_then_regenerate(request: Request) -> Response:
        session = await load_session(request)
        session.clear()
        await regenerate_session(request)
        return PlainTextResponse(str(session.id))

    app = make_app(store, extra=[Route("/empty-regen", empty_then_regenerate)])
    async with client_for(app) as client:
        sid = issued(await get(client, "/set", key="a", value="1"))
        response = await get(client, "/empty-regen", sid)
        assert response.text == "None"
        [header] = set_cookies(response)
        assert cookie_parts(header)[2]["max-age"] == "0"
        nothing = await get(client, "/regenerate")  # no session at all: nothing happens
        assert set_cookies(nothing) == []
    assert keys_under(raw_redis, prefix) == []


async def test_logout_deletes_the_record_and_expires_the_cookie(
    store: RedisSessionStore, raw_redis: redis.Redis, prefix: str
) -> None:
    """session.clear() deletes the record and expires the cookie (Max-Age=0, 1970), no-store."""
    async with client_for(make_app(store, https_only=True)) as client:
        sid = issued(await get(client, "/set", key="user", value='"alice"'))
        response = await get(client, "/logout", sid)
        [header] = set_cookies(response)
        name, value, attrs = cookie_parts(header)
        assert (name, value) == (NAME, '""')
        assert attrs["max-age"] == "0"
        assert attrs["expires"] == "Thu, 01 Jan 1970 00:00:00 GMT"
        assert attrs["path"] == "/"
        assert "httponly" in attrs
        assert "secure" in attrs
        assert response.headers["cache-control"] == "no-store"
        assert raw_redis.exists(session_key(prefix, sid)) == 0
        after = await get(client, "/read", sid)
        assert body(after)["data"] == {}
        assert set_cookies(after) == []


async def test_deleting_a_key_is_saved(store: RedisSessionStore) -> None:
    """del session[key] removes that key from the stored record; the cookie stays as it is."""
    async with client_for(make_app(store)) as client:
        sid = issued(await get(client, "/set", key="a", value="1"))
        assert set_cookies(await get(client, "/set", sid, key="b", value="2")) == []
        assert set_cookies(await get(client, "/delete", sid, key="a")) == []
        assert body(await get(client, "/read", sid))["data"] == {"b": 2}


async def test_sync_route_writes_through_the_lazy_session(store: RedisSessionStore) -> None:
    """A sync route that only touches request.session loads and saves it."""
    async with client_for(make_app(store)) as client:
        sid = issued(await get(client, "/set-sync", key="a", value='{"x": [1]}'))
        assert body(await get(client, "/read-sync", sid))["data"] == {"a": {"x": [1]}}


@pytest.mark.parametrize("status", ["500", "503"])
async def test_5xx_response_saves_nothing(
    store: RedisSessionStore, raw_redis: redis.Redis, prefix: str, status: str
) -> None:
    """A response with a 5xx status leaves the session as it was and creates none."""
    async with client_for(make_app(store)) as client:
        sid = issued(await get(client, "/set", key="a", value="1"))
        failed = await get(client, "/fail", sid, status=status)
        assert failed.status_code == int(status)
        assert set_cookies(failed) == []
        assert body(await get(client, "/read", sid))["data"] == {"a": 1}
        fresh = await get(client, "/fail", status=status)
        assert set_cookies(fresh) == []
        ok = await get(client, "/fail", sid, status="404")  # a 4xx is saved
        assert ok.status_code == 404
        assert body(await get(client, "/read", sid))["data"] == {"a": 1, "failed": True}
    assert keys_under(raw_redis, prefix) == [session_key(prefix, sid).encode()]


@pytest.mark.parametrize("kind", ["set", "object"])
async def test_non_json_value_is_a_500_and_writes_nothing(
    store: RedisSessionStore, raw_redis: redis.Redis, prefix: str, kind: str
) -> None:
    """Putting a non-JSON value in the session fails the request and stores nothing."""
    async with client_for(make_app(store), raise_app_exceptions=False) as client:
        sid = issued(await get(client, "/set", key="a", value="1"))
        response = await get(client, "/bad-value", sid, kind=kind)
        assert response.status_code == 500
        assert set_cookies(response) == []
        new = await get(client, "/bad-value", kind=kind)
        assert new.status_code == 500
        assert set_cookies(new) == []
        assert body(await get(client, "/read", sid))["data"] == {"a": 1}
    assert keys_under(raw_redis, prefix) == [session_key(prefix, sid).encode()]
    async with client_for(make_app(store)) as client:
        with pytest.raises(SessionError, match="not JSON"):
            await get(client, "/bad-value", sid, kind=kind)


async def test_max_bytes_through_the_middleware(
    redis_cache: Cache, raw_redis: redis.Redis, prefix: str
) -> None:
    """A session grown past max_bytes raises SessionError in the request; the record stays."""
    store = RedisSessionStore(redis_cache, max_bytes=64)
    async with client_for(make_app(store)) as client:
        sid = issued(await get(client, "/set", key="a", value='"small"'))
        with pytest.raises(SessionError, match="max_bytes"):
            await get(client, "/set", sid, key="b", value=json.dumps("x" * 100))
        with pytest.raises(SessionError, match="max_bytes"):
            await get(client, "/set", key="b", value=json.dumps("x" * 100))
        assert body(await get(client, "/read", sid))["data"] == {"a": "small"}
    assert keys_under(raw_redis, prefix) == [session_key(prefix, sid).encode()]


def test_session_keys_must_be_strings(memory_cache: Cache) -> None:
    """Session[non-str] = ... raises TypeError before anything is loaded or stored."""
    session = Session(RedisSessionStore(memory_cache), None)
    with pytest.raises(TypeError):
        session[cast(str, 1)] = "x"
    assert not session.accessed


# --------------------------------------------------- 6. loading modes and other scopes


async def test_lazy_read_without_a_sync_client_asks_for_load_session(
    redis_url: str, prefix: str
) -> None:
    """With an async-only cache, a lazy read is a clear SessionError; await load_session works."""
    client = redis.asyncio.Redis.from_url(redis_url)
    cache = Cache(client=client, prefix=prefix)
    store = RedisSessionStore(cache)
    record = await store.save(None, {"a": 1})
    assert record is not None

    async def lazy(request: Request) -> Response:
        return JSONResponse(dict(the_session(request)))

    app = make_app(store, extra=[Route("/lazy", lazy)])
    try:
        async with client_for(app) as http:
            with pytest.raises(SessionError, match="load_session"):
                await get(http, "/lazy", record.sid)
            assert body(await get(http, "/read", record.sid))["data"] == {"a": 1}
            assert body(await get(http, "/lazy")) == {}  # no cookie: nothing to load
    finally:
        await cache.close()
        await client.aclose()


async def test_autoload_loads_before_the_app(redis_url: str, prefix: str) -> None:
    """autoload=True loads the record before the app runs: an async-only cache then reads lazily."""
    client = redis.asyncio.Redis.from_url(redis_url)
    cache = Cache(client=client, prefix=prefix)
    store = RedisSessionStore(cache)
    record = await store.save(None, {"a": 1})
    assert record is not None

    async def lazy(request: Request) -> Response:
        session = the_session(request)
        assert session.accessed  # loaded before the app ran
        return JSONResponse(dict(session))

    app = make_app(store, extra=[Route("/lazy", lazy)], autoload=True)
    try:
        async with client_for(app) as http:
            response = await get(http, "/lazy", record.sid)
            assert response.json() == {"a": 1}
            assert vary(response) == ["cookie"]
            assert set_cookies(response) == []
            assert (await get(http, "/lazy", forged_id())).json() == {}
    finally:
        await cache.close()
        await client.aclose()


async def test_load_session_without_the_middleware_is_a_session_error() -> None:
    """load_session/regenerate_session without the middleware raise SessionError."""
    with pytest.raises(SessionError, match="SessionMiddleware"):
        await load_session({"type": "http"})
    with pytest.raises(SessionError, match="SessionMiddleware"):
        await regenerate_session(Request({"type": "http", "session": {}}))


async def test_websocket_gets_a_readable_session(
    store: RedisSessionStore, raw_redis: redis.Redis, prefix: str
) -> None:
    """A websocket can read its session (await load_session); it is never written back."""
    record = await store.save(None, {"user": "alice"})
    assert record is not None

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        session = await load_session(websocket)
        await websocket.send_json({"data": dict(session), "id": session.id})
        session["changed"] = True
        await websocket.close()

    app = make_app(store, extra=[WebSocketRoute("/ws", ws)])
    sent: list[Message] = []
    events = iter([{"type": "websocket.connect"}])

    async def receive() -> Message:
        return next(events, {"type": "websocket.disconnect", "code": 1000})

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {
        "type": "websocket",
        "scheme": "ws",
        "path": "/ws",
        "raw_path": b"/ws",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"cookie", f"{NAME}={record.sid}".encode())],
        "subprotocols": [],
    }
    await app(scope, receive, send)
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert json.loads(sent[1]["text"]) == {"data": {"user": "alice"}, "id": record.sid}
    assert hgetall(raw_redis, session_key(prefix, record.sid)).get(b"d:changed") is None


async def test_lifespan_and_other_scopes_pass_through(memory_cache: Cache) -> None:
    """Non-http scopes reach the app untouched, with no session put in them."""
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        seen.append(scope)

    middleware = SessionMiddleware(app, RedisSessionStore(memory_cache))

    async def nothing() -> Message:
        return {"type": "lifespan.startup"}

    async def sink(message: Message) -> None:
        return None

    for kind in ("lifespan", "custom"):
        await middleware({"type": kind}, nothing, sink)
    assert [s["type"] for s in seen] == ["lifespan", "custom"]
    assert all("session" not in s for s in seen)


async def test_cookie_header_parsing(store: RedisSessionStore) -> None:
    """The id is found among other cookies and across Cookie headers; near-misses are ignored."""
    record = await store.save(None, {"a": 1})
    assert record is not None
    sid = record.sid.encode()
    app = make_app(store)
    found: list[list[tuple[bytes, bytes]]] = [
        [(b"cookie", b"session=" + sid)],
        [(b"cookie", b"a=1; session=" + sid + b"; b=2")],
        [(b"cookie", b"a=1;session=" + sid)],
        [(b"cookie", b"a=1"), (b"cookie", b"session=" + sid)],
        [(b"cookie", b"session=junk; session=" + sid)],
        [(b"cookie", b"session=" + sid + b" ")],
    ]
    missed: list[list[tuple[bytes, bytes]]] = [
        [(b"cookie", b"session=" + sid + b"x")],
        [(b"cookie", b"session=x" + sid[1:] + b"x")],
        [(b"cookie", b'session="' + sid + b'"')],
        [(b"cookie", b"Session=" + sid)],
        [(b"cookie", b"xsession=" + sid)],
        [(b"cookie", b"session =" + sid)],
        [(b"x-cookie", b"session=" + sid)],
        [(b"cookie", b"other=" + sid)],
    ]
    for headers in found:
        reply = await asgi_get(app, "/read", headers)
        assert json.loads(reply.body)["data"] == {"a": 1}, headers
    for headers in missed:
        reply = await asgi_get(app, "/read", headers)
        assert reply.status == 200
        assert json.loads(reply.body)["data"] == {}, headers
        assert reply.values(b"set-cookie") == []


# ------------------------------------------------------ 7. hostile traffic and cookies


async def test_10000_anonymous_or_random_cookie_requests_create_nothing(
    redis_cache: Cache, raw_redis: redis.Redis, prefix: str
) -> None:
    """10,000 reads without a cookie or with random cookies: 0 keys, 0 Set-Cookie, 0 errors."""
    store = RecordingStore(redis_cache)
    app = make_app(store)
    rng = random.Random(7)

    def cookie_header(i: int) -> list[tuple[bytes, bytes]]:
        kind = i % 5
        if kind == 0:
            return []
        if kind == 1:
            return [(b"cookie", f"session={forged_id(rng)}".encode())]
        if kind == 2:
            return [(b"cookie", rng.randbytes(rng.randrange(0, 200)))]
        if kind == 3:
            pairs = [
                b"session=" + (forged_id(rng).encode() if rng.random() < 0.5 else rng.randbytes(9))
                for _ in range(rng.randrange(1, 6))
            ]
            return [(b"cookie", b"; ".join(pairs))]
        return [(b"cookie", b"session=" + rng.randbytes(rng.randrange(40, 50)))]

    requests = [cookie_header(i) for i in range(10_000)]
    replies: list[Reply] = []
    for start in range(0, 10_000, 250):
        batch = [
            asgi_get(app, "/read" if i % 10 else "/read-sync", requests[i])
            for i in range(start, start + 250)
        ]
        replies += await asyncio.gather(*batch)
    assert len(replies) == 10_000
    assert {r.status for r in replies} == {200}
    assert sum(len(r.values(b"set-cookie")) for r in replies) == 0
    assert all(json.loads(r.body)["data"] == {} for r in replies)
    # Exactly the requests that carried a well-formed id looked it up (and missed); no
    # other bytes were ever handed to the store.
    expected = [sid for headers in requests if (sid := first_well_formed(headers)) is not None]
    assert len(expected) > 3000
    assert sorted(store.asked) == sorted(expected)
    assert keys_under(raw_redis, prefix) == []


_ID = st.text(alphabet=ID_CHARS, min_size=43, max_size=43).map(str.encode)
_PAIR = st.one_of(
    st.binary(max_size=60),
    _ID.map(lambda sid: b"session=" + sid),
    st.binary(max_size=60).map(lambda junk: b"session=" + junk),
    st.sampled_from([b"session=", b"session", b"=", b";", b"session==", b" session=\xff"]),
)
_COOKIE = st.one_of(
    st.binary(max_size=3000),
    st.lists(_PAIR, max_size=50).map(b";".join),
    st.lists(_PAIR, max_size=50).map(b"; ".join),
    st.builds(
        lambda n, chunk: chunk * n,
        st.integers(min_value=1, max_value=30_000),
        st.sampled_from([b"session=", b"\xff\xfe", b"; ", b"session=" + b"A" * 43 + b";", b"\x00"]),
    ),
)


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    cookies=st.lists(_COOKIE, max_size=4),
    path=st.sampled_from(["/read", "/read-sync", "/contains", "/plain"]),
    scheme=st.sampled_from(["http", "https"]),
)
async def test_fuzzed_cookie_headers_never_5xx(
    redis_cache: Cache,
    raw_redis: redis.Redis,
    prefix: str,
    cookies: list[bytes],
    path: str,
    scheme: str,
) -> None:
    """Any bytes in any Cookie headers: never a 5xx, no Set-Cookie, only valid ids reach Redis."""
    store = RecordingStore(redis_cache)
    headers = [(b"cookie", value) for value in cookies]
    reply = await asgi_get(make_app(store), path, headers, scheme)
    assert reply.status == 200
    assert reply.values(b"set-cookie") == []
    expected = None if path == "/plain" else first_well_formed(headers)
    assert store.asked == ([] if expected is None else [expected])
    assert keys_under(raw_redis, prefix) == []


# -------------------------------------------------------------------- 8. Redis down


@pytest.mark.slow
async def test_redis_down_serves_the_app_with_an_empty_session(
    private_redis: PrivateServer, caplog: pytest.LogCaptureFixture
) -> None:
    """With Redis gone every route still answers 200: the session reads empty and nothing is set."""
    cache = Cache.from_url(
        private_redis.url, prefix="down", socket_timeout=0.5, socket_connect_timeout=0.5
    )
    store = RedisSessionStore(cache)
    try:
        async with client_for(make_app(store)) as client:
            sid = issued(await get(client, "/set", key="user", value='"alice"'))
            assert body(await get(client, "/read", sid))["data"] == {"user": "alice"}
            private_redis.stop()
            for path in ("/read", "/read-sync"):
                response = await get(client, path, sid)
                assert response.status_code == 200
                assert body(response) == {"data": {}, "id": None, "available": False}
                assert set_cookies(response) == []
            for who in (sid, None):
                for path, params in [("/set", {"key": "x", "value": "1"}), ("/login", {})]:
                    response = await get(client, path, who, **params)
                    assert response.status_code == 200, path
                    assert set_cookies(response) == [], path
            assert (await get(client, "/plain", sid)).status_code == 200
            logout = await get(client, "/logout", sid)  # the user still gets logged out
            assert logout.status_code == 200
            assert expired_only(set_cookies(logout))
        assert "session unavailable" in caplog.text
        assert "session not saved" in caplog.text  # the cookieless write: the create failed
    finally:
        await cache.close()


# -------------------------------------------------------------------- 9. concurrency


async def test_concurrent_requests_of_one_session_merge_their_keys(
    store: RedisSessionStore, caplog: pytest.LogCaptureFixture
) -> None:
    """50 concurrent requests of one session, each setting its own key: every key is kept."""
    async with client_for(make_app(store)) as client:
        sid = issued(await get(client, "/set", key="base", value="0"))
        headers = {"cookie": f"{NAME}={sid}"}
        responses = await asyncio.gather(
            *(
                client.get("/set", params={"key": f"k{i}", "value": str(i)}, headers=headers)
                for i in range(50)
            )
        )
        assert {r.status_code for r in responses} == {200}
        assert all(set_cookies(r) == [] for r in responses)
        # They overlapped: run one after another, each would have seen a different count.
        assert len({len(body(r)["data"]) for r in responses}) < 50
        final = body(await get(client, "/read", sid))["data"]
    assert final == {"base": 0, **{f"k{i}": i for i in range(50)}}
    assert [r.getMessage() for r in caplog.records if r.name.startswith("cachekit")] == []


class Gate:
    """Lets a test hold a request between its load and its write."""

    def __init__(self) -> None:
        self.loaded = asyncio.Event()
        self.proceed = asyncio.Event()

    def route(self) -> Route:
        async def slow_set(request: Request) -> Response:
            session = await load_session(request)
            self.loaded.set()
            await self.proceed.wait()
            session[request.query_params["key"]] = json.loads(request.query_params["value"])
            return PlainTextResponse("done")

        return Route("/slow-set", slow_set)


async def held(
    client: httpx.AsyncClient, gate: Gate, sid: str, key: str, value: str
) -> tuple[asyncio.Task[httpx.Response], Callable[[], Awaitable[httpx.Response]]]:
    """Start a /slow-set and wait until it has loaded; the second item lets it finish."""
    headers = {"cookie": f"{NAME}={sid}"}
    task = asyncio.ensure_future(
        client.get("/slow-set", params={"key": key, "value": value}, headers=headers)
    )
    await asyncio.wait_for(gate.loaded.wait(), 10)

    async def finish() -> httpx.Response:
        gate.proceed.set()
        return await asyncio.wait_for(task, 10)

    return task, finish


async def test_same_key_last_writer_wins_other_keys_merge(store: RedisSessionStore) -> None:
    """A stale request overwrites only the key it changed; others' changes and deletions stay."""
    gate = Gate()
    async with client_for(make_app(store, extra=[gate.route()])) as client:
        sid = issued(await get(client, "/set", key="x", value='"first"'))
        await get(client, "/set", sid, key="doomed", value="1")
        _, finish = await held(client, gate, sid, "x", '"slow"')
        await get(client, "/set", sid, key="x", value='"fast"')
        await get(client, "/set", sid, key="other", value="2")
        await get(client, "/delete", sid, key="doomed")
        late = await finish()
        assert late.status_code == 200
        assert set_cookies(late) == []
        final = body(await get(client, "/read", sid))["data"]
    assert final == {"x": "slow", "other": 2}


async def test_logout_racing_with_a_write_is_not_undone(
    store: RedisSessionStore, raw_redis: redis.Redis, prefix: str
) -> None:
    """A write that loaded before a logout and saves after it does not resurrect the record."""
    gate = Gate()
    async with client_for(make_app(store, extra=[gate.route()])) as client:
        sid = issued(await get(client, "/set", key="user", value='"alice"'))
        _, finish = await held(client, gate, sid, "cart", '["sku-1"]')
        logout = await get(client, "/logout", sid)
        assert cookie_parts(set_cookies(logout)[0])[2]["max-age"] == "0"
        late = await finish()
        assert late.status_code == 200
        assert all(cookie_parts(h)[2].get("max-age") == "0" for h in set_cookies(late))
        assert body(await get(client, "/read", sid))["data"] == {}
    assert keys_under(raw_redis, prefix) == []


async def test_regeneration_racing_with_a_write_keeps_the_old_id_dead(
    store: RedisSessionStore, raw_redis: redis.Redis, prefix: str
) -> None:
    """A write under the old id that saves after a login's regeneration does not bring it back."""
    gate = Gate()
    async with client_for(make_app(store, extra=[gate.route()])) as client:
        old = issued(await get(client, "/set", key="cart", value='["sku-1"]'))
        _, finish = await held(client, gate, old, "late", "1")
        new = issued(await get(client, "/login", old, user="alice"))
        await finish()
        assert body(await get(client, "/read", old))["data"] == {}
        assert body(await get(client, "/read", new))["data"] == {"cart": ["sku-1"], "user": "alice"}
    assert keys_under(raw_redis, prefix) == [session_key(prefix, new).encode()]


async def test_a_write_losing_to_a_regeneration_does_not_expire_the_new_cookie(
    store: RedisSessionStore,
) -> None:
    """A stale write under the old id sends no Set-Cookie that would kill the login's new one."""
    gate = Gate()
    async with client_for(make_app(store, extra=[gate.route()])) as client:
        old = issued(await get(client, "/set", key="cart", value='["sku-1"]'))
        _, finish = await held(client, gate, old, "late", "1")
        issued(await get(client, "/login", old, user="alice"))
        late = await finish()  # arrives after the login's response in the browser
        assert set_cookies(late) == []


def run_workers(
    mode: str,
    cfgs: list[dict[str, Any]],
    raw: redis.Redis,
    ready: str,
    go: str,
    after_go: Callable[[], None] = lambda: None,
) -> list[dict[str, Any]]:
    """Start one worker per config, release them together, return their reports."""
    argvs = [[mode, json.dumps(cfg)] for cfg in cfgs]
    return run_fleet(
        "tests.workers.session_worker", argvs, raw, ready=ready, go=go, after_go=after_go
    )


@pytest.fixture
def shared_session(redis_url: str, prefix: str) -> Iterator[tuple[RedisSessionStore, str]]:
    """A session on the shared Redis, through a store whose cache the test owns (sync use)."""
    cache = Cache.from_url(redis_url, prefix=prefix, **PATIENT)
    store = RedisSessionStore(cache)
    record = store.sync.save(None, {"base": 0})
    assert record is not None
    yield store, record.sid
    asyncio.run(cache.close())


@pytest.mark.slow
def test_processes_writing_different_keys_of_one_session_lose_nothing(
    shared_session: tuple[RedisSessionStore, str],
    redis_url: str,
    prefix: str,
    raw_redis: redis.Redis,
) -> None:
    """4 processes x 60 load-change-save rounds of one session: every kept key survives."""
    store, sid = shared_session
    ready, go = f"{prefix}:ready", f"{prefix}:go"
    cfgs = [
        {"url": redis_url, "prefix": prefix, "sid": sid, "worker": w, "writes": 60,
         "ready": ready, "go": go}
        for w in range(4)
    ]  # fmt: skip
    reports = run_workers("merge", cfgs, raw_redis, ready, go)
    assert [r["lost"] for r in reports] == [0, 0, 0, 0]
    expected: dict[str, Any] = {"base": 0}
    for report in reports:
        expected.update(report["kept"])
    record = store.sync.load(sid)
    assert record is not None
    last = record.data.pop("last")
    assert last in range(4)
    assert record.data == expected
    fields = hgetall(raw_redis, session_key(prefix, sid))
    assert fields[b"@sid"] == sid.encode()
    assert int(fields[b"@deadline"]) > server_ms(raw_redis)


@pytest.mark.slow
def test_processes_writing_while_logged_out_never_resurrect(
    shared_session: tuple[RedisSessionStore, str],
    redis_url: str,
    prefix: str,
    raw_redis: redis.Redis,
) -> None:
    """3 processes keep writing one session; after a logout from a 4th, the record stays gone."""
    store, sid = shared_session
    ready, go = f"{prefix}:ready", f"{prefix}:go"
    key = session_key(prefix, sid)

    def logout_after_some_writes() -> None:
        deadline = time.monotonic() + 20
        # 30 keys written by the workers (fields d:w<worker>:<i>; meta fields start with @)
        while sum(f.startswith(b"d:w") for f in cast(list[bytes], raw_redis.hkeys(key))) < 30:
            assert time.monotonic() < deadline, "the workers wrote nothing"
            time.sleep(0.005)
        store.sync.delete(sid)

    cfgs = [
        {"url": redis_url, "prefix": prefix, "sid": sid, "worker": w, "ready": ready, "go": go}
        for w in range(3)
    ]
    reports = run_workers("until-gone", cfgs, raw_redis, ready, go, logout_after_some_writes)
    assert sum(r["saved"] for r in reports) >= 30
    assert raw_redis.exists(key) == 0
    assert store.sync.load(sid) is None
