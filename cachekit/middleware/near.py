"""Hot responses served from the cache's near cache: a HIT with no round trip.

When the cache has a near cache (``Cache(local=LocalCache(...))``), the lookup keeps the
three values a HIT reads - the path's generation, the URL's record and the variant's
entry - in that :class:`~cachekit.near.local.LocalCache`, each under its own Redis key, and
answers from there when all three are held. Nothing is decided here: the bytes are
Redis's own, so the lookup flow checks them exactly as it checks a reply (the stamps, the
URL and ``Vary`` values, freshness), and ``Age`` counts from the entry's creation.

The near cache's rules carry over key by key:

* a write to any of the three keys, by any client, drops that copy (``CLIENT TRACKING``,
  or the fleet's pub/sub announcements): a purge or an unsafe request renews the
  generation, so every variant of the path stops being served locally at once;
* a copy lives at most the near cache's ``ttl``, and never longer than its key in Redis;
* no invalidation channel, no local answers; a fill that an invalidation overtook is
  not kept; on Redis Cluster nothing is kept (which node answered is not known to be one
  whose invalidations are followed): every lookup reads Redis.

So a stored response served from here is late by at most the delivery of one
invalidation (about a millisecond on a LAN), the near cache's own bound; while the channel
is down every lookup reads Redis.

A generation is a bare random token, and the near cache keeps only envelopes; its copy is
kept as ``MAGIC + token`` and unwrapped here. (No ``Get`` ever reads a generation key
through the near cache: it lives in the ``http`` namespace, which no user key can name.)

Usage::

    held = held_response(local, (target.generation, target.record, entry_key))
    found = yield from fill_response(local, keys, max_size)   # in a flow: one read
"""

from __future__ import annotations

from typing import Final

from cachekit.backends.ops.responses import ReadResponseTtl
from cachekit.flow.effects import Flow
from cachekit.flow.envelope import MAGIC
from cachekit.near.local import LocalCache

__all__ = ["NEAR_MAX_SIZE", "Keys", "Read", "fill_response", "held_response"]

Keys = tuple[str, str, str]
"""The generation, record and entry keys of one variant."""
Read = tuple[bytes, bytes | None, bytes | None]
"""The generation, record and entry bytes of one variant, as Redis holds them."""

NEAR_MAX_SIZE: Final = 64 << 10
"""The largest stored entry (bytes) kept in the near cache: it bounds entries, not bytes."""

_WRAP: Final = len(MAGIC)


def held_response(local: LocalCache, keys: Keys) -> Read | None:
    """The three values held locally, or ``None`` when one is missing (no I/O).

    The entry is looked up first: a cold response counts one local miss, not three.
    """
    generation_key, record_key, entry_key = keys
    entry = local.lookup(entry_key)
    if entry is None:
        return None
    generation = local.lookup(generation_key)
    if generation is None:
        return None
    record = local.lookup(record_key)
    if record is None:
        return None
    return generation[_WRAP:], record, entry


def fill_response(local: LocalCache, keys: Keys, max_size: int) -> Flow[Read | None]:
    """Read the three values from Redis and keep them locally, if nothing overtook the read.

    Returns them (the record or the entry may be ``None``: a miss), or ``None`` when the
    generation is missing or the near cache takes no fill now (its channel is down): then
    read with :class:`~cachekit.backends.ops.responses.ReadResponse`, which creates the
    generation. Raises what the read raises.

    One request of the process fills a variant at a time; the others read without
    filling, since a second fill of a key voids the first one's (and so on, for ever,
    under steady concurrent load).
    """
    entry_key = keys[2]
    if entry_key in _FILLING:
        return (yield from _read(keys))
    _FILLING.add(entry_key)
    try:
        return (yield from _fill(local, keys, max_size))
    finally:
        _FILLING.discard(entry_key)


_FILLING: Final[set[str]] = set()
"""The entry keys this process is filling now (each request's keys include its prefix)."""


def _read(keys: Keys) -> Flow[Read | None]:
    (generation, _), (record, _), (entry, _), _ = yield ReadResponseTtl(*keys)
    return None if generation is None else (generation, record, entry)


def _fill(local: LocalCache, keys: Keys, max_size: int) -> Flow[Read | None]:
    tokens = [local.begin(key) for key in keys]
    if not all(tokens):
        _abort(local, keys, tokens)
        return None
    try:
        read = yield ReadResponseTtl(*keys)
    except BaseException:
        _abort(local, keys, tokens)
        raise
    (generation, g_ttl), (record, r_ttl), (entry, e_ttl), keepable = read
    if (
        generation is None
        or record is None
        or entry is None
        or len(entry) > max_size
        or not keepable  # Redis Cluster: the answering node may not be followed
    ):
        _abort(local, keys, tokens)
        return None if generation is None else (generation, record, entry)
    g_key, r_key, e_key = keys
    g_token, r_token, e_token = tokens
    local.install(g_key, g_token, MAGIC + generation, g_ttl)
    local.install(r_key, r_token, record, r_ttl)
    local.install(e_key, e_token, entry, e_ttl)
    return generation, record, entry


def _abort(local: LocalCache, keys: Keys, tokens: list[int]) -> None:
    for key, token in zip(keys, tokens, strict=True):
        if token:
            local.abort(key, token)
