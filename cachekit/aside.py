"""The cache-aside flow, written once as sans-I/O generators, and its two thin drivers.

A flow is a generator that *yields* what it needs done — a backend
:class:`~cachekit.backends.ops.Op`, or :data:`LOAD` to call the wrapped function — and is
sent the result (or has the error thrown into it). It decides everything else: fresh or
miss, null markers, what to store and for how long, which failures to swallow. The
drivers :func:`drive_sync` and :func:`drive_async` only perform the I/O, so ``def`` and
``async def`` callers get the same semantics by construction, and unit tests can step a
flow by hand. The protections (Bloom gate, lease lock, stale window, jitter) extend these
flows; they are never written twice.

Failure policy: reads fail open (a backend error is a miss, counted as ``fallbacks`` and
logged once); writes after a load never fail the caller; explicit writes through the raw
API raise :class:`~cachekit.exceptions.BackendError`.

Usage::

    flow = cached_read(ctx, policy, "product:5")
    value = drive_sync(flow, backend, lambda: load_product(5))
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias, TypeVar

from .backends.base import AsyncBackend, SyncBackend
from .backends.ops import Delete, Get, GetMany, Op, Set, SetMany
from .clock import Clock
from .envelope import Envelope, InvalidPayload, decode, encode
from .exceptions import BackendError, SerializationError
from .keys import KeySpace
from .serializers import Serializer
from .stats import LogOnce, Stats

__all__ = [
    "LOAD",
    "MISSING",
    "Context",
    "Flow",
    "Policy",
    "cached_read",
    "delete",
    "drive_async",
    "drive_sync",
    "get",
    "get_many",
    "refresh",
    "set_many",
    "set_value",
]

T = TypeVar("T")
logger = logging.getLogger("cachekit")


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

Effect: TypeAlias = Op[Any] | Literal[_Signal.LOAD]
Flow: TypeAlias = Generator[Effect, Any, T]


@dataclass(frozen=True, slots=True, kw_only=True)
class Context:
    """What a flow may consult: key space, serializer, clock, counters, the log."""

    keyspace: KeySpace
    serializer: Serializer
    default_ttl: float
    clock: Clock
    stats: Stats
    log: LogOnce


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """How one decorated function is cached.

    ``serializer`` ``None`` means the cache's serializer at call time.
    """

    name: str
    ttl: float | None
    null_ttl: float
    serializer: Serializer | None = None


def _read_failed(ctx: Context, exc: BackendError) -> None:
    ctx.stats.incr("fallbacks")
    ctx.log.warning(("read", type(exc)), "cachekit: cache read failed open (%s)", exc)


def _decode(ctx: Context, key: str, raw: bytes, serializer: Serializer) -> Envelope | None:
    try:
        return decode(key, raw, serializer)
    except InvalidPayload as exc:
        ctx.stats.incr("invalid_payloads")
        ctx.log.warning(("invalid", str(exc)), "cachekit: ignored an invalid cached value: %s", exc)
        return None


def cached_read(ctx: Context, policy: Policy, logical: str) -> Flow[Any]:
    """The read path of a decorated call: fresh hit, null hit, or load and store."""
    key = ctx.keyspace.value(logical)
    serializer = policy.serializer or ctx.serializer
    try:
        raw = yield Get(key)
    except BackendError as exc:
        _read_failed(ctx, exc)
        raw = None
    if raw is not None:
        envelope = _decode(ctx, key, raw, serializer)
        if envelope is not None and envelope.is_fresh(ctx.clock.time()):
            ctx.stats.incr("null_hits" if envelope.is_null else "hits")
            return envelope.value
    ctx.stats.incr("misses")
    return (yield from _load_and_store(ctx, policy, key, serializer))


def refresh(ctx: Context, policy: Policy, logical: str) -> Flow[Any]:
    """Load now and overwrite the entry, whatever it holds."""
    key = ctx.keyspace.value(logical)
    return (yield from _load_and_store(ctx, policy, key, policy.serializer or ctx.serializer))


def _load_and_store(ctx: Context, policy: Policy, key: str, serializer: Serializer) -> Flow[Any]:
    started = ctx.clock.monotonic()
    try:
        value = yield LOAD
    except Exception:
        ctx.stats.incr("load_errors")  # and never cached: the error goes to the caller
        raise
    ctx.stats.incr("loads")
    if value is None and policy.null_ttl <= 0:
        return None
    ttl = policy.null_ttl if value is None else (policy.ttl or ctx.default_ttl)
    now = ctx.clock.time()
    try:
        data = encode(
            key,
            value,
            serializer,
            created=now,
            expires=now + ttl,
            load_time=ctx.clock.monotonic() - started,
            null=value is None,
        )
    except SerializationError as exc:
        ctx.stats.incr("unserializable")
        ctx.log.warning(
            ("unserializable", policy.name),
            "cachekit: %s returned a value that cannot be cached (%s); returned uncached",
            policy.name,
            exc,
        )
        return value
    try:
        yield Set(key, data, ttl)
    except BackendError as exc:
        ctx.stats.incr("write_errors")
        ctx.log.warning(("write", type(exc)), "cachekit: cache write skipped (%s)", exc)
    return value


def get(ctx: Context, logical: str, default: Any) -> Flow[Any]:
    """The fresh value stored under ``logical``, or ``default``; fails open."""
    key = ctx.keyspace.value(logical)
    try:
        raw = yield Get(key)
    except BackendError as exc:
        _read_failed(ctx, exc)
        return default
    return _fresh_value(ctx, key, raw, default)


def get_many(ctx: Context, logicals: Iterable[str]) -> Flow[dict[str, Any]]:
    """``{logical: value}`` for the keys holding fresh values; fails open."""
    names = list(logicals)
    if not names:
        return {}
    keys = [ctx.keyspace.value(name) for name in names]
    try:
        raws = yield GetMany(keys)
    except BackendError as exc:
        _read_failed(ctx, exc)
        return {}
    found = {}
    for name, key, raw in zip(names, keys, raws, strict=True):
        value = _fresh_value(ctx, key, raw, MISSING)
        if value is not MISSING:
            found[name] = value
    return found


def _fresh_value(ctx: Context, key: str, raw: bytes | None, default: Any) -> Any:
    if raw is None:
        ctx.stats.incr("misses")
        return default
    envelope = _decode(ctx, key, raw, ctx.serializer)
    if envelope is None or not envelope.is_fresh(ctx.clock.time()):
        ctx.stats.incr("misses")
        return default
    ctx.stats.incr("null_hits" if envelope.is_null else "hits")
    return envelope.value


def _encode_for_set(ctx: Context, key: str, value: Any, ttl: float | None) -> tuple[bytes, float]:
    ttl = ctx.default_ttl if ttl is None else ttl
    now = ctx.clock.time()
    return encode(key, value, ctx.serializer, created=now, expires=now + ttl), ttl


def set_value(ctx: Context, logical: str, value: Any, ttl: float | None) -> Flow[None]:
    """Store ``value`` for ``ttl`` seconds (the default TTL when ``None``); raises on errors."""
    key = ctx.keyspace.value(logical)
    data, seconds = _encode_for_set(ctx, key, value, ttl)
    yield Set(key, data, seconds)


def set_many(ctx: Context, values: Mapping[str, Any], ttl: float | None) -> Flow[None]:
    """Store every item of ``values`` in one round trip; raises on errors."""
    items = []
    for logical, value in values.items():
        key = ctx.keyspace.value(logical)
        data, seconds = _encode_for_set(ctx, key, value, ttl)
        items.append((key, data, seconds))
    if items:
        yield SetMany(items)


def delete(ctx: Context, logical: str) -> Flow[bool]:
    """Remove the entry under ``logical``; whether there was one. Raises on errors."""
    removed = yield Delete([ctx.keyspace.value(logical)])
    return bool(removed)


def _no_load() -> Any:
    raise TypeError("this flow has no loader")


async def _no_async_load() -> Any:
    raise TypeError("this flow has no loader")


def drive_sync(flow: Flow[T], backend: SyncBackend, load: Callable[[], Any] = _no_load) -> T:
    """Run ``flow`` to completion, performing its effects with blocking calls."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            effect = flow.send(reply) if error is None else flow.throw(error)
        except StopIteration as stop:
            result: T = stop.value
            return result
        error = None
        try:
            reply = load() if effect is LOAD else backend.run(effect)
        except BaseException as exc:  # handed to the flow, which re-raises what it can't handle
            reply, error = None, exc


async def drive_async(
    flow: Flow[T], backend: AsyncBackend, load: Callable[[], Awaitable[Any]] = _no_async_load
) -> T:
    """Run ``flow`` to completion, awaiting its effects."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            effect = flow.send(reply) if error is None else flow.throw(error)
        except StopIteration as stop:
            result: T = stop.value
            return result
        error = None
        try:
            reply = await (load() if effect is LOAD else backend.run(effect))
        except BaseException as exc:  # handed to the flow, which re-raises what it can't handle
            reply, error = None, exc
