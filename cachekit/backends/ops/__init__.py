"""Backend operations, each written once: its Redis command and its in-memory meaning.

An operation is a small value object. A Redis backend sends :attr:`Op.command` (or the
pipeline of :attr:`Op.commands`, or the Lua :attr:`Op.script`) and hands the replies to
:meth:`Op.parse`; the memory backend calls :meth:`Op.apply` under its lock, which makes
every operation atomic there as a Lua script is in Redis. Keeping both meanings side by
side is what keeps the two backends' semantics equal; the contract suite checks it.

On Redis Cluster a backend runs :meth:`Op.for_cluster` instead: scripts that announce a
change then ``SPUBLISH`` it in their own slot (:mod:`.shards`).

Usage::

    raw = sync_backend.run(Get("p:{k}"))
    ok = await async_backend.run(Set("p:{k}", b"...", ttl=60, nx=True))
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar

__all__ = [
    "CompareAndSet",
    "Delete",
    "DeleteIfEqual",
    "ExpireIfEqual",
    "Get",
    "GetMany",
    "Incr",
    "Op",
    "Ping",
    "Publish",
    "Script",
    "Set",
    "SetMany",
    "Store",
    "Ttl",
    "ms",
]

T = TypeVar("T", covariant=True)
Command = tuple[Any, ...]
Kind = Literal["command", "pipeline", "script"]


class Store(Protocol):
    """The primitives an in-memory store offers to :meth:`Op.apply` (lock already held)."""

    def read(self, key: str) -> bytes | None:
        """The live value of ``key``."""
        ...

    def write(self, key: str, value: bytes, ttl: float | None) -> None:
        """Store ``value`` with ``ttl`` seconds to live (``None``: no expiry)."""
        ...

    def remove(self, key: str) -> bool:
        """Drop ``key``; whether it was live."""
        ...

    def expire(self, key: str, ttl: float | None) -> bool:
        """Set the TTL of a live ``key``; whether it was live."""
        ...

    def remaining(self, key: str) -> float | None:
        """Seconds ``key`` has left, ``math.inf`` without a TTL, ``None`` when absent."""
        ...

    def publish(self, channel: str, message: str) -> None:
        """Deliver ``message`` to this process's subscribers of ``channel``."""
        ...

    def now(self) -> float:
        """The store's wall-clock time (Redis scripts read ``TIME``)."""
        ...

    def live_keys(self) -> list[str]:
        """Every live key (``SCAN``'s meaning: a whole pass)."""
        ...


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script and its SHA1, sent by EVALSHA with an EVAL fallback."""

    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())  # noqa: S324 - Redis names scripts by SHA1


class Op(ABC, Generic[T]):
    """One backend operation returning ``T``.

    ``kind`` tells a Redis backend what to send: one :meth:`command`, a :meth:`pipeline` of
    commands in one round trip, or :attr:`script` with :meth:`script_call`'s keys and args.
    Subclasses are slotted dataclasses, not frozen ones: a frozen ``__init__`` costs a
    measurable share of a cache hit, and an op is never kept after it ran.
    """

    __slots__ = ()
    kind: ClassVar[Kind] = "command"
    script: ClassVar[Script | None] = None

    def command(self) -> Command:
        """The Redis command, for ``kind == "command"``."""
        raise TypeError(f"{type(self).__name__} is not a single command")

    def pipeline(self) -> list[Command]:
        """The Redis commands, for ``kind == "pipeline"``."""
        raise TypeError(f"{type(self).__name__} is not a pipeline")

    def script_call(self) -> tuple[Sequence[str], Sequence[Any]]:
        """``(KEYS, ARGV)`` for :attr:`script`, for ``kind == "script"``."""
        raise TypeError(f"{type(self).__name__} is not a script")

    def for_cluster(self) -> Op[T]:
        """This operation as Redis Cluster must run it (most are unchanged: ``self``)."""
        return self

    @abstractmethod
    def parse(self, reply: Any) -> T:
        """The result from the Redis reply (a list of replies for a pipeline)."""

    @abstractmethod
    def apply(self, store: Store) -> T:
        """The same operation on an in-memory store."""


def ms(ttl: float) -> int:
    if ttl <= 0:
        raise ValueError(f"a TTL must be positive, got {ttl}")
    # Redis TTLs are whole milliseconds; round up so a tiny TTL never becomes "no TTL".
    return math.ceil(ttl * 1000)


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
