"""``cachekit bloom info|warm|rebuild``: a shared Bloom filter seen and fed from outside.

The work is the library's: ``cache.bloom(name, ...)`` with ``.sync.info()``, ``.warm()``
and ``.rebuild()`` (a rebuild announces a new generation, builds it, and swaps the
descriptor atomically: see :mod:`cachekit.bloom.state`). The CLI adds what an operator needs
around it: the filter's geometry read from its descriptor in Redis (every process must
declare the same one, so the CLI never guesses it), ids read from a file or stdin, and
the bitmap's fill as the server counts it (``BITCOUNT``).

On Redis Cluster and behind Sentinel nothing changes: a filter's keys share its hash tag,
so its scripts and ``BITCOUNT`` s go to the one primary that holds them, and the
library's Cache runs on a client of the same URL (:meth:`~cachekit.cli.server.Server.cache`).

Usage::

    cachekit bloom info products
    seq 1 100000 | cachekit bloom warm products --capacity 1000000 --error-rate 0.001
    cachekit bloom rebuild products ids.txt
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson

from cachekit.backends.ops import Get
from cachekit.bloom.state import PART_BITS, BloomKeys, Geometry
from cachekit.cli.ops import BitCount, MemoryUsage
from cachekit.cli.output import Failure, as_json, fields, number, size
from cachekit.cli.server import Server
from cachekit.flow.keys import KeySpace

__all__ = [
    "Descriptor",
    "bloom_info",
    "bloom_keys",
    "bloom_load",
    "descriptor_key",
    "parse_descriptor",
]


@dataclass(frozen=True, slots=True)
class Descriptor:
    """What a filter's descriptor in Redis says: geometry, live and rebuilding generation.

    Usage::

        found = parse_descriptor("products", raw)
        found.geometry.capacity if found else None
    """

    name: str
    geometry: Geometry
    generation: int
    rebuilding: int


def descriptor_key(space: KeySpace, name: str) -> str:
    """The Redis key of filter ``name``'s descriptor (``BloomState.keys``' base).

    Usage::

        descriptor_key(KeySpace("shop"), "products")     # 'shop:bloom:{products}'
    """
    return space.namespaced("bloom", name)


def bloom_keys(space: KeySpace, name: str, geometry: Geometry) -> BloomKeys:
    """The Redis keys of filter ``name``, exactly as ``BloomState.keys`` makes them.

    Usage::

        bloom_keys(space, "products", Geometry.of(1_000, 0.01)).of(3)   # generation 3's parts
    """
    return BloomKeys(descriptor_key(space, name), math.ceil(geometry.bits / PART_BITS))


def parse_descriptor(name: str, raw: bytes) -> Descriptor | None:
    """The descriptor in ``raw``, or ``None`` when it is not one.

    Usage::

        parse_descriptor("products", server.run(Get(descriptor_key(space, "products"))))
    """
    try:
        meta = orjson.loads(raw)
        geometry = Geometry(
            int(meta["capacity"]),
            float(meta["error_rate"]),
            int(meta["k"]),
            int(meta["bits_per_slice"]),
        )
        return Descriptor(name, geometry, int(meta["generation"]), int(meta.get("next", 0)))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def _descriptor(server: Server, name: str) -> Descriptor | None:
    key = descriptor_key(server.keyspace, name)
    raw = server.run(Get(key))
    if raw is None:
        return None
    found = parse_descriptor(name, raw)
    if found is None:
        raise Failure(f"{key} holds something that is not a Bloom filter descriptor", code=1)
    return found


def _missing(server: Server, name: str) -> str:
    return f"there is no Bloom filter {name!r} under prefix {server.prefix!r}"


def bloom_info(server: Server, name: str, *, as_json_output: bool) -> int:
    """Print filter ``name``'s geometry, fill and size; raises ``Failure`` (1) if absent.

    Usage::

        bloom_info(server, "products", as_json_output=True)
    """
    found = _descriptor(server, name)
    if found is None:
        raise Failure(_missing(server, name), code=1)
    geometry = found.geometry
    with server.cache() as cache:
        bloom = cache.bloom(name, capacity=geometry.capacity, error_rate=geometry.error_rate)
        facts = bloom.sync.info()  # loads the mirror as an app would: proves it is readable
        parts = bloom_keys(server.keyspace, name, geometry).of(facts["generation"] or 0)
        bits_set = server.run(BitCount(parts))
        memory = sum(server.run(MemoryUsage(parts)))
    estimated = geometry.estimate(bits_set) if parts else 0
    report: dict[str, Any] = {
        **facts,
        "prefix": server.prefix,
        "bits_set": bits_set,
        "fill_ratio": bits_set / geometry.bits,
        "estimated_items": estimated,
        "expected_false_positive_rate": geometry.false_positive_rate(estimated),
        "memory_bytes": memory,
    }
    print(as_json(report) if as_json_output else _render_info(report))
    return 0


def _render_info(r: dict[str, Any]) -> str:
    state = r["state"] + (f", generation {r['generation']}" if r["generation"] else "")
    if r["rebuilding"]:
        state += f", rebuilding generation {r['rebuilding']}"
    rows = [
        ("state", state),
        ("capacity", number(r["capacity"])),
        ("error rate", f"{r['error_rate']:g}"),
        ("hashes", str(r["hashes"])),
        ("bits", f"{number(r['bits'])} ({size(r['size_bytes'])})"),
        ("bits set", f"{number(r['bits_set'])} ({r['fill_ratio']:.2%} full)"),
        ("estimated items", number(r["estimated_items"])),
        ("adds counted", number(r["adds_counted"])),
        ("false positives", f"{r['expected_false_positive_rate']:.3g} expected"),
        ("memory in Redis", f"{size(r['memory_bytes'])} in {r['parts']} part(s)"),
    ]
    return f"Bloom filter {r['name']!r} under prefix {r['prefix']!r}\n" + fields(rows)


@contextmanager
def _ids(source: str) -> Iterator[Iterator[str]]:
    """The ids of ``source`` (a path, or ``-`` for stdin): one per line, blanks skipped."""

    def lines(stream: Any) -> Iterator[str]:
        for line in stream:
            item = line.strip()
            if item:
                yield item

    if source == "-":
        yield lines(sys.stdin)  # read when the filter asks for them: batch by batch
        return
    try:
        stream = open(source, encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise Failure(f"cannot read ids from {source}: {exc.strerror}", code=2) from exc
    with stream:
        yield lines(stream)


def _geometry(
    server: Server, name: str, found: Descriptor | None, capacity: int | None, rate: float | None
) -> Geometry:
    if found is None:
        if capacity is None or rate is None:
            raise Failure(
                f"{_missing(server, name)}: pass --capacity and --error-rate (the ones your "
                "app declares) to create it",
                code=2,
            )
        return Geometry.of(capacity, rate)
    current = found.geometry
    wanted = Geometry.of(capacity or current.capacity, rate or current.error_rate)
    if wanted != current:
        raise Failure(
            f"Bloom filter {name!r} has capacity {current.capacity:,} and error rate "
            f"{current.error_rate:g}; every process must declare the same geometry, so the "
            "CLI does not change it (drop --capacity/--error-rate to use the existing one)",
            code=2,
        )
    return current


def bloom_load(
    server: Server,
    name: str,
    source: str,
    *,
    batch: int,
    capacity: int | None,
    error_rate: float | None,
    rebuild: bool,
) -> int:
    """Add the ids of ``source`` to filter ``name`` (``warm``), or rebuild it from them.

    ``warm`` keeps what the filter holds and adds in pipelined batches of ``batch`` ids; a
    filter that does not exist yet is built. ``rebuild`` builds a new generation from the
    ids alone and swaps it in atomically (ids not given are gone; adds made by apps while
    it runs are kept), all by the library's :meth:`~cachekit.SyncBloom.rebuild`.

    Usage::

        bloom_load(server, "products", "ids.txt", batch=10_000, capacity=None,
                   error_rate=None, rebuild=True)
    """
    found = _descriptor(server, name)
    geometry = _geometry(server, name, found, capacity, error_rate)
    progress = _progress if sys.stderr.isatty() else None
    with _ids(source) as ids, server.cache() as cache:
        bloom = cache.bloom(name, capacity=geometry.capacity, error_rate=geometry.error_rate)
        if rebuild:
            done = bloom.sync.rebuild(ids, batch=batch, progress=progress)
        else:
            done = bloom.sync.warm(ids, batch=batch, progress=progress)
        after = bloom.sync.info()
    if progress is not None:
        print(file=sys.stderr)  # end the progress line
    before = found.generation if found is not None else 0
    if rebuild or not before:  # warming a filter that does not exist builds it
        verb, was = ("rebuilt", f", was {before}") if before else ("built", "")
        generation = after["generation"]
        print(f"{verb} Bloom filter {name!r} from {done:,} ids (generation {generation}{was})")
    else:
        print(f"added {done:,} ids to Bloom filter {name!r} (generation {after['generation']})")
    print(f"it now holds about {after['count']:,} items (capacity {geometry.capacity:,})")
    return 0


def _progress(done: int) -> None:
    print(f"\r{done:,} ids", end="", file=sys.stderr, flush=True)
