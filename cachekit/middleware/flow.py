"""The response cache's decisions as sans-I/O flows, driven by the cache's async driver.

:func:`lookup` reads a path's generation, a URL's record and a variant in one script (one
round trip) and decides: serve it (:class:`Hit`), run the app and store the response
(:class:`Lead`, holding the variant's lease), or run the app without waiting
(:class:`Direct`). Concurrent misses of one key share the decorator's machinery: an
in-process :class:`~cachekit.flow.effects.Join` so a process's waiters share one wait, the
cross-process lease (:class:`~cachekit.backends.ops.leases.TakeLease`), and the one bounded
wait for its holder's fill (:mod:`cachekit.flow.lease`); a waiter that times out runs the
app itself.

:mod:`.writes` stores what the app answered.

Usage::

    outcome = await driver.drive(lookup(ctx, settings, ask))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cachekit.backends.ops import Get
from cachekit.backends.ops.leases import Release, TakeLease
from cachekit.backends.ops.responses import ReadResponse
from cachekit.exceptions import BackendError
from cachekit.flow.context import Context, new_token
from cachekit.flow.effects import Flow, Join
from cachekit.flow.lease import rewatch, wait_for_lease, watch_lease
from cachekit.flow.read import lease_key, read_failed, tag_stamp
from cachekit.middleware.directives import Headers
from cachekit.middleware.entry import (
    Entry,
    Record,
    RequestKeys,
    VaryValues,
    decode_entry,
    decode_record,
    vary_values,
)
from cachekit.middleware.near import NEAR_MAX_SIZE, Read, fill_response, held_response
from cachekit.near.local import LocalCache

__all__ = [
    "Ask",
    "Direct",
    "Hit",
    "Lead",
    "ResponsePolicy",
    "lookup",
    "read_response",
]

# A hit hashes its path's generation to compare stamps; a path's generation changes
# rarely, so its digest is remembered (a pure function: losing it costs one hash).
_STAMPS: dict[bytes, int] = {}
_STAMPS_MAX = 4096


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponsePolicy:
    """The middleware's options that flows read (see ``ResponseCacheMiddleware``)."""

    lock_ttl: float
    lock_wait: float
    hit_for_miss: float
    generation_ttl: float
    encodings: tuple[str, ...]
    near_max_size: int = NEAR_MAX_SIZE  # larger entries are never kept in the near cache


@dataclass(frozen=True, slots=True)
class Ask:
    """One request as the lookup sees it; ``guess`` is the variant to prefetch.

    ``guess`` is ``(vary values, entry key)`` of the variant this URL served last here:
    when the request has the same values, the key needs no hashing. With ``near``, that
    variant is served from the near cache when it holds it (:mod:`.near`).
    """

    target: RequestKeys
    headers: Headers
    authorized: bool
    coalesce: bool
    guess: tuple[VaryValues, str] | None = None
    reload: bool = False  # the client asked for a fresh answer and the app allows it
    near: LocalCache | None = None  # the near cache that holds hot responses, if any
    read: Read | BackendError | None = None  # what a shared read brought (:mod:`.batch`)


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


def read_response(settings: ResponsePolicy, target: RequestKeys, guess: str | None) -> Flow[Read]:
    """The generation, the record and the guessed entry of ``target``, in one round trip.

    The first read of :func:`lookup`, on its own: requests may share it (:mod:`.batch`).
    """
    read: Read = yield ReadResponse(
        target.generation, target.record, new_token(), settings.generation_ttl, guess
    )
    return read


def _probe(
    ctx: Context, settings: ResponsePolicy, ask: Ask, *, first: bool = False
) -> Flow[_Probe]:
    target = ask.target
    guess = None if ask.guess is None else ask.guess[1]
    read = ask.read if first else None
    if isinstance(read, BackendError):
        raise read
    if read is None and ask.near is not None and guess is not None:  # fills the near cache
        keys = (target.generation, target.record, guess)
        read = yield from fill_response(ask.near, keys, settings.near_max_size)
    if read is None:
        read = yield from read_response(settings, target, guess)
    probe: _Probe = yield from _decode(ctx, settings, ask, read)
    return probe


def _decode(ctx: Context, settings: ResponsePolicy, ask: Ask, read: Read) -> Flow[_Probe]:
    """What the three values read mean for this request (a wrong guess reads once more)."""
    target = ask.target
    generation, raw_record, raw_guess = read
    stamp = _STAMPS.get(generation)
    if stamp is None:
        stamp = tag_stamp((generation,))
        if len(_STAMPS) >= _STAMPS_MAX:
            _STAMPS.clear()
        _STAMPS[generation] = stamp
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


def _held(ctx: Context, settings: ResponsePolicy, ask: Ask) -> Hit | None:
    """A fresh HIT from the near cache's copies (no I/O), or ``None``: then read Redis.

    Only a fresh entry of the guessed variant is served from here; anything else (stale,
    a wrong guess, a refusal) is decided again on what Redis holds.
    """
    local, guess = ask.near, ask.guess
    if local is None or guess is None:
        return None
    target = ask.target
    read = held_response(local, (target.generation, target.record, guess[1]))
    if read is None:
        return None
    decoding = _decode(ctx, settings, ask, read)
    try:
        decoding.send(None)
    except StopIteration as done:
        probe: _Probe = done.value
    else:  # it asked for another read: the guess was wrong
        decoding.close()
        return None
    entry = probe.entry
    if entry is None or ctx.clock.time() >= entry.expires:
        return None
    verdict = _serve(ctx, ask, probe)
    return verdict if isinstance(verdict, Hit) else None


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
    held = _held(ctx, settings, ask)
    if held is not None:
        return held
    try:
        probe = yield from _probe(ctx, settings, ask, first=True)
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
    waiting = yield from watch_lease(ctx, key, settings.lock_wait)
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
        if not (yield from wait_for_lease(ctx, waiting, got.remaining)):
            break
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
            yield from rewatch(waiting, key)
    if seen is not None and _usable_stale(ctx, seen):
        return Hit(seen, key, probe.stamp, stale=True)  # stale beats waiting longer
    return Direct(probe.stamp, store=False, seen=seen)
