"""Bloom filters shared through Redis and mirrored in every process.

A named filter is a bitmap of ``m = k * bits_per_slice`` bits in Redis, with the geometry
of a pybloom-live ``BloomFilter(capacity, error_rate)`` (the standard formulas:
``k = ceil(log2(1/p))`` slices of ``ceil(n |ln p| / (k ln² 2))`` bits). Each process keeps
a pybloom-live filter of that geometry as its mirror, so ``contains`` costs microseconds
and no round trip. Bit offsets come from BLAKE2b of the item (slice ``i`` gets
``(h1 + i*h2) mod bits_per_slice``), computed the same in every process whatever optional
packages are installed; pybloom-live's own hashing, which depends on xxhash and the
platform's byte order, is never used.

* The mirror loads the bitmap on first use (one GET per 2³²-bit part; larger filters are
  split over several keys). Its own adds go to the mirror and to Redis in one pipeline;
  other processes' adds arrive as notifications on the cache's channel, and every
  ``check_interval`` (1 s) one small GET re-checks the filter's descriptor, so another
  process's rebuild or a lost notification is caught within that bound.
* Filters cannot delete: ``rebuild(items)`` writes a new generation of parts and then
  swaps the descriptor, atomically for readers.
* A filter with no descriptor in Redis (never built, or lost to a restart or flush) is
  *missing*: ``contains`` answers "maybe" (a real identifier is never rejected), the state
  shows in :meth:`info`, and ``on_missing(name)`` is called so you can rebuild it.

Usage::

    products = cache.bloom("products", capacity=1_000_000, error_rate=0.001)
    await products.warm(all_product_ids())
    await products.contains(5)          # True, or False for certain
    products.sync.add(6)
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any

import orjson

from cachekit.backends.bitmaps import SetBits
from cachekit.backends.ops import Delete, Get, Publish, Set
from cachekit.context import Context
from cachekit.effects import Flow, Listen
from cachekit.exceptions import BackendError, ConfigurationError
from cachekit.notify import topic_message

if TYPE_CHECKING:
    from bitarray import bitarray

__all__ = ["PART_BITS", "BloomState", "Geometry", "bloom_contains", "offsets"]

PART_BITS = 2**32  # Redis strings hold at most 512 MiB
Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class Geometry:
    """How big a filter is and how many hashes it uses."""

    capacity: int
    error_rate: float
    k: int
    bits_per_slice: int

    @property
    def bits(self) -> int:
        """Total bits (m)."""
        return self.k * self.bits_per_slice

    def false_positive_rate(self, count: int) -> float:
        """The expected false-positive rate with ``count`` items: ``(1 - e^(-kn/m))^k``."""
        return (1.0 - math.exp(-self.k * count / self.bits)) ** self.k

    @classmethod
    def of(cls, capacity: int, error_rate: float) -> Geometry:
        """The geometry pybloom-live gives ``BloomFilter(capacity, error_rate)``."""
        if capacity <= 0 or not 0 < error_rate < 1:
            raise ConfigurationError("a Bloom filter needs capacity > 0 and 0 < error_rate < 1")
        k = math.ceil(math.log2(1.0 / error_rate))
        per_slice = math.ceil(capacity * abs(math.log(error_rate)) / (k * math.log(2) ** 2))
        return cls(capacity, error_rate, k, per_slice)


def item_bytes(item: object) -> bytes:
    """The bytes hashed for ``item``: 5 and "5" are one identifier, as in a URL."""
    if isinstance(item, bytes):
        return item
    return (item if isinstance(item, str) else str(item)).encode("utf-8", "surrogatepass")


def offsets(geometry: Geometry, item: object) -> list[int]:
    """The ``k`` bit offsets of ``item`` (one per slice), identical in every process."""
    digest = hashlib.blake2b(item_bytes(item), digest_size=16).digest()
    h1 = int.from_bytes(digest[:8], "little")
    h2 = int.from_bytes(digest[8:], "little") | 1  # odd: cycles through every residue
    size = geometry.bits_per_slice
    return [i * size + (h1 + i * h2) % size for i in range(geometry.k)]


class BloomState:
    """One filter's mirror in this process, shared by its async and sync faces.

    ``generation`` is ``None`` until loaded; ``missing`` means Redis has no descriptor.
    """

    def __init__(
        self,
        name: str,
        geometry: Geometry,
        *,
        on_missing: Callable[[str], None] | None,
        check_interval: float,
    ) -> None:
        from pybloom_live import BloomFilter

        self.name = name
        self.geometry = geometry
        self.on_missing = on_missing
        self.check_interval = check_interval
        self.mirror: Any = BloomFilter(geometry.capacity, geometry.error_rate)
        shape = (self.mirror.num_slices, self.mirror.bits_per_slice)
        if shape != (geometry.k, geometry.bits_per_slice):  # pybloom-live changed formulas
            raise ConfigurationError("pybloom-live's geometry differs from cachekit's")
        self.mirror.bitarray = _empty(geometry.bits)
        self.generation: int | None = None
        self.missing = False
        self.stale = True  # reload at the next check (set by reconnects and "reload")
        self.checked_at = -math.inf
        self.lock = threading.Lock()

    def keys(self, ctx: Context, generation: int) -> tuple[str, str, list[str]]:
        """``(descriptor, count, parts)`` keys; one hash tag, so one Cluster slot."""
        base = ctx.keyspace.namespaced("bloom", self.name)
        parts = math.ceil(self.geometry.bits / PART_BITS)
        return (
            base,
            f"{base}:g{generation}:count",
            [f"{base}:g{generation}:{i}" for i in range(parts)],
        )

    def locate(self, ctx: Context, generation: int, bits: Iterable[int]) -> list[tuple[str, int]]:
        """``(part key, offset in part)`` of each bit."""
        parts = self.keys(ctx, generation)[2]
        return [(parts[bit // PART_BITS], bit % PART_BITS) for bit in bits]

    def has(self, bits: Iterable[int]) -> bool:
        array = self.mirror.bitarray
        return all(array[bit] for bit in bits)

    def set_local(self, bits: Iterable[int]) -> None:
        array = self.mirror.bitarray
        for bit in bits:
            array[bit] = 1

    def on_message(self, body: str | None) -> None:
        """A notification: another process's bits, a reload, or a reconnect (``None``)."""
        if body is None or body == "reload":
            self.stale = True
            return
        generation, _, bits = body.partition(":")
        with self.lock:
            if self.generation is not None and generation == str(self.generation):
                self.set_local(int(bit) for bit in bits.split(","))

    def descriptor(self, generation: int) -> bytes:
        return orjson.dumps({**asdict(self.geometry), "generation": generation})


def _empty(bits: int) -> bitarray:
    from bitarray import bitarray

    array = bitarray(bits, endian="big")  # Redis numbers bits from each byte's top bit
    array.setall(False)
    return array


def bloom_sync(ctx: Context, state: BloomState) -> Flow[None]:
    """Re-check the descriptor if due, and (re)load the mirror when it changed."""
    now = time.monotonic()
    if not state.stale and now - state.checked_at < state.check_interval:
        return
    if state.generation is None:
        yield Listen()  # other processes' adds arrive on the cache's channel
    state.checked_at = now
    meta_key = state.keys(ctx, 0)[0]
    try:
        raw = yield Get(meta_key)
    except BackendError:
        return  # keep what we have; a missing mirror answers "maybe"
    was_missing = state.missing
    meta = _parse_descriptor(raw)
    if meta is None or not _same_geometry(meta, state.geometry):
        state.missing, state.generation = True, None
        if not was_missing:
            ctx.log.warning(
                ("bloom", state.name),
                "cachekit: Bloom filter %r is missing in "
                "Redis; answering 'maybe' until it is rebuilt",
                state.name,
            )
            ctx.stats.incr("bloom_missing")
            if state.on_missing is not None:
                state.on_missing(state.name)
        return
    generation = int(meta["generation"])
    if generation == state.generation and not state.stale:
        state.missing = False
        return
    array = _empty(state.geometry.bits)
    for index, part in enumerate(state.keys(ctx, generation)[2]):
        try:
            data = yield Get(part)
        except BackendError:
            return
        if data:
            chunk = _empty(0)
            chunk.frombytes(data)
            start = index * PART_BITS
            size = min(len(chunk), state.geometry.bits - start)
            array[start : start + size] = chunk[:size]
    with state.lock:
        state.mirror.bitarray = array
        state.generation, state.missing, state.stale = generation, False, False


def _parse_descriptor(raw: bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        meta = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return meta if isinstance(meta, dict) and isinstance(meta.get("generation"), int) else None


def _same_geometry(meta: dict[str, Any], geometry: Geometry) -> bool:
    return bool(
        meta.get("k") == geometry.k and meta.get("bits_per_slice") == geometry.bits_per_slice
    )


def bloom_contains(ctx: Context, state: BloomState, item: object) -> Flow[bool]:
    """``False`` only when ``item`` was certainly never added; "maybe" when missing."""
    yield from bloom_sync(ctx, state)
    if state.missing or state.generation is None:
        return True
    return state.has(offsets(state.geometry, item))


def bloom_add(ctx: Context, state: BloomState, items: Iterable[object]) -> Flow[int]:
    """Add ``items`` in one pipelined round trip; announce the bits; how many were new."""
    yield from bloom_sync(ctx, state)
    generation = state.generation or 1  # a missing filter: bits go to where it will be
    bits: list[int] = []
    added = 0
    for item in items:
        item_bits = offsets(state.geometry, item)
        added += not state.has(item_bits)
        bits.extend(item_bits)
    if not bits:
        return 0
    _, count_key, _ = state.keys(ctx, generation)
    body = f"{generation}:" + ",".join(map(str, bits))
    count = yield SetBits(
        state.locate(ctx, generation, bits),
        count_key,
        added,
        ctx.channel,
        topic_message(f"bloom:{state.name}", body),
    )
    with state.lock:
        state.set_local(bits)
    _check_capacity(ctx, state, count)
    return added


def _check_capacity(ctx: Context, state: BloomState, count: int) -> None:
    if count > state.geometry.capacity:
        ctx.stats.incr("bloom_over_capacity")
        ctx.log.warning(
            ("bloom-full", state.name),
            "cachekit: Bloom filter %r holds %d items, over its capacity %d: its "
            "false-positive rate is now above %g; rebuild it larger",
            state.name,
            count,
            state.geometry.capacity,
            state.geometry.error_rate,
        )


def _batches(items: Iterable[object], size: int) -> Iterator[list[object]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def bloom_fill(
    ctx: Context,
    state: BloomState,
    items: Iterable[object],
    *,
    rebuild: bool,
    batch: int,
    progress: Progress | None,
) -> Flow[int]:
    """``warm`` (add to the current filter) or ``rebuild`` (a new generation, then swap).

    Batches are pipelined and not announced bit by bit: one "reload" at the end.
    """
    yield from bloom_sync(ctx, state)
    current = state.generation
    generation = (current or 0) + 1 if rebuild or current is None else current
    meta_key, count_key, parts = state.keys(ctx, generation)
    if generation != current:
        yield Delete([*parts, count_key])  # leftovers of an interrupted rebuild
    done = count = 0
    for chunk in _batches(items, batch):
        bits = [bit for item in chunk for bit in offsets(state.geometry, item)]
        count = yield SetBits(state.locate(ctx, generation, bits), count_key, len(chunk))
        done += len(chunk)
        if progress is not None:
            progress(done)
    if generation != current:
        # The swap: readers see the old generation until this one write.
        yield Set(meta_key, state.descriptor(generation), None)
        if current is not None:
            _, old_count, old_parts = state.keys(ctx, current)
            yield Delete([*old_parts, old_count])
    yield Publish(ctx.channel, topic_message(f"bloom:{state.name}", "reload"))
    state.stale = True
    yield from bloom_sync(ctx, state)
    _check_capacity(ctx, state, count)
    return done


def bloom_info(ctx: Context, state: BloomState) -> Flow[dict[str, Any]]:
    """Geometry, count, size and the expected false-positive rate, plus the state."""
    yield from bloom_sync(ctx, state)
    count = 0
    if state.generation is not None:
        try:
            raw = yield Get(state.keys(ctx, state.generation)[1])
            count = int(raw or 0)
        except BackendError:
            pass
    geometry = state.geometry
    return {
        "name": state.name,
        "state": "missing" if state.missing else "ready",
        "generation": state.generation,
        "capacity": geometry.capacity,
        "error_rate": geometry.error_rate,
        "count": count,
        "hashes": geometry.k,
        "bits": geometry.bits,
        "size_bytes": math.ceil(geometry.bits / 8),
        "parts": len(state.keys(ctx, 0)[2]),
        "expected_false_positive_rate": geometry.false_positive_rate(count),
    }
