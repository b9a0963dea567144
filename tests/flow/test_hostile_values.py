"""Hostile bytes planted in a real Redis: every one is a miss, never an error or a value.

Each test writes bytes straight under a value's storage key with a plain redis-py client,
then reads through cachekit: ``cache.get`` must return the default, a decorated function
(``async def`` and ``def``) must call its loader and return the loader's result, and the
``invalid_payloads`` counter must count every rejected read. A malicious pickle must
never be unpickled.
"""

from __future__ import annotations

import hashlib
import logging
import pathlib
import pickle
import random
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis

from cachekit import Cache, JsonSerializer, PickleSerializer, Serializer
from cachekit.flow.envelope import HEADER, HEADER_SIZE, VERSION, encode
from cachekit.flow.keys import KeySpace
from cachekit.serializers import MAC_SIZE, Keyring

SECRET = b"s" * 32
OTHER_SECRET = b"o" * 32
LOGICAL = "item:1"
LOADED: dict[str, Any] = {"n": 1, "from": "loader"}
DEFAULT = "the-default"

FLAG_SIGNED = 0x02


def storage_key(prefix: str, logical: str = LOGICAL) -> str:
    return KeySpace(prefix).value(logical)


def _header(key: str, *, code: int, flags: int = 0, size: int = 0) -> bytes:
    crc = zlib.crc32(key.encode())
    return HEADER.pack(b"ck", VERSION, flags, code, crc, size, 1.0, 0.0, 0.0)


def _valid(key: str, serializer: Serializer, value: Any = LOADED) -> bytes:
    return encode(key, value, serializer, created=1.0, expires=0.0)


class Evil:
    """Unpickling this creates the file at ``path``."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (pathlib.Path.touch, (self.path,))


# What each hostile payload is, given the storage key it is planted under.
Planter = Callable[[str], bytes]


def _random_bytes(seed: int, size: int) -> Planter:
    return lambda key: random.Random(seed).randbytes(size)


def _truncated_json(key: str) -> bytes:
    data = _valid(key, JsonSerializer())
    return data[: HEADER_SIZE + (len(data) - HEADER_SIZE) // 2]


def _wrong_version(key: str) -> bytes:
    data = bytearray(_valid(key, JsonSerializer()))
    data[2] = VERSION + 1
    return bytes(data)


JSON_ATTACKS: dict[str, Planter] = {
    "empty": lambda key: b"",
    "random-1": _random_bytes(1, 1),
    "random-29": _random_bytes(2, HEADER_SIZE),
    "random-200": _random_bytes(3, 200),
    "random-4096": _random_bytes(4, 4096),
    "zeros": lambda key: b"\x00" * 64,
    "plain-json-no-envelope": lambda key: b'{"n": 1, "from": "another writer"}',
    "truncated-header": lambda key: _valid(key, JsonSerializer())[: HEADER_SIZE - 3],
    "truncated-json": _truncated_json,
    "wrong-version": _wrong_version,
    "msgpack-code": lambda key: _header(key, code=2, size=4) + b"\x81\xa1n\x01",
    "signed-but-no-keyring": lambda key: _valid(key, JsonSerializer(keys=[SECRET])),
    "written-for-another-key": lambda key: _valid(key + "x", JsonSerializer()),
}


def _pickle_attacks(target: pathlib.Path) -> dict[str, Planter]:
    payload = pickle.dumps(Evil(target), protocol=pickle.HIGHEST_PROTOCOL)
    code, size = PickleSerializer.code, len(payload)

    def forged(key: str) -> bytes:
        return _header(key, code=code, flags=FLAG_SIGNED, size=size) + b"\xa5" * MAC_SIZE + payload

    def other_secret(key: str) -> bytes:
        header = _header(key, code=code, flags=FLAG_SIGNED, size=size)
        return header + Keyring([OTHER_SECRET]).sign(key.encode(), header, payload) + payload

    def other_key(key: str) -> bytes:
        header = _header(key + "x", code=code, flags=FLAG_SIGNED, size=size)
        mac = Keyring([SECRET]).sign((key + "x").encode(), header, payload)
        return header + mac + payload

    return {
        "raw-pickle": lambda key: payload,
        "unsigned-envelope": lambda key: _header(key, code=code, size=size) + payload,
        "forged-mac": forged,
        "signed-by-other-secret": other_secret,
        "signed-for-other-key": other_key,
    }


PICKLE_ATTACK_NAMES = [
    "raw-pickle",
    "unsigned-envelope",
    "forged-mac",
    "signed-by-other-secret",
    "signed-for-other-key",
]


@pytest.fixture
async def pickle_cache(redis_url: str, prefix: str) -> AsyncIterator[Cache]:
    cache = Cache.from_url(redis_url, prefix=prefix, serializer=PickleSerializer(keys=[SECRET]))
    yield cache
    await cache.close()


def _invalid(cache: Cache) -> int:
    return cache.stats()["invalid_payloads"]


async def _assert_every_reader_misses(
    cache: Cache, raw_redis: redis.Redis, key: str, data: bytes
) -> None:
    """Plant ``data``; the raw API and both decorated faces must treat it as a miss."""
    calls: list[str] = []

    @cache.cached(key="item:{n}")
    async def load_async(n: int) -> dict[str, Any]:
        calls.append("async")
        return {"n": n, "from": "loader"}

    @cache.cached(key="item:{n}")
    def load_sync(n: int) -> dict[str, Any]:
        calls.append("sync")
        return {"n": n, "from": "loader"}

    assert load_async.key(1) == load_sync.key(1) == LOGICAL

    raw_redis.set(key, data)
    before = _invalid(cache)
    assert await cache.get(LOGICAL, DEFAULT) == DEFAULT
    assert cache.sync.get(LOGICAL, DEFAULT) == DEFAULT
    assert _invalid(cache) == before + 2

    assert await load_async(1) == LOADED
    assert calls == ["async"]
    # Read twice: on the miss, and again under the lease before loading.
    assert _invalid(cache) == before + 4
    # The load replaced the hostile bytes with a good entry.
    assert raw_redis.get(key) != data
    assert await cache.get(LOGICAL, DEFAULT) == LOADED

    raw_redis.set(key, data)
    assert load_sync(1) == LOADED
    assert calls == ["async", "sync"]
    assert _invalid(cache) == before + 6
    assert cache.sync.get(LOGICAL, DEFAULT) == LOADED
    assert _invalid(cache) == before + 6


@pytest.mark.parametrize("attack", list(JSON_ATTACKS))
async def test_hostile_bytes_are_a_miss(
    redis_cache: Cache, raw_redis: redis.Redis, prefix: str, attack: str
) -> None:
    key = storage_key(prefix)
    await _assert_every_reader_misses(redis_cache, raw_redis, key, JSON_ATTACKS[attack](key))
    assert redis_cache.stats()["fallbacks"] == 0


async def test_hostile_bytes_are_a_miss_for_get_many(
    redis_cache: Cache, raw_redis: redis.Redis, prefix: str
) -> None:
    await redis_cache.set("good", 1)
    for name, planter in JSON_ATTACKS.items():
        key = storage_key(prefix, name)
        raw_redis.set(key, planter(key))
    found = await redis_cache.get_many(["good", *JSON_ATTACKS])
    assert found == {"good": 1}
    assert redis_cache.stats()["invalid_payloads"] == len(JSON_ATTACKS)


@pytest.mark.parametrize("attack", PICKLE_ATTACK_NAMES)
async def test_malicious_pickle_is_a_miss_and_never_runs(
    pickle_cache: Cache,
    raw_redis: redis.Redis,
    prefix: str,
    tmp_path: pathlib.Path,
    attack: str,
) -> None:
    target = tmp_path / "pwned"
    key = storage_key(prefix)
    data = _pickle_attacks(target)[attack](key)
    await _assert_every_reader_misses(pickle_cache, raw_redis, key, data)
    assert not target.exists()


async def test_the_planted_pickle_would_run_code(tmp_path: pathlib.Path, prefix: str) -> None:
    """The control for the test above: the payload really is malicious."""
    target = tmp_path / "pwned"
    data = _pickle_attacks(target)["raw-pickle"](storage_key(prefix))
    pickle.loads(data)
    assert target.exists()


async def test_pickle_cache_round_trips_its_own_values(pickle_cache: Cache) -> None:
    value = {"set": {1, 2}, "tuple": (1, "a"), "bytes": b"\x00"}
    await pickle_cache.set("mine", value)
    assert await pickle_cache.get("mine") == value
    assert _invalid(pickle_cache) == 0


async def test_value_copied_to_another_key_is_a_miss(
    redis_cache: Cache, raw_redis: redis.Redis, prefix: str
) -> None:
    await redis_cache.set("a", {"secret": "for a"})
    data = raw_redis.get(storage_key(prefix, "a"))
    assert isinstance(data, bytes)
    raw_redis.set(storage_key(prefix, "b"), data)
    assert await redis_cache.get("b", DEFAULT) == DEFAULT
    assert _invalid(redis_cache) == 1
    assert await redis_cache.get("a") == {"secret": "for a"}


def _crc_twins(prefix: str) -> tuple[str, str]:
    """Two logical keys whose storage keys under ``prefix`` share a crc32."""
    seen: dict[int, str] = {}
    space = KeySpace(prefix)
    for i in range(2_000_000):
        logical = hashlib.sha256(i.to_bytes(8, "big")).hexdigest()[:20]
        crc = zlib.crc32(space.value(logical).encode())
        if crc in seen:
            return seen[crc], logical
        seen[crc] = logical
    raise AssertionError("no crc32 collision found")


async def test_signed_value_moved_to_a_crc_twin_key_is_a_miss(
    redis_url: str, raw_redis: redis.Redis, prefix: str
) -> None:
    """Past the crc32, only the MAC ties a value to its key: a moved value is a miss."""
    a, b = _crc_twins(prefix)
    assert zlib.crc32(storage_key(prefix, a).encode()) == zlib.crc32(
        storage_key(prefix, b).encode()
    )
    serializer = JsonSerializer(keys=[SECRET])
    async with Cache.from_url(redis_url, prefix=prefix, serializer=serializer) as cache:
        await cache.set(a, {"for": "a"})
        data = raw_redis.get(storage_key(prefix, a))
        assert isinstance(data, bytes)
        raw_redis.set(storage_key(prefix, b), data)
        assert await cache.get(b, DEFAULT) == DEFAULT
        assert cache.sync.get(b, DEFAULT) == DEFAULT
        assert _invalid(cache) == 2
        assert await cache.get(a) == {"for": "a"}


async def test_unsigned_value_moved_to_a_crc_twin_key_is_read(
    redis_cache: Cache, raw_redis: redis.Redis, prefix: str
) -> None:
    """The documented limit: without a keyring, the crc32 only catches accidents."""
    a, b = _crc_twins(prefix)
    await redis_cache.set(a, {"for": "a"})
    data = raw_redis.get(storage_key(prefix, a))
    assert isinstance(data, bytes)
    raw_redis.set(storage_key(prefix, b), data)
    assert await redis_cache.get(b, DEFAULT) == {"for": "a"}


async def test_invalid_payload_warning_is_logged_once(
    redis_cache: Cache,
    raw_redis: redis.Redis,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="cachekit")
    key = storage_key(prefix)

    def warnings() -> list[logging.LogRecord]:
        return [
            r
            for r in caplog.records
            if r.name == "cachekit" and "invalid cached value" in r.getMessage()
        ]

    raw_redis.set(key, b"garbage that is not an envelope, yet long enough to fill a header")
    for _ in range(5):
        assert await redis_cache.get(LOGICAL, DEFAULT) == DEFAULT
        assert redis_cache.sync.get(LOGICAL, DEFAULT) == DEFAULT
    assert _invalid(redis_cache) == 10
    assert len(warnings()) == 1
    assert warnings()[0].levelno == logging.WARNING
    assert "not a cachekit envelope" in warnings()[0].getMessage()

    @redis_cache.cached(key="item:{n}")
    async def load(n: int) -> int:
        return n

    for _ in range(3):
        raw_redis.set(key, b"garbage that is not an envelope, yet long enough to fill a header")
        assert await load(1) == 1
    assert _invalid(redis_cache) == 16  # each load read the bad bytes twice (miss, lease)
    assert len(warnings()) == 1


async def test_surrogate_argument_is_escaped_not_a_crash(redis_cache: Cache) -> None:
    """A lone surrogate (e.g. from ``json.loads('"\\ud800"')``) in a templated argument."""
    calls: list[str] = []

    @redis_cache.cached(key="q:{q}")
    async def search(q: str) -> str:
        calls.append(q)
        return "results"

    assert await search("\ud800") == "results"
    assert await search("\ud800") == "results"
    assert calls == ["\ud800"]
