"""The shape every backend operation has: :class:`Op`, :class:`Script`, the :class:`Store`
protocol the memory backend offers, and :func:`ms` (TTL seconds to Redis milliseconds).

Usage::

    class Get(Op[bytes | None]):
        def command(self) -> Command: return ("GET", self.key)
        def apply(self, store: Store) -> bytes | None: return store.get(self.key)
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar

__all__ = ["Command", "Kind", "Op", "Script", "Store", "ms"]

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
    creates_only: ClassVar[bool] = False
    """``True`` for an operation that may create missing keys but never changes or deletes
    one (as ``SET ... NX``): a near cache, which keeps no absent key, has nothing of it to
    invalidate or announce."""

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
