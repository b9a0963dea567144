"""The value operations: GET, SET (NX, TTL), MGET, batches, compare-and-set, deletes,
counters, TTLs, PUBLISH and PING, each with its Redis command and in-memory meaning.

Usage::

    raw = sync_backend.run(Get("p:{k}"))
    ok = await async_backend.run(Set("p:{k}", b"...", ttl=60, nx=True))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cachekit.backends.ops.base import Command, Op, Script, Store, ms

__all__ = [
    "CompareAndSet",
    "Delete",
    "DeleteIfEqual",
    "ExpireIfEqual",
    "Get",
    "GetMany",
    "Incr",
    "Ping",
    "Publish",
    "Set",
    "SetMany",
    "Ttl",
]


@dataclass(slots=True)
class Get(Op[bytes | None]):
    """``GET key``."""

    key: str

    def command(self) -> Command:
        return ("GET", self.key)

    def parse(self, reply: Any) -> bytes | None:
        return reply  # type: ignore[no-any-return]

    def apply(self, store: Store) -> bytes | None:
        return store.read(self.key)


@dataclass(slots=True)
class GetMany(Op[list[bytes | None]]):
    """``MGET keys...`` (a Cluster backend splits it by key)."""

    keys: Sequence[str]

    def command(self) -> Command:
        return ("MGET", *self.keys)

    def parse(self, reply: Any) -> list[bytes | None]:
        return list(reply)

    def apply(self, store: Store) -> list[bytes | None]:
        return [store.read(key) for key in self.keys]


def _set_command(key: str, value: bytes, ttl: float | None, nx: bool) -> Command:
    args: Command = ("SET", key, value)
    if ttl is not None:
        args += ("PX", ms(ttl))
    return (*args, "NX") if nx else args


@dataclass(slots=True)
class Set(Op[bool]):
    """``SET key value [PX ttl] [NX]``; whether it was written."""

    key: str
    value: bytes
    ttl: float | None
    nx: bool = False

    def command(self) -> Command:
        return _set_command(self.key, self.value, self.ttl, self.nx)

    def parse(self, reply: Any) -> bool:
        return reply is not None and reply is not False

    def apply(self, store: Store) -> bool:
        if self.nx and store.read(self.key) is not None:
            return False
        store.write(self.key, self.value, self.ttl)
        return True


@dataclass(slots=True)
class SetMany(Op[None]):
    """Several ``SET``s in one pipelined round trip (not atomic, like MSET on Cluster)."""

    items: Sequence[tuple[str, bytes, float | None]]

    kind = "pipeline"

    def pipeline(self) -> list[Command]:
        return [_set_command(key, value, ttl, False) for key, value, ttl in self.items]

    def parse(self, reply: Any) -> None:
        return None

    def apply(self, store: Store) -> None:
        for key, value, ttl in self.items:
            store.write(key, value, ttl)


@dataclass(slots=True)
class Delete(Op[int]):
    """``UNLINK keys...``; how many existed."""

    keys: Sequence[str]

    def command(self) -> Command:
        return ("UNLINK", *self.keys)

    def parse(self, reply: Any) -> int:
        return int(reply)

    def apply(self, store: Store) -> int:
        return sum(store.remove(key) for key in self.keys)


_COMPARE_AND_SET = Script(
    """
-- KEYS[1] the key to write, KEYS[2] the guard key (may be KEYS[1])
-- ARGV[1] the value the guard must hold, ARGV[2] the new value, ARGV[3] TTL in ms (0: none)
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if ARGV[3] == '0' then redis.call('SET', KEYS[1], ARGV[2])
else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
return 1
"""
)


@dataclass(slots=True)
class CompareAndSet(Op[bool]):
    """Write ``key`` only if ``guard`` (default: ``key``) holds ``expected``, atomically.

    The guard must share the key's hash slot on Cluster (cachekit's derived keys do).
    """

    key: str
    value: bytes
    ttl: float | None
    expected: bytes
    guard: str | None = None

    kind = "script"
    script = _COMPARE_AND_SET

    def script_call(self) -> tuple[Sequence[str], Sequence[Any]]:
        ttl = 0 if self.ttl is None else ms(self.ttl)
        return (self.key, self.guard or self.key), (self.expected, self.value, ttl)

    def parse(self, reply: Any) -> bool:
        return bool(reply)

    def apply(self, store: Store) -> bool:
        if store.read(self.guard or self.key) != self.expected:
            return False
        store.write(self.key, self.value, self.ttl)
        return True


_DELETE_IF_EQUAL = Script(
    """
-- KEYS[1] the key; ARGV[1] the value it must hold to be deleted
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
)


@dataclass(slots=True)
class DeleteIfEqual(Op[bool]):
    """Delete ``key`` only if it holds ``expected`` (a lock release)."""

    key: str
    expected: bytes

    kind = "script"
    script = _DELETE_IF_EQUAL

    def script_call(self) -> tuple[Sequence[str], Sequence[Any]]:
        return (self.key,), (self.expected,)

    def parse(self, reply: Any) -> bool:
        return bool(reply)

    def apply(self, store: Store) -> bool:
        return store.read(self.key) == self.expected and store.remove(self.key)


_EXPIRE_IF_EQUAL = Script(
    """
-- KEYS[1] the key; ARGV[1] the value it must hold, ARGV[2] the new TTL in ms
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
)


@dataclass(slots=True)
class ExpireIfEqual(Op[bool]):
    """Reset the TTL of ``key`` only if it holds ``expected`` (a lock extension)."""

    key: str
    expected: bytes
    ttl: float

    kind = "script"
    script = _EXPIRE_IF_EQUAL

    def script_call(self) -> tuple[Sequence[str], Sequence[Any]]:
        return (self.key,), (self.expected, ms(self.ttl))

    def parse(self, reply: Any) -> bool:
        return bool(reply)

    def apply(self, store: Store) -> bool:
        return store.read(self.key) == self.expected and store.expire(self.key, self.ttl)


@dataclass(slots=True)
class Incr(Op[int]):
    """``INCR key``: the new value (fencing tokens, tag versions)."""

    key: str

    def command(self) -> Command:
        return ("INCR", self.key)

    def parse(self, reply: Any) -> int:
        return int(reply)

    def apply(self, store: Store) -> int:
        current = store.read(self.key)
        value = (int(current) if current is not None else 0) + 1
        remaining = store.remaining(self.key)
        store.write(self.key, b"%d" % value, None if remaining in (None, math.inf) else remaining)
        return value


@dataclass(slots=True)
class Ttl(Op[float | None]):
    """``PTTL key`` in seconds: ``math.inf`` without expiry, ``None`` when absent."""

    key: str

    def command(self) -> Command:
        return ("PTTL", self.key)

    def parse(self, reply: Any) -> float | None:
        ms = int(reply)
        if ms == -2:
            return None
        return math.inf if ms == -1 else ms / 1000

    def apply(self, store: Store) -> float | None:
        return store.remaining(self.key)


@dataclass(slots=True)
class Publish(Op[int]):
    """``PUBLISH channel message``: how many subscribers got it (memory: in-process)."""

    channel: str
    message: str

    def command(self) -> Command:
        return ("PUBLISH", self.channel, self.message)

    def parse(self, reply: Any) -> int:
        return int(reply)

    def apply(self, store: Store) -> int:
        store.publish(self.channel, self.message)
        return 1


@dataclass(slots=True)
class Ping(Op[bool]):
    """``PING``: whether the backend answers."""

    def command(self) -> Command:
        return ("PING",)

    def parse(self, reply: Any) -> bool:
        return True

    def apply(self, store: Store) -> bool:
        return True
