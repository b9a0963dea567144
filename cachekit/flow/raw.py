"""Flows of the raw API (``get``, ``set``, ``delete``, ``invalidate`` and the batch forms).

Reads fail open (a backend error is a miss); writes raise
:class:`~cachekit.exceptions.BackendError`, since the caller asked for them explicitly.

Usage::

    value = driver.drive(get(ctx, "greeting", None))
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from cachekit.backends.ops import Delete, GetMany, Op, Set, SetMany
from cachekit.backends.ops.leases import Invalidate
from cachekit.backends.ops.tags import RetireTags
from cachekit.exceptions import BackendError, Uncacheable
from cachekit.flow.codecs import codec_for
from cachekit.flow.context import Context, new_token
from cachekit.flow.effects import BACKOFF, MISSING, Flow, Forget, Later
from cachekit.flow.envelope import Envelope, encode
from cachekit.flow.read import decode_or_none, lease_key, read_envelope, read_failed
from cachekit.flow.ttl import jittered

__all__ = [
    "deferrable",
    "delete",
    "get",
    "get_many",
    "invalidate",
    "invalidate_tags",
    "set_many",
    "set_value",
]


def get(ctx: Context, logical: str, default: Any, tp: Any = None) -> Flow[Any]:
    """The fresh value stored under ``logical`` (decoded as ``tp``), or ``default``.

    Fails open; a value written for another type is a miss.
    """
    codec = codec_for(ctx.serializer, tp)
    envelope = yield from read_envelope(ctx, ctx.keyspace.value(logical), codec)
    return _fresh_value(ctx, envelope, default)


def get_many(ctx: Context, logicals: Iterable[str], tp: Any = None) -> Flow[dict[str, Any]]:
    """``{logical: value}`` for the keys holding fresh values (decoded as ``tp``)."""
    codec = codec_for(ctx.serializer, tp)
    names = list(logicals)
    if not names:
        return {}
    keys = [ctx.keyspace.value(name) for name in names]
    try:
        raws = yield GetMany(keys)
    except BackendError as exc:
        read_failed(ctx, exc)
        return {}
    found = {}
    for name, key, raw in zip(names, keys, raws, strict=True):
        envelope = None if raw is None else decode_or_none(ctx, key, raw, codec)
        value = _fresh_value(ctx, envelope, MISSING)
        if value is not MISSING:
            found[name] = value
    return found


def _fresh_value(ctx: Context, envelope: Envelope | None, default: Any) -> Any:
    if envelope is None or not envelope.is_fresh(ctx.clock.time()):
        ctx.stats.incr("misses")
        return default
    ctx.stats.incr("null_hits" if envelope.is_null else "hits")
    return envelope.value


def _encode(
    ctx: Context, key: str, value: Any, ttl: float | None, jitter: float | None, tp: Any
) -> tuple[bytes, float]:
    spread = ctx.jitter if jitter is None else jitter
    ttl = jittered(ctx.default_ttl if ttl is None else ttl, spread, ctx.random)
    now = ctx.clock.time()
    try:
        data = encode(key, value, codec_for(ctx.serializer, tp), created=now, expires=now + ttl)
    except Uncacheable as exc:
        if tp is not None or not exc.needs_type:
            raise  # a value that does not match its type=, or an ORM instance
        raise Uncacheable(
            f"cache.set was given {exc.problem}",
            f"pass its type, e.g. type={type(value).__name__}, to store it and read it back",
        ) from exc
    if len(data) > ctx.max_value_size:
        raise Uncacheable(
            f"cache.set was given {len(data)} bytes, over max_value_size ({ctx.max_value_size})"
        )
    return data, ttl


def set_value(
    ctx: Context,
    logical: str,
    value: Any,
    ttl: float | None,
    jitter: float | None = None,
    tp: Any = None,
) -> Flow[None]:
    """Store ``value`` (of type ``tp``) for ``ttl`` seconds, jittered; raises on errors."""
    key = ctx.keyspace.value(logical)
    yield Set(key, *_encode(ctx, key, value, ttl, jitter, tp))


def set_many(
    ctx: Context,
    values: Mapping[str, Any],
    ttl: float | None,
    jitter: float | None = None,
    tp: Any = None,
) -> Flow[None]:
    """Store every item of ``values`` in one round trip, each TTL jittered; raises on errors."""
    items = []
    for logical, value in values.items():
        key = ctx.keyspace.value(logical)
        items.append((key, *_encode(ctx, key, value, ttl, jitter, tp)))
    if items:
        yield SetMany(items)


def delete(ctx: Context, logical: str) -> Flow[bool]:
    """Remove the entry under ``logical``; whether there was one. Raises on errors."""
    removed = yield Delete([ctx.keyspace.value(logical)])
    return bool(removed)


def invalidate(ctx: Context, logical: str, double_delete: float | None = None) -> Flow[None]:
    """Remove the entry and void its lease, so a load in flight cannot write back.

    Never fails its caller: when Redis cannot be reached the delete is retried later
    (counted as ``deferred_retries``). ``double_delete`` seconds later it runs again, for
    replicas that lag and readers that refilled from one (default: the cache's, 0: off).
    """
    key = ctx.keyspace.value(logical)
    yield from deferrable(ctx, Invalidate([key, lease_key(key)], ctx.channel))
    yield Forget(key)  # a read after this returns must not join a load begun before it
    delay = ctx.double_delete if double_delete is None else double_delete
    if delay > 0:
        yield Later(Invalidate([key, lease_key(key)], ctx.channel), delay)


def invalidate_tags(ctx: Context, tags: Iterable[str]) -> Flow[None]:
    """Make every entry carrying one of ``tags`` a miss; never fails its caller."""
    tag_keys = [ctx.keyspace.namespaced("tag", tag) for tag in tags]
    if tag_keys:
        yield from deferrable(ctx, RetireTags(tag_keys, [new_token() for _ in tag_keys]))
        yield Forget(None)  # which keys carry the tags is unknown here: detach every flight


def deferrable(ctx: Context, op: Op[Any]) -> Flow[None]:
    """Run ``op`` now; if the backend fails, hand it to the retry queue instead of raising."""
    try:
        yield op
    except BackendError as exc:
        ctx.stats.incr("write_errors")
        ctx.log.warning(("deferred", type(exc)), "cachekit: write queued for retry (%s)", exc)
        yield Later(op, BACKOFF[0])
