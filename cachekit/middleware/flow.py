"""The response cache's decisions as sans-I/O flows, driven by the cache's async driver.

:func:`lookup` reads a path's generation, a URL's record and a variant in one script (one
round trip) and decides: serve it (:class:`Hit`), run the app and store the response
(:class:`Lead`, holding the variant's lease), or run the app without waiting
(:class:`Direct`). Concurrent misses of one key reuse :mod:`cachekit.flow.read`'s machinery:
an in-process :class:`~cachekit.flow.effects.Join` so a process's waiters share one wait,
the cross-process lease (:class:`~cachekit.backends.ops.leases.TakeLease`), and wake-ups on
the fill's notification (:class:`~cachekit.flow.effects.Watch` /
:class:`~cachekit.flow.effects.Wait`);
the wait is bounded, and a waiter that times out runs the app itself.

:func:`store`, :func:`give_up` and :func:`refresh` write what the app answered; every
entry is stamped with the generation read before the app ran, so one invalidated
meanwhile is never served (no stale set; :mod:`cachekit.middleware.invalidation`).

Usage::

    outcome = await driver.drive(lookup(ctx, settings, ask))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cachekit.backends.ops import Get, Set
from cachekit.backends.ops.leases import Fill, Release, TakeLease
from cachekit.backends.ops.responses import ReadResponse
from cachekit.exceptions import BackendError
from cachekit.flow.context import Context, new_token
from cachekit.flow.effects import LOAD, Flow, Hold, Join, Wait, Watch
from cachekit.flow.read import lease_key, read_failed, tag_stamp
from cachekit.middleware.directives import Headers
from cachekit.middleware.entry import (
    Entry,
    Record,
    RequestKeys,
    VaryValues,
    decode_entry,
    decode_record,
    encode_entry,
    encode_record,
    vary_values,
)

__all__ = [
    "Ask",
    "Direct",
    "Hit",
    "Lead",
    "ResponsePolicy",
    "give_up",
    "lookup",
    "refresh",
    "store",
]

_LEASE_MARGIN = 0.005  # wake a little after a holder's lease lapses


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponsePolicy:
    """The middleware's options that flows read (see ``ResponseCacheMiddleware``)."""

    lock_ttl: float
    lock_wait: float
    hit_for_miss: float
    generation_ttl: float
    encodings: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Ask:
    """One request as the lookup sees it; ``guess`` is the variant to prefetch.

    ``guess`` is ``(vary values, entry key)`` of the variant this URL served last here:
    when the request has the same values, the key needs no hashing.
    """

    target: RequestKeys
    headers: Headers
    authorized: bool
    coalesce: bool
    guess: tuple[VaryValues, str] | None = None
    reload: bool = False  # the client asked for a fresh answer and the app allows it


@dataclass(frozen=True, slots=True)
class Hit:
    """Serve ``entry``; ``stale`` when past its freshness, ``refresh`` to renew it meanwhile."""

    entry: Entry
    key: str
    stamp: int
    stale: bool = False
    refresh: bool = False


@dataclass(frozen=True, slots=True)
class Lead:
    """Run the app and store its answer: we hold the lease ``(lease, token)`` on ``key``."""

    key: str
    lease: str
    token: bytes
    stamp: int
    seen: Entry | None = None


@dataclass(frozen=True, slots=True)
class Direct:
    """Run the app without waiting; store its answer (unleased) only when ``store``."""

    stamp: int
    store: bool
    seen: Entry | None = None
    failed: bool = False  # the cache could not be read: a BYPASS


Outcome = Hit | Lead | Direct


@dataclass(frozen=True, slots=True)
class _Probe:
    stamp: int
    record: Record | None
    key: str  # the variant's entry key, or the record's key while no record is known
    entry: Entry | None
    raw: bytes | None = None  # the bytes read at ``key``


def _probe(ctx: Context, settings: ResponsePolicy, ask: Ask) -> Flow[_Probe]:
    target = ask.target
    generation, raw_record, raw_guess = yield ReadResponse(
        target.generation,
        target.record,
        new_token(),
        settings.generation_ttl,
        None if ask.guess is None else ask.guess[1],
    )
    stamp = tag_stamp((generation,))
    record = decode_record(target.record, raw_record, stamp)
    if record is None or record.uncacheable:
        return _Probe(stamp, record, target.record, None, raw_record)
    values = vary_values(record.vary, ask.headers, settings.encodings)
    if ask.guess is not None and ask.guess[0] == values:
        key, raw = ask.guess[1], raw_guess
    else:
        key = target.variant_key(values)
        raw = yield Get(key)
    entry = decode_entry(key, raw, stamp)
    if entry is not None and not entry.matches(target.url, values):
        ctx.stats.incr("invalid_payloads")  # stored for another request: never served (R10)
        entry = None
    return _Probe(stamp, record, key, entry, raw)


def _serve(ctx: Context, ask: Ask, probe: _Probe) -> Hit | Direct | None:
    """A verdict from what was read, or ``None`` for a miss that may wait."""
    if probe.record is not None and probe.record.uncacheable:
        return Direct(probe.stamp, store=True)  # hit-for-miss: nobody queues behind it
    entry = probe.entry
    if entry is None or ask.reload or (ask.authorized and not entry.shared_authorized):
        return None
    now = ctx.clock.time()
    if now < entry.expires:
        ctx.stats.incr("hits")
        return Hit(entry, probe.key, probe.stamp)
    if now < entry.expires + entry.stale_while_revalidate:
        ctx.stats.incr("stale_hits")
        return Hit(entry, probe.key, probe.stamp, stale=True, refresh=True)
    return None


def _usable_stale(ctx: Context, entry: Entry | None) -> bool:
    return entry is not None and ctx.clock.time() < entry.expires + entry.stale_if_error


def lookup(ctx: Context, settings: ResponsePolicy, ask: Ask) -> Flow[Outcome]:
    """What to do with a GET or HEAD: serve a stored response, lead, or go to the app."""
    try:
        probe = yield from _probe(ctx, settings, ask)
    except BackendError as exc:
        read_failed(ctx, exc)
        return Direct(0, store=False, failed=True)
    verdict = _serve(ctx, ask, probe)
    if verdict is not None:
        return verdict
    ctx.stats.incr("misses")
    if ask.authorized or not ask.coalesce:
        return Direct(probe.stamp, store=True, seen=probe.entry)
    url = ask.target.url

    def fits(outcome: Any) -> bool:
        # A joined outcome is ours only if it is a response stored for a request like ours.
        if not isinstance(outcome, Hit):
            return False
        values = vary_values(outcome.entry.vary_names, ask.headers, settings.encodings)
        return outcome.entry.matches(url, values)

    outcome: Outcome = yield Join(probe.key, _coalesce(ctx, settings, ask, probe), fits)
    return outcome


def _coalesce(ctx: Context, settings: ResponsePolicy, ask: Ask, probe: _Probe) -> Flow[Outcome]:
    """Take the key's lease and lead, or wait (bounded) for its holder's fill."""
    key, seen = probe.key, probe.entry
    token = new_token()
    handle = yield Watch(key)  # before the lease attempt: a fill from now on wakes us
    deadline = ctx.clock.monotonic() + settings.lock_wait
    waited = False
    while True:
        lease = lease_key(key)
        try:
            got = yield TakeLease(lease, token, settings.lock_ttl, key)
        except BackendError as exc:
            read_failed(ctx, exc)
            return Direct(probe.stamp, store=False, seen=seen, failed=True)
        if got.acquired:
            if got.value is None or (got.value == probe.raw and probe.key == key):
                return Lead(key, lease, token, probe.stamp, seen)
            # The key was filled between our read and our lease (the holder stored and
            # released just before we asked): serve that fill rather than run the app again.
            try:
                probe = yield from _probe(ctx, settings, ask)
                verdict = _serve(ctx, ask, probe)
                if verdict is None:
                    return Lead(key, lease, token, probe.stamp, probe.entry or seen)
                yield Release(lease, token, ctx.channel, key)
            except BackendError as exc:
                read_failed(ctx, exc)
                return Direct(probe.stamp, store=False, seen=seen, failed=True)
            return verdict
        if not waited:
            ctx.stats.incr("lock_waits")
            waited = True
        remaining = deadline - ctx.clock.monotonic()
        if remaining <= 0:
            break
        yield Wait(handle, min(remaining, got.remaining + _LEASE_MARGIN))
        try:
            probe = yield from _probe(ctx, settings, ask)
        except BackendError as exc:
            read_failed(ctx, exc)
            return Direct(0, store=False, seen=seen, failed=True)
        verdict = _serve(ctx, ask, probe)
        if verdict is not None:
            return verdict
        seen = probe.entry or seen
        if probe.key != key:  # the record appeared: our variant has a key of its own now
            key = probe.key
            handle = yield Watch(key)
    ctx.stats.incr("lock_timeouts")
    if seen is not None and _usable_stale(ctx, seen):
        return Hit(seen, key, probe.stamp, stale=True)  # stale beats waiting longer
    return Direct(probe.stamp, store=False, seen=seen)


def store(
    ctx: Context,
    target: RequestKeys,
    entry_key: str,
    entry: Entry,
    stamp: int,
    lead: Lead | None,
) -> Flow[bool]:
    """Write ``entry`` and the URL's record; under ``lead``'s lease when there is one.

    The key the lease guards is written last, by :class:`Fill`, whose notification wakes
    the waiters: by then the other key is in place. Never raises.
    """
    ttl = max(entry.lifetime(), 0.001)
    now = ctx.clock.time()
    record = encode_record(target.record, Record(entry.vary_names), now=now, stamp=stamp)
    data = encode_entry(entry_key, entry, stamp=stamp)
    try:
        if lead is None:
            yield Set(entry_key, data, ttl)
            yield Set(target.record, record, ttl)
            return True
        if lead.key == entry_key:
            yield Set(target.record, record, ttl)
            filled = yield Fill(entry_key, data, ttl, lead.lease, lead.token, ctx.channel)
        elif lead.key == target.record:
            yield Set(entry_key, data, ttl)
            filled = yield Fill(target.record, record, ttl, lead.lease, lead.token, ctx.channel)
        else:  # the app changed its Vary: our lease guards a key we no longer fill
            yield Set(entry_key, data, ttl)
            yield Set(target.record, record, ttl)
            yield Release(lead.lease, lead.token, ctx.channel, lead.key)
            return True
        if not filled:
            ctx.stats.incr("stale_sets_refused")  # the lease lapsed: another may be filling
        return bool(filled)
    except BackendError as exc:
        _write_failed(ctx, exc)
        return False


def give_up(
    ctx: Context,
    settings: ResponsePolicy,
    target: RequestKeys,
    stamp: int,
    lead: Lead | None,
    remember: bool,
) -> Flow[None]:
    """Nothing will be stored: release the lease, and ``remember`` the URL as hit-for-miss.

    A hit-for-miss record lets later requests go straight to the app for a while instead
    of queueing behind a lease for a response that will not be stored.
    """
    if remember:
        ctx.stats.incr("http_uncacheable")
    try:
        if remember and settings.hit_for_miss > 0:
            marker = encode_record(
                target.record, Record(uncacheable=True), now=ctx.clock.time(), stamp=stamp
            )
            if lead is not None and lead.key == target.record:
                yield Fill(
                    target.record,
                    marker,
                    settings.hit_for_miss,
                    lead.lease,
                    lead.token,
                    ctx.channel,
                )
                return
            yield Set(target.record, marker, settings.hit_for_miss)
        if lead is not None:
            yield Release(lead.lease, lead.token, ctx.channel, lead.key)
    except BackendError as exc:
        _write_failed(ctx, exc)


def _write_failed(ctx: Context, exc: BackendError) -> None:
    ctx.stats.incr("write_errors")
    ctx.log.warning(("http-write", type(exc)), "cachekit: response not stored (%s)", exc)


Build = Callable[[Any], "tuple[str, Entry] | bool"]
"""Turns what the app answered (the LOAD result) into ``(entry key, entry)``, or a bool:
``True`` when the answer must not be stored and the URL is remembered as hit-for-miss,
``False`` when it failed (the stale entry keeps being served)."""


def refresh(
    ctx: Context,
    settings: ResponsePolicy,
    target: RequestKeys,
    hit: Hit,
    lock_ttl: float,
    build: Build,
) -> Flow[float]:
    """A background refresh of a stale ``hit``: one per key across the fleet.

    The LOAD effect runs the app on a copy of the request. Returns how long this process
    need not try again (another holder's lease), or 0, as :func:`cachekit.flow.read` rebuilds do.
    """
    lease, token = lease_key(hit.key), new_token()
    try:
        got = yield TakeLease(lease, token, lock_ttl, hit.key)
    except BackendError as exc:
        read_failed(ctx, exc)
        return 0.0
    if not got.acquired:
        remaining: float = got.remaining
        return remaining
    lead = Lead(hit.key, lease, token, hit.stamp, hit.entry)
    current = decode_entry(hit.key, got.value, hit.stamp)
    if current is not None and current.created > hit.entry.created:
        yield from give_up(ctx, settings, target, hit.stamp, lead, remember=False)
        return 0.0  # refreshed by another process between our read and our lease
    ctx.stats.incr("rebuilds")
    yield Hold(lease, token, lock_ttl)
    try:
        answer = yield LOAD
    except Exception as exc:  # stale-if-error: the stale entry keeps being served
        ctx.stats.incr("load_errors")
        ctx.log.warning(
            ("http-refresh", type(exc)), "cachekit: refresh of %s failed: %r", hit.key, exc
        )
        yield from give_up(ctx, settings, target, hit.stamp, lead, remember=False)
        return 0.0
    ctx.stats.incr("loads")
    built = build(answer)
    if isinstance(built, bool):
        yield from give_up(ctx, settings, target, hit.stamp, lead, remember=built)
        return 0.0
    entry_key, entry = built
    yield from store(ctx, target, entry_key, entry, hit.stamp, lead)
    return 0.0
