"""The I/O of Bloom filters as sans-I/O flows: load and follow, test, add, warm, rebuild.

See :mod:`cachekit.bloom.state` for the model. Every flow fails open: a filter that cannot be
read answers "maybe", so a real identifier is never rejected because Redis misbehaved.

Usage::

    present = driver.drive(bloom_contains(ctx, state, 5))
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any

import orjson

from cachekit.backends.ops import Delete, Get
from cachekit.backends.ops.bitmaps import (
    AbortRebuild,
    AddBits,
    BeginRebuild,
    MergeBits,
    SwapGeneration,
)
from cachekit.backends.shards import topic_message
from cachekit.bloom.state import PART_BITS, BloomKeys, BloomState, Geometry, empty_bits, offsets
from cachekit.exceptions import BackendError
from cachekit.flow.context import Context
from cachekit.flow.effects import Flow, Listen

__all__ = ["bloom_add", "bloom_contains", "bloom_info", "bloom_rebuild", "bloom_sync", "bloom_warm"]

Progress = Callable[[int], None]
_RETRIES = 3  # a descriptor that keeps changing under us: a rebuild storm


def bloom_sync(ctx: Context, state: BloomState, *, report: bool = True) -> Flow[None]:
    """Re-check the descriptor if due, and (re)load the mirror when it changed."""
    now = time.monotonic()
    if not state.stale and now - state.checked_at < state.check_interval:
        return
    if state.generation is None:
        yield Listen()  # other processes' adds arrive on the cache's channel
    state.checked_at = now
    keys = state.keys(ctx)
    for _ in range(_RETRIES):
        try:
            meta = _generations((yield Get(keys.descriptor)), state.geometry)
        except BackendError:
            return  # keep what we have; an unloaded mirror answers "maybe"
        state.next = meta[1] if meta else 0
        if meta is None or meta[0] == 0:
            _missing(ctx, state, report)
            return
        generation = meta[0]
        if generation == state.generation and not state.stale:
            state.missing = False
            return
        with state.lock:
            if state.loading:
                return  # one load per process: meanwhile the old mirror answers
            state.loading, state.pending, reloads = True, [], state.reloads
        try:
            array = yield from _load(keys, generation, state.geometry)
            again = _generations((yield Get(keys.descriptor)), state.geometry)
            if again is None or again[0] != generation:
                continue  # swapped while we read the parts: read the new ones
            with state.lock:
                for gen, bits in state.pending:
                    if gen == str(generation):
                        for bit in bits.split(","):
                            array[int(bit)] = 1
                state.mirror.bitarray, state.generation = array, generation
                state.missing = False
                state.stale = state.reloads != reloads  # a reload asked for meanwhile: again
            return
        except BackendError:
            return
        finally:
            with state.lock:
                state.loading, state.pending = False, []


def _generations(raw: bytes | None, geometry: Geometry) -> tuple[int, int] | None:
    """``(live, next)`` from a descriptor, or ``None`` if absent, foreign or malformed."""
    if raw is None:
        return None
    try:
        meta = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(meta, dict):
        return None
    shape = (meta.get("k"), meta.get("bits_per_slice"))
    live, building = meta.get("generation"), meta.get("next", 0)
    if shape != (geometry.k, geometry.bits_per_slice) or not isinstance(live, int):
        return None
    return live, building if isinstance(building, int) else 0


def _missing(ctx: Context, state: BloomState, report: bool) -> None:
    was_missing = state.missing
    state.missing, state.generation = True, None
    if was_missing or not report:
        return
    ctx.log.warning(
        ("bloom", state.name),
        "cachekit: Bloom filter %r is missing in Redis; answering 'maybe' until rebuilt",
        state.name,
    )
    ctx.stats.incr("bloom_missing")
    if state.on_missing is not None:
        state.on_missing(state.name)


def _load(keys: BloomKeys, generation: int, geometry: Geometry) -> Flow[Any]:
    array = empty_bits(geometry.bits)
    for index, part in enumerate(keys.of(generation)):
        data = yield Get(part)
        if data:
            chunk = empty_bits(0)
            chunk.frombytes(data)
            start = index * PART_BITS
            size = min(len(chunk), geometry.bits - start)
            array[start : start + size] = chunk[:size]
    return array


def bloom_contains(ctx: Context, state: BloomState, item: object) -> Flow[bool]:
    """``False`` only when ``item`` was certainly never added; "maybe" when missing."""
    yield from bloom_sync(ctx, state)
    if state.missing or state.generation is None:
        return True
    return state.has(offsets(state.geometry, item))


def bloom_add(ctx: Context, state: BloomState, items: Iterable[object]) -> Flow[int]:
    """Add ``items`` in one round trip (to the rebuild too, if one runs); how many were new."""
    yield from bloom_sync(ctx, state)
    bits: list[int] = []
    seen: set[int] = set()
    added = 0
    for item in items:
        item_bits = offsets(state.geometry, item)
        added += not all(state.mirror.bitarray[bit] or bit in seen for bit in item_bits)
        seen.update(item_bits)
        bits.extend(item_bits)
    if not bits:
        return 0
    keys = state.keys(ctx)
    for _ in range(_RETRIES):
        live, building = state.generation or 0, state.next
        if not live and not building:  # not mirrored (yet): ask the descriptor itself
            try:
                live, building = _generations((yield Get(keys.descriptor)), state.geometry) or (
                    0,
                    0,
                )
            except BackendError:
                live = building = 0
        if not live and not building:
            ctx.log.warning(
                ("bloom-add", state.name),
                "cachekit: Bloom filter %r is missing: adds wait for its rebuild",
                state.name,
            )
            return added
        count = yield AddBits(
            keys.descriptor,
            (keys.count(live or building), keys.count(building or live)),
            [*keys.of(live), *keys.of(building)],
            live,
            building,
            [(bit // PART_BITS, bit % PART_BITS) for bit in bits],
            added,
            ctx.channel,
            topic_message(state.topic, f"{live}:" + ",".join(map(str, bits))),
        )
        if count >= 0:
            with state.lock:
                if state.generation == live:
                    state.set_local(bits)
            _check_capacity(ctx, state, count)
            return added
        # The descriptor moved on. Only a new "next"? Follow it; a swap: reload the mirror.
        try:
            now = _generations((yield Get(keys.descriptor)), state.geometry)
        except BackendError:
            return added
        if now is not None and now[0] == state.generation:
            state.next = now[1]
        else:
            state.stale = True
            yield from bloom_sync(ctx, state)
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


def bloom_warm(
    ctx: Context, state: BloomState, items: Iterable[object], batch: int, progress: Progress | None
) -> Flow[int]:
    """Add many items in pipelined batches; a filter that does not exist yet is built."""
    yield from bloom_sync(ctx, state, report=False)
    if state.generation is None:
        return (yield from bloom_rebuild(ctx, state, items, batch, progress))
    done = 0
    for chunk in _batches(items, batch):
        yield from bloom_add(ctx, state, chunk)
        done += len(chunk)
        if progress is not None:
            progress(done)
    return done


def bloom_rebuild(
    ctx: Context, state: BloomState, items: Iterable[object], batch: int, progress: Progress | None
) -> Flow[int]:
    """Build a new generation from ``items`` and swap it in atomically; the item count.

    Announced first, so adds made while ``items`` is read also land in it; built locally
    and ORed into Redis one part per command; swapped only if no later rebuild began. A
    rebuild that fails withdraws its generation and deletes what it wrote.
    """
    yield from bloom_sync(ctx, state, report=False)
    keys = state.keys(ctx)
    building, superseded = yield BeginRebuild(
        keys.descriptor, keys.generations, state.descriptor(0)
    )
    state.next = building
    if superseded and superseded != state.generation:
        yield Delete(keys.all_of(superseded))  # a rebuild that died, or that will now lose
    try:
        array, done, distinct = _build(state.geometry, items, batch, progress)
        parts = [
            (key, array[i * PART_BITS : (i + 1) * PART_BITS].tobytes())
            for i, key in enumerate(keys.of(building))
        ]
        yield MergeBits(parts, keys.scratch(building), keys.count(building), distinct)
        replaced = yield SwapGeneration(
            keys.descriptor,
            building,
            state.descriptor(building),
            ctx.channel,
            topic_message(state.topic, "reload"),
        )
    except GeneratorExit:
        raise
    except BaseException:
        yield AbortRebuild(keys.descriptor, building)
        yield Delete(keys.all_of(building))
        raise
    # A later rebuild won (drop ours), or ours won (drop the generation it replaced).
    if replaced != 0:
        yield Delete(keys.all_of(building if replaced < 0 else replaced))
    state.stale = True
    yield from bloom_sync(ctx, state, report=False)
    _check_capacity(ctx, state, distinct)
    return done


def _build(
    geometry: Geometry, items: Iterable[object], batch: int, progress: Progress | None
) -> tuple[Any, int, int]:
    """The bitmap of ``items``, how many there were, and how many set a new bit."""
    array = empty_bits(geometry.bits)
    done = distinct = 0
    for chunk in _batches(items, batch):
        for item in chunk:
            item_bits = offsets(geometry, item)
            distinct += not all(array[bit] for bit in item_bits)
            for bit in item_bits:
                array[bit] = 1
        done += len(chunk)
        if progress is not None:
            progress(done)
    return array, done, distinct


def bloom_info(ctx: Context, state: BloomState) -> Flow[dict[str, Any]]:
    """Geometry, count, size and the expected false-positive rate, plus the state."""
    yield from bloom_sync(ctx, state)
    added = 0
    if state.generation is not None:
        try:
            added = int((yield Get(state.keys(ctx).count(state.generation))) or 0)
        except BackendError:
            added = 0  # info is best effort; the state below still says what we know
    geometry = state.geometry
    count = geometry.estimate(state.mirror.bitarray.count()) if state.generation else 0
    return {
        "name": state.name,
        "state": "missing" if state.missing else "ready",
        "generation": state.generation,
        "rebuilding": state.next or None,
        "capacity": geometry.capacity,
        "error_rate": geometry.error_rate,
        "count": count,
        "adds_counted": added,
        "hashes": geometry.k,
        "bits": geometry.bits,
        "size_bytes": -(-geometry.bits // 8),
        "parts": state.keys(ctx).parts,
        "expected_false_positive_rate": geometry.false_positive_rate(count),
    }
