"""Encryption at rest for session records (issue 20, item 7).

Covered: with ``encrypt_keys`` no stored byte holds a value in the clear and sessions work
end to end through the middleware (per-key merging too); keys in every accepted form and
every refused one; rotation like the signing keyring (a record sealed with the old key
reads under ``[new, old]`` and is re-sealed with the new key at its next save, after which
``[new]`` alone reads it; a record under a dropped key is no session); tampered values,
values moved to another session or another key, and plaintext records read as no session
and are counted; a missing ``cryptography`` package is a clear ``ConfigurationError``.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import sys
from typing import Any

import pytest
import redis

from cachekit import Cache
from cachekit.exceptions import ConfigurationError
from cachekit.sessions import RedisSessionStore, new_encryption_key
from cachekit.sessions.crypto import SessionCipher
from tests.sessions.support import (
    body,
    client_for,
    get,
    hgetall,
    issued,
    make_app,
    session_key,
)

PERSONAL = {"email": "alice@example.com", "address": {"street": "1 Secret Lane"}, "n": 42}


def data_fields(raw: redis.Redis, prefix: str, sid: str) -> dict[bytes, bytes]:
    fields = hgetall(raw, session_key(prefix, sid))
    return {k: v for k, v in fields.items() if k.startswith(b"d:")}


def key_id(key: str) -> bytes:
    """The 4-byte id a sealed value names its key by (first bytes of SHA-256 of the key)."""
    return hashlib.sha256(base64.urlsafe_b64decode(key)).digest()[:4]


async def test_no_value_is_stored_in_the_clear(
    redis_cache: Cache, raw_redis: redis.Redis, prefix: str
) -> None:
    """Every stored value is sealed (version, key id, nonce, ciphertext); loads give it back."""
    key = new_encryption_key()
    store = RedisSessionStore(redis_cache, encrypt_keys=[key])
    record = await store.save(None, PERSONAL)
    assert record is not None
    fields = data_fields(raw_redis, prefix, record.sid)
    assert set(fields) == {b"d:email", b"d:address", b"d:n"}  # key names stay readable
    everything = b"".join(hgetall(raw_redis, session_key(prefix, record.sid)).values())
    for secret in (b"alice@example.com", b"Secret Lane", b"street"):
        assert secret not in everything
    for value in fields.values():
        assert value[:1] == b"\x01"
        assert value[1:5] == key_id(key)
    loaded = await store.load(record.sid)
    assert loaded is not None
    assert loaded.data == PERSONAL
    assert store.sync.load(record.sid) == loaded
    # The same value sealed twice differs (a fresh nonce each time).
    again = await store.save(None, PERSONAL)
    assert again is not None
    assert data_fields(raw_redis, prefix, again.sid)[b"d:n"] != fields[b"d:n"]


async def test_encrypted_sessions_through_the_middleware(redis_cache: Cache) -> None:
    """The app sees plain sessions: writes, changes of one key, deletes, logout."""
    store = RedisSessionStore(redis_cache, encrypt_keys=[new_encryption_key()])
    async with client_for(make_app(store)) as client:
        sid = issued(await get(client, "/set", key="user", value='"alice"'))
        await get(client, "/set", sid, key="cart", value='{"sku-1": 2}')
        await get(client, "/delete", sid, key="user")
        assert body(await get(client, "/read", sid))["data"] == {"cart": {"sku-1": 2}}
        new = issued(await get(client, "/login", sid, user="bob"))
        assert body(await get(client, "/read", new))["data"] == {
            "cart": {"sku-1": 2},
            "user": "bob",
        }
        assert body(await get(client, "/read", sid))["data"] == {}


@pytest.mark.parametrize("form", ["text", "padded-bytes", "raw-bytes", "unpadded-text"])
def test_every_accepted_key_form(memory_cache: Cache, form: str) -> None:
    """32 random bytes: raw, URL-safe base64 text or bytes (Fernet's form), padded or not."""
    raw = secrets.token_bytes(32)
    text = base64.urlsafe_b64encode(raw).decode()
    forms: dict[str, bytes | str] = {
        "text": text,
        "padded-bytes": text.encode(),
        "raw-bytes": raw,
        "unpadded-text": text.rstrip("="),
    }
    key = forms[form]
    store = RedisSessionStore(memory_cache, encrypt_keys=[key])
    record = store.sync.save(None, {"a": 1})
    assert record is not None
    loaded = RedisSessionStore(memory_cache, encrypt_keys=[raw]).sync.load(record.sid)
    assert loaded is not None
    assert loaded.data == {"a": 1}


@pytest.mark.parametrize(
    "keys",
    [[], ["short"], [b"x" * 31], [b"x" * 33], ["!" * 43], [new_encryption_key()[:-4]]],
    ids=["none", "short-text", "31-bytes", "33-bytes", "not-base64", "truncated"],
)
def test_bad_keys_are_configuration_errors(memory_cache: Cache, keys: list[Any]) -> None:
    """No key, or one that is not 32 bytes (raw or base64), is refused at construction."""
    with pytest.raises(ConfigurationError, match="key"):
        RedisSessionStore(memory_cache, encrypt_keys=keys)


async def test_key_rotation(redis_cache: Cache, raw_redis: redis.Redis, prefix: str) -> None:
    """[new, old] reads old records and re-seals them with new at their next save."""
    old, new = new_encryption_key(), new_encryption_key()
    before = RedisSessionStore(redis_cache, encrypt_keys=[old])
    record = await before.save(None, {"a": 1, "b": 2})
    assert record is not None
    rotating = RedisSessionStore(redis_cache, encrypt_keys=[new, old])
    loaded = await rotating.load(record.sid)
    assert loaded is not None
    assert loaded.data == {"a": 1, "b": 2}
    # A record under a key no longer listed is no session, and is counted.
    invalid = redis_cache.stats()["invalid_payloads"]
    assert await RedisSessionStore(redis_cache, encrypt_keys=[new]).load(record.sid) is None
    assert redis_cache.stats()["invalid_payloads"] == invalid + 1
    # The next save re-seals every value with the newest key, even unchanged ones.
    saved = await rotating.save(loaded, {"a": 1, "b": 2})
    assert saved is not None
    assert {v[1:5] for v in data_fields(raw_redis, prefix, record.sid).values()} == {key_id(new)}
    after = await RedisSessionStore(redis_cache, encrypt_keys=[new]).load(record.sid)
    assert after is not None
    assert after.data == {"a": 1, "b": 2}
    # Once re-sealed, nothing is written again for unchanged data.
    stored = data_fields(raw_redis, prefix, record.sid)
    assert await rotating.save(after, {"a": 1, "b": 2}) is not None
    assert data_fields(raw_redis, prefix, record.sid) == stored


async def test_tampered_moved_or_plaintext_values_are_no_session(
    redis_cache: Cache, raw_redis: redis.Redis, prefix: str
) -> None:
    """A flipped bit, a value copied from another session or key, or plaintext: no session."""
    store = RedisSessionStore(redis_cache, encrypt_keys=[new_encryption_key()])
    victim = await store.save(None, {"role": "admin", "name": "root"})
    target = await store.save(None, {"role": "user", "name": "mallory"})
    assert victim is not None
    assert target is not None
    victim_fields = data_fields(raw_redis, prefix, victim.sid)
    key = session_key(prefix, target.sid)
    cases: list[tuple[str, bytes, bytes]] = [
        ("moved from another session", b"d:role", victim_fields[b"d:role"]),
        ("moved to another key", b"d:role", data_fields(raw_redis, prefix, target.sid)[b"d:name"]),
        ("a flipped bit", b"d:role", bytes([victim_fields[b"d:role"][0]]) + b"\x00" * 40),
        ("plaintext", b"d:role", b'"admin"'),
        ("truncated", b"d:role", victim_fields[b"d:role"][:10]),
    ]
    for what, field, value in cases:
        original = data_fields(raw_redis, prefix, target.sid)[field]
        raw_redis.hset(key, field, value)
        before = redis_cache.stats()["invalid_payloads"]
        assert await store.load(target.sid) is None, what
        assert redis_cache.stats()["invalid_payloads"] == before + 1, what
        raw_redis.hset(key, field, original)
        restored = await store.load(target.sid)
        assert restored is not None, what
        assert restored.data == {"role": "user", "name": "mallory"}, what


async def test_a_plaintext_record_is_no_session_once_encryption_is_on(
    redis_cache: Cache,
) -> None:
    """Records written before encryption was turned on read as no session (not as plaintext)."""
    plain = await RedisSessionStore(redis_cache).save(None, {"a": 1})
    assert plain is not None
    assert (
        await RedisSessionStore(redis_cache, encrypt_keys=[new_encryption_key()]).load(plain.sid)
        is None
    )


def test_missing_cryptography_is_a_clear_configuration_error(
    memory_cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the optional package the store says which extra to install."""
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.ciphers.aead", None)
    with pytest.raises(ConfigurationError, match=r"cachekit-redis\[encryption\]"):
        RedisSessionStore(memory_cache, encrypt_keys=[new_encryption_key()])


def test_the_cipher_binds_values_to_their_session_and_key() -> None:
    """open() with another sid or key name fails; the rotation flag says which key sealed it."""
    old, new = new_encryption_key(), new_encryption_key()
    sealed = SessionCipher([old]).seal("sid-a", "user", b'"alice"')
    cipher = SessionCipher([new, old])
    assert cipher.open("sid-a", "user", sealed) == (b'"alice"', True)
    assert cipher.open("sid-b", "user", sealed) is None
    assert cipher.open("sid-a", "use", sealed) is None
    assert cipher.open("sid-a", "user", b"") is None
    fresh = cipher.seal("sid-a", "user", b'"alice"')
    assert cipher.open("sid-a", "user", fresh) == (b'"alice"', False)
    assert "keys" in repr(cipher)
    assert old not in repr(cipher)
    assert new not in repr(cipher)
