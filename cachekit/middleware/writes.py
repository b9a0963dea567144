"""The response cache's writing flows: store an answer, give up, refresh a stale entry.

:func:`store`, :func:`give_up` and :func:`refresh` write what the app answered; every
entry is stamped with the generation read before the app ran (the ``stamp`` of the
lookup's :class:`~cachekit.middleware.flow.Lead` or :class:`~cachekit.middleware.flow.Hit`),
so one invalidated meanwhile is never served (no stale set;
:mod:`cachekit.middleware.invalidation`). They never raise for Redis failing: a write that
fails is counted and logged once.

Usage::

    stored = await driver.drive(store(ctx, target, entry_key, entry, stamp, lead))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cachekit.backends.ops import Set
from cachekit.backends.ops.leases import Fill, Release, TakeLease
from cachekit.exceptions import BackendError
from cachekit.flow.context import Context, new_token
from cachekit.flow.effects import LOAD, Flow, Hold
from cachekit.flow.read import lease_key, read_failed
from cachekit.middleware.entry import (
    Entry,
    Record,
    RequestKeys,
    decode_entry,
    encode_entry,
    encode_record,
)
from cachekit.middleware.flow import Hit, Lead, ResponsePolicy

__all__ = ["Build", "give_up", "refresh", "store"]


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
