"""What a flow may ask its driver to do, besides a backend operation.

A flow (:mod:`cachekit.flow.read`, :mod:`cachekit.flow.raw`, :mod:`cachekit.flow.lock`) is a
generator that yields effects and is sent their results; :mod:`cachekit.drivers.drive`
performs them, with blocking calls or awaits. Backend operations
(:class:`~cachekit.backends.ops.Op`) are effects too; the ones here are the driver's own
business:

* :data:`LOAD` - call the wrapped function; the result is sent back.
* :class:`Read` - ``GET`` a key, sharing the reply with this process's other readers of it.
* :class:`Watch` - start collecting wake-ups for a key; a handle is sent back.
* :class:`Listen` - make sure this process listens to the cache's channel.
* :class:`Wait` - wait on a handle until woken or a timeout; whether it was woken.
* :class:`Hold` - keep a lease alive (a watchdog) until the flow ends.
* :class:`Join` - run a sub-flow as this process's single flight for a key.
* :class:`Spawn` - run a sub-flow in the background, at most one per key per process.
* :class:`Later` - run a backend operation later (retried with backoff if it fails).
* :class:`Forget` - a key was written: new callers share no read (nor flight) begun before.

Usage::

    def flow() -> Flow[bytes | None]:
        handle = yield Watch(key)
        yield Wait(handle, 0.5)
        return (yield Get(key))
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias, TypeVar

from cachekit.backends.ops import Op

__all__ = [
    "BACKOFF",
    "CONTROL",
    "LOAD",
    "MISSING",
    "Effect",
    "Flow",
    "Forget",
    "Hold",
    "Join",
    "Later",
    "Listen",
    "Read",
    "Spawn",
    "Wait",
    "Watch",
]

T = TypeVar("T")


class _Signal(enum.Enum):
    LOAD = "load"


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


LOAD: Final = _Signal.LOAD
"""Yielded by a flow to ask its driver for the wrapped function's result."""

MISSING: Final[Any] = _Missing()
"""``cache.get(key, MISSING)`` returns this on a miss, so ``None`` can be a cached value."""


@dataclass(slots=True)
class Read:
    """``GET key``, coalesced: callers of this process that ask while a read of ``key`` is
    in flight share its reply, unless this process completed a write of ``key`` (a
    :class:`Forget`) after that read began (:mod:`cachekit.drivers.singleflight`)."""

    key: str


@dataclass(slots=True)
class Watch:
    """Collect wake-ups for ``key`` from now on (until the flow ends)."""

    key: str


@dataclass(slots=True)
class Listen:
    """Start the cache's one subscription if it is not running yet."""


@dataclass(slots=True)
class Wait:
    """Wait on a :class:`Watch` handle for at most ``timeout`` seconds."""

    handle: Any
    timeout: float


@dataclass(slots=True)
class Hold:
    """Renew the lease ``key`` (holding ``token``) every ``ttl / 3`` until the flow ends.

    A lease taken on ``probation`` (for only that long) is renewed first within it, which
    confirms it (:func:`cachekit.drivers.watchdog.first_renewal`).
    """

    key: str
    token: bytes
    ttl: float
    probation: float | None = None


@dataclass(slots=True)
class Join:
    """Run ``flow`` once per process for ``key``; concurrent joiners share its outcome.

    A joiner takes the outcome only if ``reuse`` (when given) accepts it; else it runs
    its own ``flow``.
    """

    key: str
    flow: Generator[Any, Any, Any]
    reuse: Callable[[Any], bool] | None = None


@dataclass(slots=True)
class Spawn:
    """Run ``flow`` in the background (skipped if one runs for ``key`` in this process)."""

    key: str
    flow: Generator[Any, Any, Any]


@dataclass(slots=True)
class Forget:
    """This process wrote ``key`` (every key, for ``None``): new callers must not share a
    :class:`Read` begun before now, nor (``flights``) join a running flight of it."""

    key: str | None
    flights: bool = True


BACKOFF: Final = (1.0, 5.0, 30.0, 60.0)
"""Seconds before each retry of a :class:`Later` write that failed (the last one repeats)."""


@dataclass(slots=True)
class Later:
    """Run ``op`` in ``delay`` seconds, off the caller's path; retried if it fails.

    ``backoff`` is the retry schedule (seconds before each retry, the last one repeating):
    :data:`BACKOFF` for writes that matter however late they land; a shorter one for an
    operation that is only useful for a while, like the release of a lease that lapses.
    """

    op: Op[Any]
    delay: float
    backoff: tuple[float, ...] = BACKOFF


Effect: TypeAlias = (
    Op[Any]
    | Literal[_Signal.LOAD]
    | Read
    | Watch
    | Listen
    | Wait
    | Hold
    | Join
    | Spawn
    | Later
    | Forget
)
Flow: TypeAlias = Generator[Effect, Any, T]
CONTROL: Final = frozenset({Read, Watch, Listen, Wait, Hold, Join, Spawn, Later, Forget})
