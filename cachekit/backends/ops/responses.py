"""The response cache's operations: a hit in one script, invalidation, and the purge of all.

A hit needs the path's generation (the token its entries must be stamped with), the
URL's record (which headers the app's ``Vary`` named) and the variant's entry. The entry
key depends on the record, so the reader guesses it (the variant seen last for the URL,
in this process) and :class:`ReadResponse` reads all three in one EVALSHA, one round
trip; a wrong guess costs a second GET. The keys share the path's hash tag, so the script
touches one Cluster slot. A missing generation is created by the reader, with a TTL (a
path requested once must not leave a key behind forever) and a new random token, so its
loss only turns the path's entries into misses, never revives old ones.

With a near cache, :class:`ReadResponseTtl` reads the same three keys with their TTLs, and
nothing else: plain ``GET``/``PTTL`` commands, so the near cache does not take the read for
a write (it would drop and announce the keys, as it does for every script).

Purging everything has no counter to bump (a global one could not share every path's
slot): :class:`ScanKeys` and :class:`UnlinkEach` remove the ``http`` namespace in batches.

Usage::

    generation, record, entry = backend.run(
        ReadResponse("p:http:{p1}:g", "p:http:{p1}:u1", token, 3600, "p:http:{p1}:v1")
    )
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from cachekit.backends.ops import Command, Op, Script, Store, ms

__all__ = ["ReadResponse", "ReadResponseTtl", "RenewGenerations", "ScanKeys", "UnlinkEach"]


_READ_RESPONSE = Script(
    """
-- KEYS[1] the path's generation, KEYS[2] the URL's record, KEYS[3] a variant (optional)
-- ARGV[1] a new random token, stored only if the generation is missing; ARGV[2] its TTL (ms)
local generation = redis.call('GET', KEYS[1])
if not generation then
  generation = ARGV[1]
  redis.call('SET', KEYS[1], generation, 'PX', ARGV[2])
end
local entry = false
if #KEYS > 2 then entry = redis.call('GET', KEYS[3]) end
return {generation, redis.call('GET', KEYS[2]), entry}
"""
)


@dataclass(slots=True)
class ReadResponse(Op[tuple[bytes, bytes | None, bytes | None]]):
    """``(generation, record, entry)``: the generation created from ``fresh`` if missing.

    ``entry`` is read only when a key is guessed; all keys share one hash tag.
    """

    generation: str
    record: str
    fresh: bytes
    ttl: float
    entry: str | None = None

    kind = "script"
    script = _READ_RESPONSE
    creates_only = True  # the generation, when missing

    def script_call(self) -> tuple[Sequence[str], Sequence[Any]]:
        keys = [self.generation, self.record]
        if self.entry is not None:
            keys.append(self.entry)
        return keys, (self.fresh, ms(self.ttl))

    def parse(self, reply: Any) -> tuple[bytes, bytes | None, bytes | None]:
        generation, record, entry = reply
        return generation, record, entry

    def apply(self, store: Store) -> tuple[bytes, bytes | None, bytes | None]:
        generation = store.read(self.generation)
        if generation is None:
            generation = self.fresh
            store.write(self.generation, generation, self.ttl)
        entry = store.read(self.entry) if self.entry is not None else None
        return generation, store.read(self.record), entry


Held = tuple[bytes | None, float | None]
"""A value and its remaining TTL in seconds (``math.inf``: none; ``None``: absent)."""


def _remaining(pttl: Any) -> float | None:
    ms_left = int(pttl)
    if ms_left == -2:
        return None
    return math.inf if ms_left == -1 else ms_left / 1000


@dataclass(slots=True)
class ReadResponseTtl(Op[tuple[Held, Held, Held, bool]]):
    """The generation, the record and the entry, each with its remaining TTL; reads only.

    The last item says whether a near cache may keep what was read: not on Redis Cluster,
    where the node that answered is not known to be one whose invalidations the near cache
    follows. Pipelined, not atomic: a write between a ``GET`` and its ``PTTL`` is a write
    after the near cache's fill began, which voids the fill. A missing generation is not
    created: the caller then reads with :class:`ReadResponse`.

    Usage::

        (generation, _), (record, _), (entry, ttl), keep = backend.run(
            ReadResponseTtl("p:http:{p1}:g", "p:http:{p1}:u1", "p:http:{p1}:v1")
        )
    """

    generation: str
    record: str
    entry: str

    kind = "pipeline"
    keepable = True

    def pipeline(self) -> list[Command]:
        out: list[Command] = []
        for key in (self.generation, self.record, self.entry):
            out += [("GET", key), ("PTTL", key)]
        return out

    def for_cluster(self) -> Op[tuple[Held, Held, Held, bool]]:
        return _ReadResponseTtlOnCluster(self.generation, self.record, self.entry)

    def parse(self, reply: Any) -> tuple[Held, Held, Held, bool]:
        g, g_ttl, r, r_ttl, e, e_ttl = reply
        held = (g, _remaining(g_ttl)), (r, _remaining(r_ttl)), (e, _remaining(e_ttl))
        return (*held, self.keepable)

    def apply(self, store: Store) -> tuple[Held, Held, Held, bool]:
        g, r, e = self.generation, self.record, self.entry
        return (
            (store.read(g), store.remaining(g)),
            (store.read(r), store.remaining(r)),
            (store.read(e), store.remaining(e)),
            True,
        )


@dataclass(slots=True)
class _ReadResponseTtlOnCluster(ReadResponseTtl):
    keepable = False

    def for_cluster(self) -> Op[tuple[Held, Held, Held, bool]]:
        return self


@dataclass(slots=True)
class RenewGenerations(Op[None]):
    """Give each generation key a new token and TTL: entries stamped with the old one miss.

    Separate commands of one pipeline: the paths may live on different Cluster slots.
    """

    keys: Sequence[str]
    tokens: Sequence[bytes]
    ttl: float

    kind = "pipeline"

    def pipeline(self) -> list[Command]:
        return [
            ("SET", key, token, "PX", ms(self.ttl))
            for key, token in zip(self.keys, self.tokens, strict=True)
        ]

    def parse(self, reply: Any) -> None:
        return None

    def apply(self, store: Store) -> None:
        for key, token in zip(self.keys, self.tokens, strict=True):
            store.write(key, token, self.ttl)


@dataclass(slots=True)
class ScanKeys(Op[tuple[int, list[str]]]):
    """``SCAN cursor MATCH pattern COUNT count``: the next cursor (0: done) and some keys.

    Never ``KEYS``: each call does a bounded amount of work. (On Cluster, a backend must send
    it to every primary.) The memory store lists all of them at once.
    """

    cursor: int
    pattern: str
    count: int = 500

    def command(self) -> Command:
        return ("SCAN", self.cursor, "MATCH", self.pattern, "COUNT", self.count)

    def parse(self, reply: Any) -> tuple[int, list[str]]:
        cursor, keys = reply
        return int(cursor), [k.decode() if isinstance(k, bytes) else k for k in keys]

    def apply(self, store: Store) -> tuple[int, list[str]]:
        return 0, [key for key in store.live_keys() if fnmatchcase(key, self.pattern)]


@dataclass(slots=True)
class UnlinkEach(Op[None]):
    """``UNLINK key`` for each key, in one pipelined round trip (any slots)."""

    keys: Sequence[str]

    kind = "pipeline"

    def pipeline(self) -> list[Command]:
        return [("UNLINK", key) for key in self.keys]

    def parse(self, reply: Any) -> None:
        return None

    def apply(self, store: Store) -> None:
        for key in self.keys:
            store.remove(key)
