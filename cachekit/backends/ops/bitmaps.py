"""Bitmap operations for Bloom filters, safe against concurrent adds and rebuilds.

A filter's descriptor (JSON: geometry, the live ``generation``, and the ``next`` one while
a rebuild runs, 0 for none) says which bitmap parts are current. Adds name the
generations they believe in; the script refuses them (-1) when the descriptor says
otherwise, so the caller reloads instead of writing into a bitmap that was swapped out.
While a rebuild runs, adds go to both generations, so nothing added during it is lost.

Redis numbers the bits of a string from the most significant bit of its first byte, the
order ``bitarray(endian="big")`` uses too; the memory backend keeps the same layout.

Usage::

    count = backend.run(AddBits(desc, counts, parts, live=3, next=0, bits=[(0, 17)], ...))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from cachekit.backends.ops import Command, Op, Script, Store
from cachekit.backends.shards import announcement, on_shards

__all__ = ["AbortRebuild", "AddBits", "BeginRebuild", "MergeBits", "SwapGeneration"]


def _or_bit(data: bytearray, offset: int) -> None:
    index = offset >> 3
    if index >= len(data):
        data.extend(bytes(index + 1 - len(data)))
    data[index] |= 0x80 >> (offset & 7)


def _incr(store: Store, key: str, amount: int) -> int:
    current = store.read(key)
    value = (int(current) if current is not None else 0) + amount
    store.write(key, b"%d" % value, None)
    return value


def _generations(store: Store, descriptor: str) -> tuple[int, int] | None:
    raw = store.read(descriptor)
    if raw is None:
        return None
    meta = orjson.loads(raw)
    return int(meta["generation"]), int(meta.get("next", 0))


_ADD_BITS = Script(
    """
-- KEYS[1] descriptor, KEYS[2] live count, KEYS[3] next count (= KEYS[2] when none),
-- KEYS[4..] the live generation's parts, then the next generation's parts (if any)
-- ARGV[1] live generation, ARGV[2] next generation (0: none), ARGV[3] items new,
-- ARGV[4] channel, ARGV[5] message, ARGV[6] parts per generation,
-- ARGV[7] PUBLISH (SPUBLISH on Cluster, with a shard's channel in ARGV[4]),
-- ARGV[8..] pairs: part index (0-based), bit offset in that part
local raw = redis.call('GET', KEYS[1])
if not raw then return -1 end
local meta = cjson.decode(raw)
local live, nxt = tonumber(ARGV[1]), tonumber(ARGV[2])
if meta['generation'] ~= live or (meta['next'] or 0) ~= nxt then return -1 end
local parts = tonumber(ARGV[6])
local next_base = 4
if live > 0 then next_base = 4 + parts end
for i = 8, #ARGV, 2 do
  local index = tonumber(ARGV[i])
  if live > 0 then redis.call('SETBIT', KEYS[4 + index], ARGV[i + 1], 1) end
  if nxt > 0 then redis.call('SETBIT', KEYS[next_base + index], ARGV[i + 1], 1) end
end
local count = 0
if live > 0 then count = redis.call('INCRBY', KEYS[2], ARGV[3]) end
if nxt > 0 then redis.call('INCRBY', KEYS[3], ARGV[3]) end
redis.call(ARGV[7], ARGV[4], ARGV[5])
return count
"""
)


@dataclass(slots=True)
class AddBits(Op[int]):
    """Set bits in the live (and next) generation, if those are still current.

    Returns the live generation's item count, or -1 when the descriptor disagrees.
    """

    descriptor: str
    counts: tuple[str, str]
    parts: Sequence[str]  # the live generation's (if any), then the next one's (if any)
    live: int
    next: int
    bits: Sequence[tuple[int, int]]  # (part index, offset in the part)
    added: int
    channel: str
    message: str
    sharded: bool = False

    kind = "script"
    script = _ADD_BITS

    def _per_generation(self) -> int:
        return len(self.parts) // ((self.live > 0) + (self.next > 0) or 1)

    def script_call(self) -> tuple[Sequence[str], Sequence[Any]]:
        command, channel = announcement(self.channel, self.descriptor, self.sharded)
        args: list[Any] = [self.live, self.next, self.added, channel, self.message]
        args += (self._per_generation(), command)
        for index, offset in self.bits:
            args += (index, offset)
        return (self.descriptor, *self.counts, *self.parts), args

    def for_cluster(self) -> Op[int]:
        return on_shards(self)

    def parse(self, reply: Any) -> int:
        return int(reply)

    def apply(self, store: Store) -> int:
        if _generations(store, self.descriptor) != (self.live, self.next):
            return -1
        size = self._per_generation()
        targets = [self.parts[start : start + size] for start in range(0, len(self.parts), size)]
        for parts in targets:
            grown: dict[str, bytearray] = {}
            for index, offset in self.bits:
                key = parts[index]
                if key not in grown:
                    grown[key] = bytearray(store.read(key) or b"")
                _or_bit(grown[key], offset)
            for key, data in grown.items():
                store.write(key, bytes(data), None)
        count = _incr(store, self.counts[0], self.added) if self.live > 0 else 0
        if self.next > 0:
            _incr(store, self.counts[1], self.added)
        store.publish(self.channel, self.message)
        return count


@dataclass(slots=True)
class MergeBits(Op[None]):
    """OR a locally built bitmap into each part (``BITOP OR``), add to the count."""

    parts: Sequence[tuple[str, bytes]]
    scratch: str  # a temporary key in the same slot
    count_key: str
    added: int

    kind = "pipeline"

    def pipeline(self) -> list[Command]:
        commands: list[Command] = []
        for key, data in self.parts:
            commands += [("SET", self.scratch, data), ("BITOP", "OR", key, key, self.scratch)]
        return [*commands, ("DEL", self.scratch), ("INCRBY", self.count_key, self.added)]

    def parse(self, reply: Any) -> None:
        return None

    def apply(self, store: Store) -> None:
        for key, data in self.parts:
            current = store.read(key) or b""
            size = max(len(current), len(data))
            pairs = zip(current.ljust(size, b"\0"), data.ljust(size, b"\0"), strict=True)
            merged = bytes(a | b for a, b in pairs)
            store.write(key, merged, None)
        _incr(store, self.count_key, self.added)


_BEGIN_REBUILD = Script(
    """
-- KEYS[1] descriptor, KEYS[2] generation counter
-- ARGV[1] the descriptor to create if there is none (generation 0)
-- Picks a generation above every one in use and announces it as 'next'. Returns it and
-- the 'next' it replaced (a rebuild that died or will now lose: its keys can go).
local raw = redis.call('GET', KEYS[1])
local meta = raw and cjson.decode(raw) or cjson.decode(ARGV[1])
local building = redis.call('INCR', KEYS[2])
local previous = meta['next'] or 0
local floor = math.max(meta['generation'] or 0, previous)
if building <= floor then
  building = floor + 1
  redis.call('SET', KEYS[2], building)
end
meta['next'] = building
redis.call('SET', KEYS[1], cjson.encode(meta))
return {building, previous}
"""
)


@dataclass(slots=True)
class BeginRebuild(Op[tuple[int, int]]):
    """Pick and announce a new generation: from now on adds also go to it.

    Returns ``(building, previous)``: the new generation and the one it superseded as
    ``next`` (0 for none).
    """

    descriptor: str
    counter: str
    empty: bytes  # the descriptor of a filter with no live generation yet

    kind = "script"
    script = _BEGIN_REBUILD

    def script_call(self) -> tuple[Sequence[str], Sequence[Any]]:
        return (self.descriptor, self.counter), (self.empty,)

    def parse(self, reply: Any) -> tuple[int, int]:
        return int(reply[0]), int(reply[1])

    def apply(self, store: Store) -> tuple[int, int]:
        meta = orjson.loads(store.read(self.descriptor) or self.empty)
        previous = int(meta.get("next", 0))
        floor = max(int(meta.get("generation", 0)), previous)
        building = max(_incr(store, self.counter, 1), floor + 1)
        store.write(self.counter, b"%d" % building, None)
        meta["next"] = building
        store.write(self.descriptor, orjson.dumps(meta), None)
        return building, previous


_SWAP = Script(
    """
-- KEYS[1] descriptor; ARGV[1] the generation built, ARGV[2] its whole descriptor (its
-- geometry may differ from the old one's), ARGV[3] channel, ARGV[4] message, ARGV[5]
-- PUBLISH (SPUBLISH on Cluster, with a shard's channel in ARGV[3]).
-- Swaps only if no later rebuild took over; returns the replaced generation, or -1.
local raw = redis.call('GET', KEYS[1])
if not raw then return -1 end
local meta = cjson.decode(raw)
if (meta['next'] or 0) ~= tonumber(ARGV[1]) then return -1 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call(ARGV[5], ARGV[3], ARGV[4])
return meta['generation']
"""
)


@dataclass(slots=True)
class SwapGeneration(Op[int]):
    """Make generation ``built`` live; the one replaced, or -1 if another rebuild won."""

    descriptor: str
    built: int
    replacement: bytes  # the new descriptor: generation ``built``, no next, its geometry
    channel: str
    message: str
    sharded: bool = False

    kind = "script"
    script = _SWAP

    def script_call(self) -> tuple[Sequence[str], Sequence[Any]]:
        command, channel = announcement(self.channel, self.descriptor, self.sharded)
        return (self.descriptor,), (self.built, self.replacement, channel, self.message, command)

    def for_cluster(self) -> Op[int]:
        return on_shards(self)

    def parse(self, reply: Any) -> int:
        return int(reply)

    def apply(self, store: Store) -> int:
        raw = store.read(self.descriptor)
        if raw is None:
            return -1
        meta = orjson.loads(raw)
        if int(meta.get("next", 0)) != self.built:
            return -1
        store.write(self.descriptor, self.replacement, None)
        store.publish(self.channel, self.message)
        return int(meta["generation"])


_ABORT = Script(
    """
-- KEYS[1] descriptor; ARGV[1] the generation whose rebuild failed.
-- Withdraws it as 'next' (if it still is), so adds stop writing into it.
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local meta = cjson.decode(raw)
if (meta['next'] or 0) ~= tonumber(ARGV[1]) then return 0 end
meta['next'] = 0
redis.call('SET', KEYS[1], cjson.encode(meta))
return 1
"""
)


@dataclass(slots=True)
class AbortRebuild(Op[bool]):
    """Withdraw generation ``building`` as ``next`` after its rebuild failed."""

    descriptor: str
    building: int

    kind = "script"
    script = _ABORT

    def script_call(self) -> tuple[Sequence[str], Sequence[Any]]:
        return (self.descriptor,), (self.building,)

    def parse(self, reply: Any) -> bool:
        return bool(reply)

    def apply(self, store: Store) -> bool:
        raw = store.read(self.descriptor)
        if raw is None:
            return False
        meta = orjson.loads(raw)
        if int(meta.get("next", 0)) != self.building:
            return False
        meta["next"] = 0
        store.write(self.descriptor, orjson.dumps(meta), None)
        return True
