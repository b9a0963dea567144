"""The cache-aside read path of decorated functions, written once as sans-I/O flows.

A flow is a generator that yields what it needs done (a backend operation, a call of the
wrapped function, a wait, a background task: see :mod:`cachekit.flow.effects`) and is sent the
result. It decides everything else; :mod:`cachekit.drivers.drive` only performs the I/O, so
``def`` and ``async def`` callers get the same semantics by construction.

The read path (DESIGN.md, "Read path"):

1. One GET. Fresh: return it (and maybe start an early refresh, XFetch). Stale but inside
   the stale window: return it at once and spawn one background rebuild. A null marker
   is a hit whose value is ``None``.
2. Miss: join this process's flight for the key. The flight takes the lease; the winner
   re-reads, loads and fills under the lease (a fill whose lease was voided by an
   invalidation is refused: no stale set), which wakes the waiters; the others wait,
   bounded, and read what it wrote. When the wait runs out: a stale value if one was
   seen, else load without caching or raise, as the policy says.

Failure policy: reads fail open (a backend error is a miss, counted as ``fallbacks`` and
logged once), a lease that cannot be taken because the backend fails means loading without
it (the in-process flight still protects the database), and writes after a load never
fail the caller. A lease refused by an error answer (out of memory) is a skipped write,
not a failed read. A lease this flow may hold but can no longer use (a lease or fill
request that timed out, a load that was cancelled) is released, token-checked, so the
key's next callers need not wait for it to lapse. That release may run before the server
runs the request it undoes (a paused server answers both later, in either order), so every
lease is taken on probation (:data:`~cachekit.backends.ops.leases.LEASE_PROBATION`, confirmed
by its holder's watchdog): a lease nobody holds lapses within it, whatever ran first.

Usage::

    value = driver.drive(cached_read(ctx, policy, "product:5"), load)
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

from cachekit.backends.ops import Delete, Get
from cachekit.backends.ops.leases import LEASE_PROBATION, Fill, Release, TakeLease
from cachekit.backends.ops.tags import ReadTagged
from cachekit.bloom.flow import bloom_contains
from cachekit.exceptions import (
    BackendError,
    BackendUnavailable,
    CircuitOpen,
    ConfigurationError,
    LockTimeout,
    SerializationError,
    Uncacheable,
)
from cachekit.flow.context import Context, Policy, new_token
from cachekit.flow.effects import LOAD, Flow, Forget, Hold, Join, Later, Read, Spawn
from cachekit.flow.envelope import Envelope, InvalidPayload, SchemaMismatch, decode, encode
from cachekit.flow.lease import wait_for_lease, watch_lease
from cachekit.flow.ttl import jittered
from cachekit.serializers import Serializer

__all__ = [
    "cached_read",
    "decode_or_none",
    "lease_key",
    "read_envelope",
    "read_failed",
    "refresh",
    "write_failed",
]

RELEASE_BACKOFF = (0.05, 0.1, 0.2, 0.4, 0.8)
"""Retries of an abandoned lease's release: about every 0.8 s once past the first few, ten
in all (~5.5 s, longer than the default ``lock_ttl``)."""


def read_failed(ctx: Context, exc: BackendError) -> None:
    """Count and log (once) a read that failed open."""
    ctx.stats.incr("fallbacks")
    ctx.log.warning(("read", type(exc)), "cachekit: cache read failed open (%s)", exc)


def write_failed(ctx: Context, exc: BackendError) -> None:
    """Count and log (once) a write that was skipped: the caller still gets its value."""
    ctx.stats.incr("write_errors")
    ctx.log.warning(("write", type(exc)), "cachekit: cache write skipped (%s)", exc)


def decode_or_none(ctx: Context, key: str, raw: bytes, serializer: Serializer) -> Envelope | None:
    """The envelope in ``raw``, or ``None`` (counted, logged once) when it is invalid."""
    try:
        return decode(key, raw, serializer)
    except SchemaMismatch as exc:  # a model changed since it was written: just a miss
        ctx.stats.incr("schema_misses")
        ctx.log.warning(("schema", str(exc)[:80]), "cachekit: cached value skipped: %s", exc)
        return None
    except InvalidPayload as exc:
        ctx.stats.incr("invalid_payloads")
        ctx.log.warning(("invalid", str(exc)), "cachekit: ignored an invalid cached value: %s", exc)
        return None


def read_envelope(ctx: Context, key: str, serializer: Serializer) -> Flow[Envelope | None]:
    """GET and decode ``key``; ``None`` on a miss, a bad payload or a failed read."""
    try:
        raw = yield Get(key)
    except BackendError as exc:
        read_failed(ctx, exc)
        return None
    return None if raw is None else decode_or_none(ctx, key, raw, serializer)


class Address(NamedTuple):
    """Where a call's value lives and how it is checked: key, serializer, tag stamp."""

    key: str
    serializer: Serializer
    stamp: int = 0  # 0: untagged; else a digest of the call's tag versions when it read


def cached_read(
    ctx: Context,
    policy: Policy,
    logical: str,
    gate: object = None,
    tags: Sequence[str] = (),
    *,
    key: str | None = None,
) -> Flow[Any]:
    """A decorated call: Bloom gate, then hit, stale hit, or the single-flight miss path.

    ``tags`` are the call's rendered tags: the entry is valid only while none of them has
    been invalidated since it was written (its stamp matches the tags' current versions).
    ``key``: the storage key of ``logical`` when the caller rendered it already.
    """
    if policy.bloom is not None and not (yield from _admitted(ctx, policy, policy.bloom, gate)):
        return None
    if key is None:
        key = ctx.keyspace.value(logical)
    serializer = policy.serializer or ctx.serializer
    stamp = 0
    try:
        if tags:
            raw, stamp = yield from _read_tagged(ctx, key, tags)
        else:
            raw = yield Read(key)  # shared with this process's callers that ask meanwhile
    except BackendError as exc:
        read_failed(ctx, exc)
        # Redis is failing: no lease or write to attempt; the flight alone guards the source.
        # A running miss flight whose write-back was refused is not ours to share.
        return _unwrap((yield Join(key, _load_only(ctx), _shareable)))
    envelope = None if raw is None else decode_or_none(ctx, key, raw, serializer)
    if envelope is not None and envelope.stamp == stamp:
        now = ctx.clock.time()
        if envelope.is_fresh(now):
            if policy.early and _refresh_early(ctx, policy, envelope, now):
                yield Spawn(key, _rebuild(ctx, policy, Address(key, serializer, stamp), envelope))
            ctx.stats.incr("null_hits" if envelope.is_null else "hits")
            return envelope.value
        if now < envelope.expires + policy.stale:
            ctx.stats.incr("stale_hits")
            yield Spawn(key, _rebuild(ctx, policy, Address(key, serializer, stamp), envelope))
            return envelope.value
    else:
        envelope = None  # a tag it carried was invalidated: not even stale
    ctx.stats.incr("misses")
    flow = _miss(ctx, policy, Address(key, serializer, stamp), envelope)
    return _unwrap((yield Join(key, flow, _shareable)))


class Stale(NamedTuple):
    """A load whose write-back was refused: an invalidation came while it ran.

    Its own caller, who asked before the invalidation, may have the value; a caller who
    merely joined the flight may have asked after it, so it loads again.
    """

    value: Any


def _shareable(outcome: Any) -> bool:
    return not isinstance(outcome, Stale)


def _unwrap(outcome: Any) -> Any:
    return outcome.value if isinstance(outcome, Stale) else outcome


def _read_tagged(ctx: Context, key: str, tags: Sequence[str]) -> Flow[tuple[bytes | None, int]]:
    """The value and the stamp of the tags' current versions, in one round trip."""
    tag_keys = [ctx.keyspace.namespaced("tag", tag) for tag in tags]
    raw, versions = yield ReadTagged(key, tag_keys, [new_token() for _ in tags])
    return raw, tag_stamp(versions)


def tag_stamp(versions: Sequence[bytes]) -> int:
    """A nonzero 64-bit digest of tag versions, stored in (and compared with) an envelope."""
    digest = hashlib.blake2b(b"\0".join(versions), digest_size=8).digest()
    return int.from_bytes(digest, "big") or 1


def _admitted(ctx: Context, policy: Policy, name: str, item: object) -> Flow[bool]:
    """Whether ``item`` may exist; a certain miss is counted and maybe raised."""
    state = ctx.blooms.get(name)
    if state is None:
        raise ConfigurationError(
            f"{policy.name} uses Bloom filter {name!r}: declare it with cache.bloom({name!r}, ...)"
        )
    if (yield from bloom_contains(ctx, state, item)):
        return True
    ctx.stats.incr("bloom_rejects")
    if policy.bloom_reject is not None:
        raise policy.bloom_reject(f"{item!r} does not exist ({name} Bloom filter)")
    return False


def refresh(ctx: Context, policy: Policy, logical: str, tags: Sequence[str] = ()) -> Flow[Any]:
    """Load now and overwrite the entry; voids fills from loads that began earlier."""
    key = ctx.keyspace.value(logical)
    stamp = 0
    try:
        yield Delete([lease_key(key)])
        if tags:
            _, stamp = yield from _read_tagged(ctx, key, tags)
    except BackendError as exc:
        read_failed(ctx, exc)
    target = Address(key, policy.serializer or ctx.serializer, stamp)
    return _unwrap((yield from _load_maybe_store(ctx, policy, target)))


def lease_key(key: str) -> str:
    """The lease guarding the value at ``key``."""
    return key + ":lease"  # same hash tag as the value: one Cluster slot


def _valid(ctx: Context, target: Address, raw: bytes | None) -> Envelope | None:
    """The envelope in ``raw`` if it decodes and carries the target's tag stamp."""
    envelope = None if raw is None else decode_or_none(ctx, target.key, raw, target.serializer)
    return envelope if envelope is not None and envelope.stamp == target.stamp else None


def _fresh(ctx: Context, target: Address, raw: bytes | None) -> Envelope | None:
    envelope = _valid(ctx, target, raw)
    return envelope if envelope is not None and envelope.is_fresh(ctx.clock.time()) else None


def _refresh_early(ctx: Context, policy: Policy, envelope: Envelope, now: float) -> bool:
    """XFetch (Vattani et al., VLDB 2015): refresh when ``now - Δ·β·ln(u) >= expiry``."""
    if not envelope.expires or envelope.is_null:
        return False
    u = 1.0 - ctx.random.random()  # in (0, 1]: log is defined
    return now - envelope.load_time * policy.early * math.log(u) >= envelope.expires


def _miss(ctx: Context, policy: Policy, target: Address, seen: Envelope | None) -> Flow[Any]:
    """This process's flight for a missing key: lease, load and fill, or wait for one."""
    if not policy.lock:
        return (yield from _load_maybe_store(ctx, policy, target))
    key = target.key
    lease, token = lease_key(key), new_token()
    waiting = yield from watch_lease(ctx, key, policy.lock_wait)
    while True:
        try:
            got = yield _take_lease(policy, lease, token, key)
        except BackendError as exc:
            yield from _lease_failed(ctx, key, (lease, token), exc)
            # No lease to be had: the flight alone guards the source, and nothing is stored.
            return (yield from _load_only(ctx))
        if got.acquired:
            # Someone may have filled the key between our miss and our lease.
            fresh = _fresh(ctx, target, got.value)
            if fresh is not None:
                yield from _release(ctx, key, (lease, token))
                return fresh.value
            return (yield from _load_and_store(ctx, policy, target, (lease, token)))
        if not (yield from wait_for_lease(ctx, waiting, got.remaining)):
            break
        try:
            envelope = _valid(ctx, target, (yield Get(key)))
        except BackendError as exc:
            read_failed(ctx, exc)
            envelope = None
        if envelope is not None:
            if envelope.is_fresh(ctx.clock.time()):
                return envelope.value
            seen = envelope
    if seen is not None:
        return seen.value  # a stale value beats making the caller wait longer
    if policy.on_lock_timeout == "raise":
        raise LockTimeout(
            f"{policy.name}: gave up waiting {policy.lock_wait}s for another load", name=key
        )
    return (yield from _load_only(ctx))  # serve the caller, but leave the fill to the holder


def _take_lease(policy: Policy, lease: str, token: bytes, key: str) -> TakeLease:
    """The lease request of a read path, on probation: a request the server runs after we
    gave up on it (a paused or stopped server) takes a lease that lapses within
    :data:`LEASE_PROBATION`, not after ``lock_ttl``; ``Hold`` confirms ours."""
    return TakeLease(lease, token, policy.lock_ttl, key, probation=LEASE_PROBATION)


def _rebuild(ctx: Context, policy: Policy, target: Address, seen: Envelope) -> Flow[float]:
    """A background rebuild of ``seen``: one per key across the fleet, never failing callers.

    Returns how long this process need not try again (another holder's lease), or 0.
    """
    key = target.key
    lease, token = lease_key(key), new_token()
    try:
        got = yield _take_lease(policy, lease, token, key)
    except BackendError as exc:
        yield from _lease_failed(ctx, key, (lease, token), exc)
        return 0.0
    if not got.acquired:
        remaining: float = got.remaining  # another process is rebuilding it
        return remaining
    current = _valid(ctx, target, got.value)
    if current is not None and current.created > seen.created:
        # Rebuilt by another process between our read and our lease: nothing to do.
        yield from _release(ctx, key, (lease, token))
        return 0.0
    ctx.stats.incr("rebuilds")
    try:
        yield from _load_and_store(ctx, policy, target, (lease, token))
    except Exception as exc:  # stale-if-error: the old value keeps being served
        ctx.log.warning(
            ("rebuild", policy.name), "cachekit: background rebuild of %s failed: %r", key, exc
        )
    return 0.0


def _load_maybe_store(ctx: Context, policy: Policy, target: Address) -> Flow[Any]:
    """Load without waiting for anyone; store only under a lease taken without waiting.

    Every write of a loaded value is checked against a lease, so no path can write back a
    value read before an invalidation (no stale sets, whatever the options).
    """
    lease, token = lease_key(target.key), new_token()
    try:
        got = yield _take_lease(policy, lease, token, target.key)
    except BackendError as exc:
        yield from _lease_failed(ctx, target.key, (lease, token), exc)
        got = None
    if got is None or not got.acquired:
        return (yield from _load_only(ctx))  # another process loads (and stores) it
    return (yield from _load_and_store(ctx, policy, target, (lease, token)))


def _load_only(ctx: Context) -> Flow[Any]:
    value, _ = yield from _load(ctx)
    return value


def _load(ctx: Context) -> Flow[tuple[Any, float]]:
    started = ctx.clock.monotonic()
    try:
        value = yield LOAD
    except Exception:
        ctx.stats.incr("load_errors")  # and never cached: the error goes to the caller
        raise
    ctx.stats.incr("loads")
    return value, ctx.clock.monotonic() - started


def _load_and_store(
    ctx: Context, policy: Policy, target: Address, lease: tuple[str, bytes]
) -> Flow[Any]:
    key = target.key
    # A load slower than the lease must not lose it: renew until the flow ends. The first
    # renewal also confirms a lease taken on probation (cachekit.drivers.watchdog).
    yield Hold(lease[0], lease[1], policy.lock_ttl, probation=LEASE_PROBATION)
    try:
        value, load_time = yield from _load(ctx)
    except Exception:
        yield from _release(ctx, key, lease)  # let a waiter try its own load
        raise
    except GeneratorExit:
        raise  # closed, not driven: nothing can be yielded now; the lease lapses
    except BaseException:
        # Cancelled (or interrupted): release without awaiting a round trip, off the
        # caller's path, so the key's next callers need not wait for the lease to lapse.
        yield from _abandon(ctx, key, lease)
        raise
    entry = _entry(ctx, policy, target, value, load_time)
    try:
        if entry is None:
            yield from _release(ctx, key, lease)
        # A null marker never overwrites data (NX); any fill needs the lease still ours.
        elif not (yield Fill(key, *entry, lease[0], lease[1], ctx.channel, nx=value is None)):
            ctx.stats.incr("stale_sets_refused")  # invalidated (or lapsed) while loading
            return Stale(value)
    except BackendError as exc:
        write_failed(ctx, exc)
        # The fill may not have run (cut, paused server): the lease may still be ours.
        yield from _abandon(ctx, key, lease)
    if entry is not None:
        # Callers that come after ours got the value must not share a read sent before
        # the fill (a miss, or the stale value it replaced); the flight stays joinable.
        yield Forget(key, flights=False)
    return value


def _entry(
    ctx: Context, policy: Policy, target: Address, value: Any, load_time: float
) -> tuple[bytes, float] | None:
    """``(envelope bytes, physical TTL)`` to store, or ``None`` when nothing is stored."""
    if value is None and policy.null_ttl <= 0:
        return None
    spread = ctx.jitter if policy.jitter is None else policy.jitter
    base = policy.null_ttl if value is None else (policy.ttl or ctx.default_ttl)
    ttl = jittered(base, spread, ctx.random)
    now = ctx.clock.time()
    try:
        data = encode(
            target.key,
            value,
            target.serializer,
            created=now,
            expires=now + ttl,
            load_time=load_time,
            null=value is None,
            stamp=target.stamp,
        )
    except SerializationError as exc:
        ctx.stats.incr("uncacheable")
        reason = exc.describe(policy.name) if isinstance(exc, Uncacheable) else str(exc)
        ctx.log.warning(("uncacheable", policy.name), "cachekit: %s; returned uncached", reason)
        return None
    limit = policy.max_value_size or ctx.max_value_size
    if len(data) > limit:
        ctx.stats.incr("oversized_values")
        ctx.log.warning(
            ("oversized", policy.name),
            "cachekit: %s returned a value of %d bytes, over max_value_size (%d); "
            "returned uncached",
            policy.name,
            len(data),
            limit,
        )
        return None
    stale = jittered(policy.stale, spread, ctx.random) if value is not None else 0.0
    return data, ttl + stale


def _release(ctx: Context, key: str, lease: tuple[str, bytes]) -> Flow[None]:
    """Give the lease back and wake the key's waiters (one of them will load)."""
    try:
        yield Release(lease[0], lease[1], ctx.channel, key)
    except BackendError as exc:
        read_failed(ctx, exc)  # the lease lapses on its own


def _lease_failed(
    ctx: Context, key: str, lease: tuple[str, bytes], exc: BackendError
) -> Flow[None]:
    """Account for a :class:`TakeLease` that failed, and undo it if it may have been taken.

    An error answer (e.g. out of memory) means the server refused the script: the read
    worked, only the write it was for is skipped. Without an answer (timeout, lost
    connection) the server may still have taken the lease after we gave up; an open
    circuit sent nothing, so there is nothing to undo.
    """
    if not isinstance(exc, BackendUnavailable):
        write_failed(ctx, exc)
        return
    read_failed(ctx, exc)
    if not isinstance(exc, CircuitOpen):
        yield from _abandon(ctx, key, lease)


def _abandon(ctx: Context, key: str, lease: tuple[str, bytes]) -> Flow[None]:
    """Release a lease we may hold, off the caller's path and retried until Redis answers.

    Retried quickly (:data:`RELEASE_BACKOFF`): the key's waiters wait for this release or
    for the lease to lapse (``lock_ttl`` once the watchdog confirmed it), so a release
    retried at the writes' pace (1 s, then 5 s) would come after the lapse and be worth
    nothing to them.

    The release is token-checked, so it is harmless if the lease was never (or is no
    longer) ours. Later is scheduled at once by the driver, so this is safe to yield while
    a cancellation unwinds the flow.
    """
    yield Later(Release(lease[0], lease[1], ctx.channel, key), 0.0, RELEASE_BACKOFF)
