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
* Filters cannot delete: ``rebuild(items)`` announces a new generation (from then on
  every add also goes to it), builds the bitmap locally, ORs it into Redis and swaps the
  descriptor, atomically for readers; of two overlapping rebuilds the later one wins.
* A filter with no descriptor in Redis (never built, or lost to a restart or flush) is
  *missing*: ``contains`` answers "maybe" (a real identifier is never rejected), the state
  shows in :meth:`info`, and ``on_missing(name)`` is called so you can rebuild it.

The flows that do the I/O are in :mod:`cachekit.bloom.flow`; the public objects in
:mod:`cachekit.bloom.filter`.

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
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import orjson

from cachekit.exceptions import ConfigurationError
from cachekit.flow.context import Context

if TYPE_CHECKING:
    from bitarray import bitarray

__all__ = ["PART_BITS", "BloomKeys", "BloomState", "Geometry", "empty_bits", "offsets"]

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

    def estimate(self, set_bits: int) -> int:
        """Distinct items from the number of set bits (Swamidass & Baldi's estimator)."""
        if set_bits >= self.bits:
            return self.capacity * 10  # saturated: anything is "present"
        return round(-self.bits / self.k * math.log(1.0 - set_bits / self.bits))

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


@dataclass(frozen=True, slots=True)
class BloomKeys:
    """The Redis keys of one filter; one hash tag, so one Cluster slot."""

    base: str
    parts: int

    @property
    def descriptor(self) -> str:
        return self.base

    @property
    def generations(self) -> str:
        return self.base + ":generations"

    def scratch(self, generation: int) -> str:
        """A temporary key of one rebuild (so concurrent rebuilds never share one)."""
        return f"{self.base}:g{generation}:scratch"

    def count(self, generation: int) -> str:
        return f"{self.base}:g{generation}:count"

    def of(self, generation: int) -> list[str]:
        """The part keys of ``generation`` (none for generation 0: no live bitmap)."""
        return [f"{self.base}:g{generation}:{i}" for i in range(self.parts)] if generation else []

    def all_of(self, generation: int) -> list[str]:
        """Every key of ``generation``: parts, count and scratch."""
        return [*self.of(generation), self.count(generation), self.scratch(generation)]


class BloomState:
    """One filter's mirror in this process, shared by its async and sync faces.

    ``generation`` is the live generation mirrored (``None``: not loaded, or missing);
    ``next`` the one being rebuilt (0: none). While the mirror loads, add notifications
    are kept in ``pending`` and applied after the swap, so none is lost.
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
        self.mirror.bitarray = empty_bits(geometry.bits)
        self.generation: int | None = None
        self.next = 0
        self.missing = False
        self.stale = True  # reload at the next check
        self.reloads = 0  # reload requests seen (a load clears "stale" only if none came)
        self.loading = False
        self.pending: list[tuple[str, str]] = []
        self.checked_at = -math.inf
        self.lock = threading.Lock()

    @property
    def topic(self) -> str:
        return f"bloom:{self.name}"

    def keys(self, ctx: Context) -> BloomKeys:
        return BloomKeys(
            ctx.keyspace.namespaced("bloom", self.name), math.ceil(self.geometry.bits / PART_BITS)
        )

    def has(self, bits: Iterable[int]) -> bool:
        array = self.mirror.bitarray
        return all(array[bit] for bit in bits)

    def set_local(self, bits: Iterable[int]) -> None:
        array = self.mirror.bitarray
        for bit in bits:
            array[bit] = 1

    def on_message(self, body: str | None) -> None:
        """A notification: another process's bits, a reload, or a reconnect (``None``)."""
        with self.lock:
            if body is None or body == "reload":
                self.reloads += 1
                self.stale = True
                return
            generation, _, bits = body.partition(":")
            if self.loading:  # replayed onto the bitmap being loaded, once it is in
                self.pending.append((generation, bits))
            if self.generation is not None and generation == str(self.generation):
                self.set_local(int(bit) for bit in bits.split(","))

    def descriptor(self, generation: int, building: int = 0) -> bytes:
        fields = {**asdict(self.geometry), "generation": generation, "next": building}
        return orjson.dumps(fields)


def empty_bits(bits: int) -> bitarray:
    """A zeroed bitmap in Redis's bit order (each byte's top bit first)."""
    from bitarray import bitarray

    array = bitarray(bits, endian="big")
    array.setall(False)
    return array
