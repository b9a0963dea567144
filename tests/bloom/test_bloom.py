"""Bloom filters shared through Redis (``cachekit.bloom.state``, ``.flow``) and the gate.

Against the real test Redis: no false negatives over 100,000 ids, the measured
false-positive rate, the bitmap's size against the textbook formula, offsets that agree
across processes and hash seeds, other processes' adds arriving by notification, a filter
lost to a restart or a flush (fail open, then rebuild), atomic rebuilds announced before
their items are read, overlapping rebuilds (the later one wins), adds refused by the server
when the generations they name are no longer current, filters split over several keys,
counts of distinct items, the capacity warning, and the gate of ``@cache.cached(bloom=...)``.

Some races are exercised deterministically by driving a flow of :mod:`cachekit.bloom.flow`
by hand (:class:`Stepper`): the test runs the flow's effects one by one and acts between two
of them, exactly where another process (or another task of this one) could act.

The tests at the end pin bugs these tests once found: a new geometry on rebuild, two
merges at once, an interrupted rebuild, and adds notified while the mirror loads.

Measured figures (rates, sizes, delays, costs) are printed: run with ``-s`` to see them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
import redis
from bitarray import bitarray

import cachekit.bloom.flow
import cachekit.bloom.state
from cachekit import Bloom, Cache, ConfigurationError
from cachekit.backends.base import SyncBackend
from cachekit.backends.ops import Get, Op
from cachekit.backends.ops.bitmaps import AddBits, BeginRebuild, MergeBits, SwapGeneration
from cachekit.bloom.flow import bloom_add, bloom_rebuild, bloom_sync
from cachekit.bloom.state import Geometry, empty_bits, offsets
from tests.support.servers import PrivateServer
from tests.support.stepper import Stepper
from tests.workers.bloom_worker import decode_item

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")

BIG_N = 100_000
BIG_P = 0.01


# --- helpers -------------------------------------------------------------------------------


def part_key(prefix: str, name: str, generation: int, index: int = 0) -> str:
    return f"{prefix}:bloom:{{{name}}}:g{generation}:{index}"


def count_key(prefix: str, name: str, generation: int) -> str:
    return f"{prefix}:bloom:{{{name}}}:g{generation}:count"


def descriptor_key(prefix: str, name: str) -> str:
    return f"{prefix}:bloom:{{{name}}}"


def counter_key(prefix: str, name: str) -> str:
    """The Redis counter rebuilds draw their generation numbers from."""
    return f"{prefix}:bloom:{{{name}}}:generations"


def filter_keys(prefix: str, name: str, generation: int, parts: int = 1) -> set[str]:
    """Every key a filter with one live generation (and no rebuild running) should have."""
    return {
        descriptor_key(prefix, name),
        counter_key(prefix, name),
        count_key(prefix, name, generation),
        *(part_key(prefix, name, generation, i) for i in range(parts)),
    }


def descriptor_of(client: redis.Redis, prefix: str, name: str) -> dict[str, Any]:
    raw = cast(bytes | None, client.get(descriptor_key(prefix, name)))
    assert raw is not None, "no descriptor"
    meta: dict[str, Any] = json.loads(raw)
    return meta


def textbook_bits(capacity: int, error_rate: float) -> float:
    """m = -n ln p / (ln 2)^2."""
    return -capacity * math.log(error_rate) / math.log(2) ** 2


def replay(geometry: Geometry, items: Iterable[object], into: bitarray | None = None) -> int:
    """Set ``items``' bits in ``into`` one by one; how many set at least one new bit.

    Exactly what a filter can tell of "new": a repeat, or an item whose bits earlier
    items happened to set (a false positive while filling), is not new.
    """
    array = empty_bits(geometry.bits) if into is None else into
    new = 0
    for item in items:
        bits = offsets(geometry, item)
        new += not all(array[bit] for bit in bits)
        for bit in bits:
            array[bit] = 1
    return new


def bitmap_of(geometry: Geometry, items: Iterable[object]) -> bitarray:
    """The bitmap a filter holding exactly ``items`` has."""
    array = empty_bits(geometry.bits)
    replay(geometry, items, array)
    return array


def stored_bitmap(client: redis.Redis, keys: list[str], geometry: Geometry) -> bitarray:
    """The parts ``keys`` concatenated, as the filter's ``geometry.bits`` bits."""
    part = cachekit.bloom.state.PART_BITS  # a multiple of 8 (tests patch it to 4096)
    stored = bitarray(endian="big")
    for index, key in enumerate(keys):
        data = cast(bytes | None, client.get(key)) or b""
        size = -(-min(part, geometry.bits - index * part) // 8)
        assert len(data) <= size, f"{key} holds more than its part"
        stored.frombytes(data.ljust(size, b"\0"))
    return stored[: geometry.bits]


def counted(bloom: Bloom, tolerance: float = 0.05) -> int:
    """``info()["adds_counted"]`` (items that set a new bit, counted by adds and rebuilds).

    Also checks ``info()["count"]``: the estimate from the mirror's set bits, close to it.
    """
    info = bloom.sync.info()
    estimate, exact = info["count"], info["adds_counted"]
    assert estimate == bloom.geometry.estimate(bloom.state.mirror.bitarray.count())
    assert abs(estimate - exact) <= max(2, tolerance * exact), (estimate, exact)
    return cast(int, exact)


def certainly_absent(bloom: Bloom, candidates: Iterable[object], how_many: int) -> list[object]:
    """The first ``how_many`` candidates the filter rejects (skipping false positives)."""
    found: list[object] = []
    for item in candidates:
        if not bloom.sync.contains(item):
            found.append(item)
            if len(found) == how_many:
                return found
    raise AssertionError("not enough rejected candidates")


def wait_for(condition: Callable[[], bool], timeout: float, step: float = 0.002) -> float:
    """Poll ``condition`` until true; the seconds it took. Fails after ``timeout``."""
    started = time.perf_counter()
    deadline = started + timeout
    while not condition():
        assert time.perf_counter() < deadline, f"condition not met within {timeout}s"
        time.sleep(step)
    return time.perf_counter() - started


def keys_of(client: redis.Redis, prefix: str) -> set[str]:
    return {key.decode() for key in client.scan_iter(match=f"{prefix}:*", count=500)}


def drop_keys(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=500))
        if keys:
            client.unlink(*keys)
    finally:
        client.close()


def get_calls(client: redis.Redis) -> int:
    """GET commands the server has run since the last CONFIG RESETSTAT."""
    stats = cast(dict[str, dict[str, int]], client.info("commandstats"))
    return stats.get("cmdstat_get", {}).get("calls", 0)


def backend_of(cache: Cache) -> SyncBackend:
    return cache.bound().sync.backend


def is_get_of(key: str) -> Callable[[object], bool]:
    return lambda effect: isinstance(effect, Get) and effect.key == key


def is_op(kind: type[Op[Any]]) -> Callable[[object], bool]:
    return lambda effect: isinstance(effect, kind)


def rebuild_stepper(cache: Cache, bloom: Bloom, items: Iterable[object]) -> Stepper[int]:
    """``bloom.sync.rebuild(items)``, driven by hand."""
    flow = bloom_rebuild(cache.bound().ctx, bloom.state, items, 10_000, None)
    return Stepper(flow, backend_of(cache))


@dataclass
class Big:
    url: str
    prefix: str
    cache: Cache
    bloom: Bloom
    build_seconds: float


@pytest.fixture(scope="module")
def big(redis_url: str) -> Iterator[Big]:
    """A filter of capacity 100,000 and error rate 1% holding the ints 0..99,999."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    cache = Cache.from_url(redis_url, prefix=prefix)
    bloom = cache.bloom("big", capacity=BIG_N, error_rate=BIG_P)
    started = time.perf_counter()
    assert bloom.sync.rebuild(range(BIG_N)) == BIG_N
    built = time.perf_counter() - started
    print(f"\nrebuild of {BIG_N:,} ids: {built:.3f} s ({built / BIG_N * 1e6:.2f} us/id)")
    try:
        yield Big(redis_url, prefix, cache, bloom, built)
    finally:
        cache.sync.close()
        drop_keys(redis_url, prefix)


def test_no_false_negatives_over_100k_ids(big: Big) -> None:
    started = time.perf_counter()
    rejected = [i for i in range(BIG_N) if not big.bloom.sync.contains(i)]
    per_call = (time.perf_counter() - started) / BIG_N
    print(f"\nsync contains: {per_call * 1e6:.2f} us/call (mirror, no round trip)")
    assert rejected == []
    # 5 and "5" are one identifier (and b"5" too).
    assert all(big.bloom.sync.contains(str(i)) for i in range(0, BIG_N, 101))
    assert all(big.bloom.sync.contains(str(i).encode()) for i in range(0, BIG_N, 103))


async def test_no_false_negatives_in_a_mirror_loaded_from_redis(big: Big) -> None:
    """A second cache (as another process would) loads the bitmap with GET: same answers."""
    other = Cache.from_url(big.url, prefix=big.prefix)
    try:
        bloom = other.bloom("big", capacity=BIG_N, error_rate=BIG_P)
        started = time.perf_counter()
        rejected = [i for i in range(BIG_N) if not await bloom.contains(i)]
        per_call = (time.perf_counter() - started) / BIG_N
        print(f"\nasync contains (incl. first load): {per_call * 1e6:.2f} us/call")
        assert rejected == []
        assert bloom.state.mirror.bitarray == big.bloom.state.mirror.bitarray
    finally:
        await other.close()


def test_false_positive_rate_on_100k_absent_ids(big: Big) -> None:
    false_positives = sum(big.bloom.sync.contains(i) for i in range(BIG_N, 2 * BIG_N))
    rate = false_positives / BIG_N
    expected = big.bloom.sync.info()["expected_false_positive_rate"]
    print(
        f"\nfalse positives: {false_positives}/{BIG_N:,} = {rate:.4%} "
        f"(configured {BIG_P:.2%}, expected by the geometry {expected:.4%})"
    )
    assert rate <= 1.5 * BIG_P
    # Strings that are no int's decimal form: a different population, the same bound.
    strings = sum(big.bloom.sync.contains(f"absent-{i}") for i in range(20_000))
    print(f"false positives on 20,000 absent strings: {strings / 20_000:.4%}")
    assert strings / 20_000 <= 1.5 * BIG_P


def test_bitmap_size_and_info_match_the_geometry(big: Big, raw_redis: redis.Redis) -> None:
    formula = textbook_bits(BIG_N, BIG_P)
    stored_bytes = raw_redis.strlen(part_key(big.prefix, "big", 1))
    info = big.bloom.sync.info()
    geometry = big.bloom.geometry
    print(
        f"\nbitmap: STRLEN {stored_bytes:,} bytes = {stored_bytes * 8:,} bits; formula "
        f"-n ln p/(ln 2)^2 = {formula:,.0f} bits ({stored_bytes * 8 / formula - 1:+.3%}); "
        f"k = {geometry.k}, m = {geometry.bits:,}"
    )
    assert abs(stored_bytes * 8 - formula) <= 0.10 * formula
    assert abs(geometry.bits - formula) <= 0.10 * formula
    assert stored_bytes <= info["size_bytes"] == math.ceil(geometry.bits / 8)
    assert not raw_redis.exists(part_key(big.prefix, "big", 1, 1))  # one part only
    assert info["name"] == "big"
    assert info["state"] == "ready"
    assert info["generation"] == 1
    assert info["capacity"] == BIG_N
    assert info["error_rate"] == BIG_P
    # "count" is estimated from the set bits (Swamidass & Baldi); "adds_counted" counts the
    # items that set a new bit while building: the ids whose bits earlier ids had all set
    # already (false positives while filling) are not in it.
    bitmap = bitmap_of(geometry, range(BIG_N))
    distinct = replay(geometry, range(BIG_N))
    estimate = info["count"]
    print(
        f"count: estimated {estimate:,} ({estimate / BIG_N - 1:+.3%}) from {bitmap.count():,} "
        f"set bits; adds_counted {info['adds_counted']:,} ({BIG_N - distinct} ids were "
        "already 'in' when added)"
    )
    assert estimate == geometry.estimate(bitmap.count())
    assert abs(estimate - BIG_N) <= 0.01 * BIG_N
    assert info["adds_counted"] == distinct
    assert BIG_N * (1 - BIG_P) <= distinct <= BIG_N
    assert info["rebuilding"] is None
    assert info["hashes"] == geometry.k == math.ceil(math.log2(1 / BIG_P))
    assert info["bits"] == geometry.bits == geometry.k * geometry.bits_per_slice
    assert info["parts"] == 1
    expected = info["expected_false_positive_rate"]
    assert expected == pytest.approx(geometry.false_positive_rate(estimate))
    assert expected == pytest.approx((1 - math.exp(-geometry.k * estimate / geometry.bits)) ** 7)
    assert BIG_P / 1.5 <= expected <= 1.5 * BIG_P
    assert int(raw_redis.get(count_key(big.prefix, "big", 1)) or 0) == distinct
    assert stored_bitmap(raw_redis, [part_key(big.prefix, "big", 1)], geometry) == bitmap
    assert keys_of(raw_redis, big.prefix) == filter_keys(big.prefix, "big", 1)  # no scratch
    assert descriptor_of(raw_redis, big.prefix, "big")["next"] == 0


def test_memory_backend_info_matches_the_geometry(memory_cache: Cache) -> None:
    bloom = memory_cache.bloom("small", capacity=5_000, error_rate=0.001)
    assert bloom.sync.warm(range(2_000)) == 2_000
    info = bloom.sync.info()
    geometry = Geometry.of(5_000, 0.001)
    assert info["state"] == "ready"
    assert info["adds_counted"] == replay(geometry, range(2_000)) == 2_000
    assert info["count"] == geometry.estimate(bitmap_of(geometry, range(2_000)).count())
    assert abs(info["count"] - 2_000) <= 20
    assert info["hashes"] == geometry.k == 10
    assert info["size_bytes"] == math.ceil(geometry.bits / 8)
    assert abs(geometry.bits - textbook_bits(5_000, 0.001)) <= 0.10 * textbook_bits(5_000, 0.001)
    assert info["expected_false_positive_rate"] == pytest.approx(
        geometry.false_positive_rate(info["count"])
    )
    assert all(bloom.sync.contains(i) for i in range(2_000))
    assert sum(bloom.sync.contains(i) for i in range(2_000, 12_000)) / 10_000 <= 0.001 * 1.5


# --- offsets: the same in every process ----------------------------------------------------


def mixed_items() -> list[list[str]]:
    """1,000 items in their JSON form: ints, ASCII strings, bytes and non-ASCII text."""
    rng = random.Random(20240607)
    alphabet = "aé漢字🙂\u0301ß\u200d\ud800Ω"  # combining, zero-width joiner, a lone surrogate
    items: list[list[str]] = [["int", str(n)] for n in (0, 5, -1, 2**63, 2**70 + 3, -(2**40))]
    while len(items) < 250:
        items.append(["int", str(rng.randrange(-(10**12), 10**12))])
    items += [["str", f"product-{rng.randrange(10**9)}"] for _ in range(250)]
    items += [["bytes", rng.randbytes(rng.randrange(0, 40)).hex()] for _ in range(250)]
    items += [
        ["str", "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 12)))]
        for _ in range(250)
    ]
    return items


GEOMETRIES = [(1_000_000, 0.001), (100_000, 0.01), (37, 0.3)]


def offsets_in_subprocess(items: list[list[str]], hash_seed: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    request = json.dumps({"geometries": GEOMETRIES, "items": items})
    done = subprocess.run(
        [sys.executable, "-m", "tests.workers.bloom_worker", "offsets"],
        cwd=ROOT,
        env=env,
        input=request,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.slow
def test_offsets_agree_across_processes_and_hash_seeds() -> None:
    items = mixed_items()
    assert len(items) == 1_000
    decoded = [decode_item(kind, value) for kind, value in items]
    assert json.loads(json.dumps(items)) == items  # the lone surrogate survives JSON
    here = [[offsets(Geometry.of(*g), item) for item in decoded] for g in GEOMETRIES]
    first = offsets_in_subprocess(items, "1")
    second = offsets_in_subprocess(items, "2")
    assert first["hash_probe"] != second["hash_probe"]  # the seeds really differ
    assert first["offsets"] == here
    assert second["offsets"] == here


def test_offsets_are_per_slice_and_5_is_5() -> None:
    geometry = Geometry.of(1_000_000, 0.001)
    assert offsets(geometry, 5) == offsets(geometry, "5") == offsets(geometry, b"5")
    assert offsets(geometry, 5) != offsets(geometry, 6)
    assert offsets(geometry, "é") == offsets(geometry, "é".encode())
    for item in (0, "x", b"\xff\x00", "漢字", "\ud800", 2**80):
        bits = offsets(geometry, item)
        assert len(bits) == geometry.k
        for i, bit in enumerate(bits):  # slice i holds bit i
            assert i * geometry.bits_per_slice <= bit < (i + 1) * geometry.bits_per_slice


# --- other processes' adds -----------------------------------------------------------------


def read_line(proc: subprocess.Popen[str], timeout: float = 20.0) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"worker printed nothing within {timeout}s (exit code {proc.poll()})"
    return proc.stdout.readline()


@pytest.mark.slow
def test_another_process_adds_reach_this_mirror_by_notification(
    redis_url: str, prefix: str
) -> None:
    cache = Cache.from_url(redis_url, prefix=prefix)
    # No periodic re-check within the test: only the notification can bring the bits.
    bloom = cache.bloom("live", capacity=10_000, error_rate=0.001, check_interval=600)
    try:
        bloom.sync.rebuild(range(100))
        generation = bloom.state.generation
        new_ids = cast(list[str], certainly_absent(bloom, (f"new-{i}" for i in range(500)), 50))
        command = [sys.executable, "-m", "tests.workers.bloom_worker", "add"]
        args = [redis_url, prefix, "live", "10000", "0.001"]
        with subprocess.Popen(
            [*command, *args], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        ) as proc:
            try:
                assert read_line(proc).strip() == "ready"
                assert proc.stdin is not None
                proc.stdin.write(json.dumps(new_ids) + "\n")
                proc.stdin.flush()
                started = time.time()
                deadline = started + 5
                while not all(bloom.sync.contains(x) for x in new_ids):
                    assert time.time() < deadline, "the other process's adds never arrived"
                    time.sleep(0.0005)
                seen = time.time()
                report = json.loads(read_line(proc))
            finally:
                proc.kill()
        after_add = max(0.0, seen - report["t1"])
        print(
            f"\nadds visible here {(seen - report['t0']) * 1e3:.2f} ms "
            f"after the other process called add_many, {after_add * 1e3:.2f} ms after it returned"
        )
        assert report["added"] == 50
        assert seen - report["t0"] < 2.0
        assert bloom.state.generation == generation  # no reload: the notification did it
        assert counted(bloom) == 150
    finally:
        cache.sync.close()


# --- a filter lost to a restart or a flush -------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("how", ["restart", "flushall"])
def test_lost_filter_fails_open_then_rebuild_restores_it(
    private_redis: PrivateServer, how: str
) -> None:
    calls: list[str] = []
    cache = Cache.from_url(private_redis.url, prefix="lost")
    bloom = cache.bloom(
        "ids", capacity=1_000, error_rate=0.001, on_missing=calls.append, check_interval=0.1
    )
    loads: list[int] = []

    @cache.cached(ttl=60, key="thing:{thing_id}", bloom="ids")
    def get_thing(thing_id: int) -> int:
        loads.append(thing_id)
        return thing_id

    try:
        bloom.sync.rebuild(range(500))
        absent = cast(list[int], certainly_absent(bloom, range(10_000, 20_000), 5))
        assert get_thing(absent[0]) is None
        assert loads == []
        missing_before, calls_before = cache.stats()["bloom_missing"], len(calls)

        if how == "restart":
            private_redis.kill()
            private_redis.start()  # same port, empty dataset
        else:
            client = redis.Redis(port=private_redis.port)
            client.flushall()
            client.close()
        took = wait_for(lambda: bloom.sync.contains(absent[1]), timeout=5.0, step=0.01)
        print(f"\n{how}: filter reported missing after {took * 1e3:.0f} ms (check_interval 0.1 s)")

        info = bloom.sync.info()
        assert info["state"] == "missing"
        assert info["generation"] is None
        time.sleep(0.3)  # several check intervals: still missing, counted once
        assert all(bloom.sync.contains(x) for x in absent)  # "maybe": fail open
        assert get_thing(absent[2]) == absent[2]  # the gate lets it through to the loader
        assert loads == [absent[2]]
        assert cache.stats()["bloom_missing"] - missing_before == 1
        assert calls[calls_before:] == ["ids"]

        assert bloom.sync.rebuild(range(500)) == 500
        info = bloom.sync.info()
        assert info["state"] == "ready"
        assert counted(bloom) == replay(bloom.geometry, range(500))
        assert not any(bloom.sync.contains(x) for x in absent)
        assert all(bloom.sync.contains(i) for i in range(500))
        assert get_thing(absent[3]) is None
        assert loads == [absent[2]]
        assert calls[calls_before:] == ["ids"]  # not called again
    finally:
        cache.sync.close()


# --- rebuilds, and adds and loads racing them ---------------------------------------------


def test_rebuild_swaps_generations_atomically(
    redis_url: str, prefix: str, raw_redis: redis.Redis
) -> None:
    old_only = [f"old-{i}" for i in range(1_000)]
    both = [f"both-{i}" for i in range(1_000)]
    new_only = [f"new-{i}" for i in range(1_000)]
    writer = Cache.from_url(redis_url, prefix=prefix)
    reader = Cache.from_url(redis_url, prefix=prefix)
    fresh_caches: list[Cache] = []

    def declare(cache: Cache, check_interval: float = 1.0) -> Bloom:
        return cache.bloom("swap", capacity=10_000, error_rate=0.001, check_interval=check_interval)

    def visible(bloom: Bloom, ids: list[str]) -> int:
        return sum(bloom.sync.contains(x) for x in ids)

    checks = 0

    def new_items() -> Iterator[str]:
        nonlocal checks
        for i, item in enumerate(both + new_only):
            if i % 250 == 0:  # mid-way, between batches of the items being read
                checks += 1
                # Announced before the first item is read; readers still see generation 1.
                meta = descriptor_of(raw_redis, prefix, "swap")
                assert (meta["generation"], meta["next"]) == (1, 2)
                assert part_key(prefix, "swap", 2) not in keys_of(raw_redis, prefix)  # local
                assert visible(read, old_only[:200]) == 200  # a GET per call: a sample
                assert visible(read, both[:200]) == 200
                fresh = Cache.from_url(redis_url, prefix=prefix)
                fresh_caches.append(fresh)
                seen_fresh = declare(fresh)
                assert visible(seen_fresh, old_only) == len(old_only)
                assert visible(seen_fresh, new_only) <= 10  # false positives only
                assert seen_fresh.state.generation == 1
                assert seen_fresh.sync.info()["rebuilding"] == 2
            yield item

    try:
        write = declare(writer)
        read = declare(reader, check_interval=0)  # re-checks the descriptor at every call
        write.sync.rebuild(old_only + both)
        assert visible(read, old_only + both) == 2_000
        assert write.sync.rebuild(new_items(), batch=100) == 2_000
        assert checks == 8

        # The reader follows at its next call: new ids in, old-only ids (probably) out.
        assert visible(read, both + new_only) == 2_000
        assert visible(read, old_only) <= 10
        assert read.state.generation == 2
        assert write.sync.info()["generation"] == 2
        assert counted(write) == replay(write.geometry, both + new_only) == 2_000
        assert write.sync.info()["rebuilding"] is None
        # Generation 1 deleted after the swap; no scratch key left behind.
        assert keys_of(raw_redis, prefix) == filter_keys(prefix, "swap", 2)
        descriptor = descriptor_of(raw_redis, prefix, "swap")
        assert (descriptor["generation"], descriptor["next"]) == (2, 0)
        assert stored_bitmap(raw_redis, [part_key(prefix, "swap", 2)], write.geometry) == (
            bitmap_of(write.geometry, both + new_only)
        )
    finally:
        for cache in (writer, reader, *fresh_caches):
            cache.sync.close()


def test_a_load_racing_a_rebuild_never_sees_an_empty_filter(
    redis_url: str, prefix: str, raw_redis: redis.Redis
) -> None:
    """Regression: the parts of a generation deleted under a load were installed as empty."""
    writer = Cache.from_url(redis_url, prefix=prefix)
    reader = Cache.from_url(redis_url, prefix=prefix)
    try:
        write = writer.bloom("race", capacity=1_000, error_rate=0.001)
        read = reader.bloom("race", capacity=1_000, error_rate=0.001, check_interval=600)
        write.sync.rebuild(range(100))
        assert read.sync.contains(5)  # loaded, subscribed
        write.sync.rebuild(range(100))  # generation 2: the reader will reload
        wait_for(lambda: read.state.stale, timeout=2.0)

        stepper = Stepper(bloom_sync(reader.bound().ctx, read.state), backend_of(reader))
        # The reader has read the descriptor (generation 2) and is about to GET its part...
        get_part = stepper.until(is_get_of(part_key(prefix, "race", 2)))
        reloads = read.state.reloads
        write.sync.rebuild(range(100))  # ...when another process swaps in generation 3.
        assert part_key(prefix, "race", 2) not in keys_of(raw_redis, prefix)  # deleted
        wait_for(lambda: read.state.reloads > reloads, timeout=2.0)  # its "reload" arrived
        assert read.state.loading  # the load is under way: add notifications wait in pending
        assert stepper.perform(get_part) is None  # the deleted part reads as nothing
        stepper.finish(None)

        # The load read the descriptor again, saw generation 3 and loaded that instead.
        descriptor = descriptor_key(prefix, "race")
        gets = [effect.key for effect, _ in stepper.performed if isinstance(effect, Get)]
        assert gets == [
            descriptor,
            part_key(prefix, "race", 2),
            descriptor,
            descriptor,
            part_key(prefix, "race", 3),
            descriptor,
        ]
        assert read.state.generation == 3
        assert not read.state.loading
        assert read.state.mirror.bitarray == bitmap_of(read.geometry, range(100))
        assert all(read.state.has(offsets(read.geometry, i)) for i in range(100))
        assert all(read.sync.contains(i) for i in range(100))
    finally:
        writer.sync.close()
        reader.sync.close()


def test_concurrent_rebuilds_never_mix_the_later_one_wins(
    redis_url: str, prefix: str, raw_redis: redis.Redis
) -> None:
    """Regression, through the public API: B begins during A, so B's set is swapped in."""
    first, second, fresh = (Cache.from_url(redis_url, prefix=prefix) for _ in range(3))
    try:
        a = first.bloom("both", capacity=10_000, error_rate=0.001)
        b = second.bloom("both", capacity=10_000, error_rate=0.001)
        ids_a = [f"a{i}" for i in range(2_000)]
        ids_b = [f"b{i}" for i in range(2_000)]

        def items_a() -> Iterator[str]:
            for i, item in enumerate(ids_a):
                if i == 1_000:  # A has announced generation 1: another process rebuilds too
                    assert b.sync.rebuild(ids_b) == len(ids_b)  # generation 2, swapped in
                    assert descriptor_of(raw_redis, prefix, "both")["generation"] == 2
                yield item

        assert a.sync.rebuild(items_a(), batch=500) == len(ids_a)  # A's swap is refused
        after = fresh.bloom("both", capacity=10_000, error_rate=0.001)
        holds_a = sum(after.sync.contains(x) for x in ids_a)
        holds_b = sum(after.sync.contains(x) for x in ids_b)
        print(f"\nafter two overlapping rebuilds: {holds_a} of A's ids, {holds_b} of B's")
        assert holds_b == len(ids_b)
        assert holds_a <= 10  # false positives only
        assert after.state.mirror.bitarray == bitmap_of(after.geometry, ids_b)
        assert a.state.generation == b.state.generation == after.state.generation == 2
        assert counted(a) == replay(a.geometry, ids_b)
        # A deleted its own generation (1); nothing else is left over.
        assert keys_of(raw_redis, prefix) == filter_keys(prefix, "both", 2)
        assert descriptor_of(raw_redis, prefix, "both")["next"] == 0
    finally:
        for cache in (first, second, fresh):
            cache.sync.close()


@pytest.mark.parametrize("order", ["later-finishes-first", "earlier-finishes-first"])
def test_overlapping_rebuilds_keep_the_later_items_and_the_adds_made_during_it(
    redis_url: str, prefix: str, raw_redis: redis.Redis, order: str
) -> None:
    """Regression, step by step: exactly B's items plus the adds made since B began."""
    builder_a, builder_b, adder, fresh = (
        Cache.from_url(redis_url, prefix=prefix) for _ in range(4)
    )

    def declare(cache: Cache) -> Bloom:
        # No periodic re-check: the adder follows only refusals and "reload" notifications.
        return cache.bloom("overlap", capacity=10_000, error_rate=0.001, check_interval=600)

    def follows_b(bloom: Bloom) -> bool:
        return bloom.sync.contains("b7") and bloom.state.generation == 3

    try:
        a, b, add = declare(builder_a), declare(builder_b), declare(adder)
        reader = fresh.bloom("overlap", capacity=10_000, error_rate=0.001, check_interval=0)
        geometry = a.geometry
        old_ids = [f"old{i}" for i in range(500)]
        ids_a = [f"a{i}" for i in range(1_500)]
        ids_b = [f"b{i}" for i in range(1_500)]
        b.sync.rebuild(old_ids)  # generation 1, live
        # Every process mirrors generation 1 and listens (a Stepper does not subscribe).
        assert a.sync.contains("old1")
        assert add.sync.contains("old1")

        rebuild_a = rebuild_stepper(builder_a, a, ids_a)
        merge_a = rebuild_a.until(is_op(MergeBits))  # A announced generation 2, built locally
        assert rebuild_a.replies(BeginRebuild) == [(2, 0)]
        assert add.sync.add("before-b")  # refused once (next is 2 now), then in 1 and 2
        assert raw_redis.exists(part_key(prefix, "overlap", 2))

        rebuild_b = rebuild_stepper(builder_b, b, ids_b)
        merge_b = rebuild_b.until(is_op(MergeBits))  # B announced generation 3
        assert rebuild_b.replies(BeginRebuild) == [(3, 2)]  # supersedes A's generation 2
        meta = descriptor_of(raw_redis, prefix, "overlap")
        assert (meta["generation"], meta["next"]) == (1, 3)  # A's generation 2 is dropped
        assert add.sync.add("during-b")  # refused (next moved to 3), then in 1 and 3
        assert add.state.next == 3
        during = ["during-b"]

        def swap_a() -> None:
            assert rebuild_a.finish(rebuild_a.perform(merge_a)) == len(ids_a)
            assert rebuild_a.replies(SwapGeneration) == [-1]  # refused: B began later

        def swap_b() -> None:
            assert rebuild_b.finish(rebuild_b.perform(merge_b)) == len(ids_b)
            assert rebuild_b.replies(SwapGeneration) == [1]  # replaced (and deleted) 1

        if order == "later-finishes-first":
            swap_b()
            assert add.sync.add("after-b-swapped")  # lands in 3, the live generation
            during.append("after-b-swapped")
            keys = keys_of(raw_redis, prefix)
            assert part_key(prefix, "overlap", 1) not in keys
            assert part_key(prefix, "overlap", 2) not in keys  # dropped when B superseded it
            swap_a()  # A's merge writes generation 2 again; its refused swap deletes it
        else:
            swap_a()
            # A gave up and deleted generation 2; readers still see generation 1.
            keys = keys_of(raw_redis, prefix)
            assert not keys & {part_key(prefix, "overlap", 2), count_key(prefix, "overlap", 2)}
            meta = descriptor_of(raw_redis, prefix, "overlap")
            assert (meta["generation"], meta["next"]) == (1, 3)
            assert all(reader.sync.contains(x) for x in old_ids)
            assert reader.state.generation == 1
            assert add.sync.add("after-a-gave-up")  # B still building: in 1 and 3
            during.append("after-a-gave-up")
            swap_b()

        meta = descriptor_of(raw_redis, prefix, "overlap")
        assert (meta["generation"], meta["next"]) == (3, 0)
        assert keys_of(raw_redis, prefix) == filter_keys(prefix, "overlap", 3)  # no orphans
        expected = bitmap_of(geometry, ids_b + during)
        assert stored_bitmap(raw_redis, [part_key(prefix, "overlap", 3)], geometry) == expected
        assert all(reader.sync.contains(x) for x in ids_b + during)
        assert reader.state.generation == 3
        assert reader.state.mirror.bitarray == expected  # exactly B's items and the adds
        assert counted(reader) == replay(geometry, ids_b) + len(during)
        for bloom in (a, b, add):  # every process follows the swap ("reload")
            wait_for(partial(follows_b, bloom), timeout=2.0)
            assert bloom.state.mirror.bitarray == expected
    finally:
        for cache in (builder_a, builder_b, adder, fresh):
            cache.sync.close()


def test_an_add_made_while_a_rebuild_reads_its_items_lands_in_both_generations(
    redis_url: str, prefix: str, raw_redis: redis.Redis
) -> None:
    """Announced before its items are read, a rebuild also gets the adds made meanwhile."""
    builder, adder = (
        Cache.from_url(redis_url, prefix=prefix),
        Cache.from_url(redis_url, prefix=prefix),
    )
    try:
        build = builder.bloom("during", capacity=1_000, error_rate=0.001)
        add = adder.bloom("during", capacity=1_000, error_rate=0.001, check_interval=600)
        build.sync.rebuild(range(100))
        assert add.sync.contains(5)
        bits = offsets(build.geometry, "created-meanwhile")
        refusals: list[int] = []

        def items() -> Iterator[int]:
            # A new product is created (and added) after the listing of ids has begun,
            # and after the listing has passed where it would be.
            yield from range(50)
            stepper = Stepper(
                bloom_add(adder.bound().ctx, add.state, ["created-meanwhile"]),
                backend_of(adder),
            )
            assert stepper.finish(None) == 1
            refusals.extend(stepper.replies(AddBits))
            for generation in (1, 2):  # the live one and the one being built
                key = part_key(prefix, "during", generation)
                assert all(raw_redis.getbit(key, bit) for bit in bits)
            yield from range(50, 100)

        assert build.sync.rebuild(items()) == 100
        assert refusals[0] == -1  # the adder believed in (1, 0): refused, then followed
        assert refusals[-1] >= 0
        assert build.sync.contains("created-meanwhile")
        assert counted(build) == replay(build.geometry, range(100)) + 1
        wait_for(lambda: add.sync.contains(7) and add.state.generation == 2, timeout=2.0)
        assert add.sync.contains("created-meanwhile")
        assert keys_of(raw_redis, prefix) == filter_keys(prefix, "during", 2)
    finally:
        builder.sync.close()
        adder.sync.close()


def test_an_add_made_while_a_lost_filter_is_rebuilt_is_kept(
    redis_url: str, prefix: str, raw_redis: redis.Redis
) -> None:
    """An adder that saw the filter missing asks the descriptor, so its add joins the rebuild."""
    builder, adder, fresh = (Cache.from_url(redis_url, prefix=prefix) for _ in range(3))
    try:
        build = builder.bloom("relost", capacity=1_000, error_rate=0.001)
        add = adder.bloom("relost", capacity=1_000, error_rate=0.001, check_interval=600)
        build.sync.rebuild(range(100))
        assert add.sync.contains(5)  # loaded
        raw_redis.delete(*keys_of(raw_redis, prefix))  # lost to a flush
        add.state.checked_at = -math.inf  # the adder's periodic check comes due...
        assert add.sync.contains("anything")  # ...and finds it missing: "maybe"
        assert add.state.missing
        assert not add.state.stale

        # on_missing (or an operator) rebuilds it: announced, items being read...
        rebuild = rebuild_stepper(builder, build, range(100))
        merge = rebuild.until(is_op(MergeBits))
        assert descriptor_of(raw_redis, prefix, "relost")["next"] == 1
        assert add.state.next == 0  # the adder has not looked since
        assert add.sync.add("created-during-the-rebuild")  # ...when a new id is added
        bits = offsets(add.geometry, "created-during-the-rebuild")
        assert all(raw_redis.getbit(part_key(prefix, "relost", 1), bit) for bit in bits)
        rebuild.finish(rebuild.perform(merge))

        reader = fresh.bloom("relost", capacity=1_000, error_rate=0.001)
        assert all(reader.sync.contains(i) for i in range(100))
        assert reader.sync.contains("created-during-the-rebuild")
    finally:
        for cache in (builder, adder, fresh):
            cache.sync.close()


def test_an_add_landing_after_a_swap_is_refused_and_retried_in_the_new_generation(
    redis_url: str, prefix: str, raw_redis: redis.Redis
) -> None:
    """Regression: an add whose write reached Redis after a swap went to the dead bitmap."""
    adder, builder, fresh = (Cache.from_url(redis_url, prefix=prefix) for _ in range(3))
    try:
        add = adder.bloom("late", capacity=1_000, error_rate=0.001)
        build = builder.bloom("late", capacity=1_000, error_rate=0.001)
        build.sync.rebuild(range(100))
        assert add.sync.contains(5)  # the adder's mirror: generation 1

        stepper = Stepper(bloom_add(adder.bound().ctx, add.state, ["late-id"]), backend_of(adder))
        add_bits = stepper.until(is_op(AddBits))
        assert (add_bits.live, add_bits.next) == (1, 0)
        build.sync.rebuild(range(100))  # generation 2 is swapped in (and 1 deleted) first
        assert stepper.perform(add_bits) == -1  # the server refuses: 1 is no longer live
        assert part_key(prefix, "late", 1) not in keys_of(raw_redis, prefix)  # not re-created
        assert stepper.finish(-1) == 1  # reloaded and retried: add() returned True

        retried = [effect for effect, _ in stepper.performed if isinstance(effect, AddBits)]
        assert [(op.live, op.next) for op in retried] == [(1, 0), (2, 0)]
        assert stepper.replies(AddBits)[-1] == replay(add.geometry, range(100)) + 1  # count
        bits = offsets(add.geometry, "late-id")
        assert all(raw_redis.getbit(part_key(prefix, "late", 2), bit) for bit in bits)
        assert add.state.generation == 2
        assert add.state.has(bits)
        assert counted(build) == replay(build.geometry, range(100)) + 1
        assert fresh.bloom("late", capacity=1_000, error_rate=0.001).sync.contains("late-id")
        assert keys_of(raw_redis, prefix) == filter_keys(prefix, "late", 2)
    finally:
        for cache in (adder, builder, fresh):
            cache.sync.close()


def test_an_add_notified_during_a_reload_is_kept(redis_url: str, prefix: str) -> None:
    """Regression: an add notified between the part GET and the swap of the mirror."""
    loader, other = (
        Cache.from_url(redis_url, prefix=prefix),
        Cache.from_url(redis_url, prefix=prefix),
    )
    try:
        mine = loader.bloom("reload", capacity=1_000, error_rate=0.001, check_interval=0.1)
        theirs = other.bloom("reload", capacity=1_000, error_rate=0.001)
        theirs.sync.rebuild(range(100))
        assert mine.sync.contains(5)  # loaded and subscribed
        mine.state.on_message(None)  # what a reconnect does: reload at the next check

        stepper = Stepper(bloom_sync(loader.bound().ctx, mine.state), backend_of(loader))
        get_part = stepper.until(is_get_of(part_key(prefix, "reload", 1)))
        bitmap = stepper.perform(get_part)  # read before the other process's add...
        assert theirs.sync.add("added-meanwhile")
        bits = offsets(mine.geometry, "added-meanwhile")
        wait_for(lambda: bool(mine.state.pending), timeout=2.0)  # ...whose notification came
        assert mine.state.has(bits)  # the old mirror answers with it at once...
        assert mine.state.pending  # ...and it is kept to replay onto the new bitmap
        stepper.finish(bitmap)

        assert mine.state.has(bits)  # applied at the swap, with no further reload
        assert not mine.state.loading
        assert mine.state.pending == []
        assert not mine.state.stale
        time.sleep(0.3)  # and several check intervals pass
        assert mine.sync.contains("added-meanwhile")
        assert mine.state.generation == 1
    finally:
        loader.sync.close()
        other.sync.close()


def test_one_load_at_a_time_keeps_an_add_notified_meanwhile(redis_url: str, prefix: str) -> None:
    """One load per process: a second one (another task or thread) leaves the first alone,
    so the adds kept aside meanwhile are applied, not lost to a later-finishing load."""
    loader = Cache.from_url(redis_url, prefix=prefix)
    other = Cache.from_url(redis_url, prefix=prefix)
    try:
        mine = loader.bloom("twoloads", capacity=1_000, error_rate=0.001, check_interval=600)
        theirs = other.bloom("twoloads", capacity=1_000, error_rate=0.001)
        theirs.sync.rebuild(range(100))
        assert mine.sync.contains(5)
        mine.state.on_message(None)  # a reconnect: every call now reloads until one is done
        ctx, backend = loader.bound().ctx, backend_of(loader)
        part = part_key(prefix, "twoloads", 1)

        first = Stepper(bloom_sync(ctx, mine.state), backend)  # one task's contains()...
        bitmap = first.perform(first.until(is_get_of(part)))  # ...has read the part
        assert theirs.sync.add("added-meanwhile")
        wait_for(lambda: bool(mine.state.pending), timeout=2.0)  # its notification: pending
        second = Stepper(bloom_sync(ctx, mine.state), backend)  # another task's contains()
        second.finish(None)  # reads the descriptor, sees a load under way and leaves it
        gets = [effect.key for effect, _ in second.performed if isinstance(effect, Get)]
        assert gets == [descriptor_key(prefix, "twoloads")]
        assert mine.state.loading
        assert mine.state.pending  # untouched
        bits = offsets(mine.geometry, "added-meanwhile")
        first.finish(bitmap)

        assert mine.state.has(bits)
        assert not mine.state.loading
        assert mine.state.pending == []
        assert mine.sync.contains("added-meanwhile")
    finally:
        loader.sync.close()
        other.sync.close()


# --- filters split over several keys -------------------------------------------------------


def test_a_filter_split_over_several_keys(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, prefix: str, raw_redis: redis.Redis
) -> None:
    part = 4096
    monkeypatch.setattr(cachekit.bloom.state, "PART_BITS", part)  # BloomKeys: how many parts
    monkeypatch.setattr(cachekit.bloom.flow, "PART_BITS", part)  # the flows: where a bit is
    geometry = Geometry.of(2_000, 0.01)
    parts = math.ceil(geometry.bits / part)
    assert parts >= 4
    first, second = (
        Cache.from_url(redis_url, prefix=prefix),
        Cache.from_url(redis_url, prefix=prefix),
    )
    try:
        bloom = first.bloom("split", capacity=2_000, error_rate=0.01)
        assert bloom.sync.warm(range(2_000), batch=300) == 2_000
        info = bloom.sync.info()
        assert info["parts"] == parts
        assert counted(bloom) == replay(geometry, range(2_000))
        keys = keys_of(raw_redis, prefix)
        assert {part_key(prefix, "split", 1, i) for i in range(parts)} <= keys
        assert part_key(prefix, "split", 1, parts) not in keys
        sizes = [raw_redis.strlen(part_key(prefix, "split", 1, i)) for i in range(parts)]
        print(f"\n{geometry.bits} bits in {parts} parts of {part} bits: STRLEN {sizes}")
        assert all(size <= part // 8 for size in sizes)
        assert sizes[-1] <= math.ceil((geometry.bits - (parts - 1) * part) / 8)

        # Every item's bits are where the mirror says, in the right part, in Redis.
        for item in range(0, 2_000, 37):
            for bit in offsets(geometry, item):
                assert raw_redis.getbit(part_key(prefix, "split", 1, bit // part), bit % part)

        assert all(bloom.sync.contains(i) for i in range(2_000))
        other = second.bloom("split", capacity=2_000, error_rate=0.01)  # loads every part
        assert all(other.sync.contains(i) for i in range(2_000))
        assert other.state.mirror.bitarray == bloom.state.mirror.bitarray
        stored = stored_bitmap(
            raw_redis, [part_key(prefix, "split", 1, i) for i in range(parts)], geometry
        )
        assert stored == bloom.state.mirror.bitarray == bitmap_of(geometry, range(2_000))
        rate = sum(other.sync.contains(i) for i in range(2_000, 22_000)) / 20_000
        print(f"false-positive rate of the split filter: {rate:.3%}")
        assert rate <= 1.5 * 0.01

        assert bloom.sync.add("late")  # one script over several parts, announced
        wait_for(lambda: other.sync.contains("late"), timeout=2.0)
        assert bloom.sync.rebuild(range(1_000, 3_000), batch=700) == 2_000  # merged part by part
        assert keys_of(raw_redis, prefix) == filter_keys(prefix, "split", 2, parts)
        stored = stored_bitmap(
            raw_redis, [part_key(prefix, "split", 2, i) for i in range(parts)], geometry
        )
        assert stored == bitmap_of(geometry, range(1_000, 3_000))
        assert all(bloom.sync.contains(i) for i in range(1_000, 3_000))
        wait_for(lambda: other.sync.contains(2_500) and other.state.generation == 2, timeout=2.0)
        assert other.state.mirror.bitarray == stored
    finally:
        first.sync.close()
        second.sync.close()


# --- capacity and counts -------------------------------------------------------------------


def test_over_capacity_warns_once_and_counts(
    redis_cache: Cache, caplog: pytest.LogCaptureFixture
) -> None:
    bloom = redis_cache.bloom("full", capacity=100, error_rate=0.01)
    bloom.sync.rebuild(range(50))
    assert bloom.sync.add_many(range(50, 100)) == 50  # exactly full: fine
    assert redis_cache.stats()["bloom_over_capacity"] == 0
    with caplog.at_level(logging.WARNING, logger="cachekit"):
        # Over capacity, a new item may already be a false positive: "not new".
        added = bloom.sync.add_many(range(100, 150))
        added += bloom.sync.add_many(range(150, 155))
        assert bloom.sync.warm(range(155, 160)) == 5
    assert added >= 50
    over = [r for r in caplog.records if "over its capacity" in r.getMessage()]
    assert len(over) == 1
    assert "'full'" in over[0].getMessage()
    assert redis_cache.stats()["bloom_over_capacity"] == 3  # one per call over capacity
    assert counted(bloom, tolerance=0.25) == 100 + added + 5  # estimates blur when full
    assert bloom.sync.info()["expected_false_positive_rate"] > 0.01


def test_warming_known_items_again_does_not_inflate_the_count(any_cache: Cache) -> None:
    """Regression: warm() at every start-up added len(items) to the count each time."""
    bloom = any_cache.bloom("rewarm", capacity=150, error_rate=0.01)
    geometry = bloom.geometry
    assert bloom.sync.warm(range(100)) == 100  # the filter did not exist: built from them
    first = bloom.sync.info()
    assert counted(bloom) == replay(geometry, range(100))
    assert bloom.sync.warm(range(100)) == 100  # a second start-up warms the same ids
    assert bloom.sync.warm(range(100), batch=7) == 100  # and a third, in small batches
    assert any_cache.stats()["bloom_over_capacity"] == 0
    again = bloom.sync.info()
    assert (again["count"], again["adds_counted"]) == (first["count"], first["adds_counted"])
    assert bloom.sync.warm([*range(90, 110), 105]) == 21  # 10 known, 10 new, one repeat
    assert counted(bloom, tolerance=0.1) == replay(geometry, [*range(100), *range(90, 110)])


def test_a_rebuild_counts_each_distinct_item_once(any_cache: Cache) -> None:
    bloom = any_cache.bloom("redup", capacity=100, error_rate=0.01)
    items = [f"id-{i % 60}" for i in range(150)]  # 60 distinct ids, most of them repeated
    assert bloom.sync.rebuild(items) == 150  # the items read
    assert counted(bloom) == replay(bloom.geometry, items) <= 60
    assert replay(bloom.geometry, items) >= 58  # at most a rare false positive less
    assert any_cache.stats()["bloom_over_capacity"] == 0  # 150 items, but 60 ids: no warning


# --- the decorator's gate ------------------------------------------------------------------


def test_gate_rejects_certain_misses_without_lookup_or_load_sync(memory_cache: Cache) -> None:
    products = memory_cache.bloom("products", capacity=1_000, error_rate=0.001)
    products.sync.rebuild(range(1, 101))
    absent = cast(list[int], certainly_absent(products, range(1_000, 2_000), 3))
    loads: list[int] = []

    @memory_cache.cached(ttl=60, key="product:{pid}", bloom="products")
    def get_product(pid: int) -> dict[str, int]:
        loads.append(pid)
        return {"pid": pid}

    before = memory_cache.stats()
    assert get_product(absent[0]) is None
    assert get_product(pid=absent[1]) is None
    after = memory_cache.stats()
    assert loads == []
    assert after["bloom_rejects"] - before["bloom_rejects"] == 2
    assert after["misses"] == before["misses"]
    assert after["hits"] == before["hits"]

    assert get_product(5) == {"pid": 5}
    assert get_product(5) == {"pid": 5}
    assert loads == [5]
    final = memory_cache.stats()
    assert final["misses"] - after["misses"] == 1
    assert final["hits"] - after["hits"] == 1
    assert final["bloom_rejects"] == after["bloom_rejects"]


async def test_gate_rejects_certain_misses_without_lookup_or_load_async(
    memory_cache: Cache,
) -> None:
    products = memory_cache.bloom("products", capacity=1_000, error_rate=0.001)
    await products.rebuild(range(1, 101))
    absent = cast(list[int], certainly_absent(products, range(1_000, 2_000), 2))
    loads: list[int] = []

    @memory_cache.cached(ttl=60, key="product:{pid}", bloom="products")
    async def get_product(pid: int) -> dict[str, int]:
        loads.append(pid)
        return {"pid": pid}

    before = memory_cache.stats()
    assert await get_product(absent[0]) is None
    assert await get_product(pid=absent[1]) is None
    after = memory_cache.stats()
    assert loads == []
    assert after["bloom_rejects"] - before["bloom_rejects"] == 2
    assert after["misses"] == before["misses"]
    assert await get_product(7) == {"pid": 7}
    assert await get_product(7) == {"pid": 7}
    assert loads == [7]


async def test_gate_bloom_key_template_and_bloom_reject(memory_cache: Cache) -> None:
    skus = memory_cache.bloom("skus", capacity=1_000, error_rate=0.001)
    skus.sync.rebuild([f"SKU-{i}" for i in range(100)])
    loads: list[tuple[str, str]] = []

    @memory_cache.cached(ttl=60, key="sku:{sku}:{lang}", bloom="skus", bloom_key="{sku}")
    def by_sku(lang: str, sku: str) -> str:  # the identifier is not the first argument
        loads.append((lang, sku))
        return f"{sku}/{lang}"

    @memory_cache.cached(
        ttl=60, key="strict:{sku}", bloom="skus", bloom_key="{sku}", bloom_reject=LookupError
    )
    async def strict(sku: str) -> str:
        loads.append(("strict", sku))
        return sku

    assert by_sku("en", "SKU-3") == "SKU-3/en"
    assert by_sku("en", sku="NOPE-1") is None
    assert await strict("SKU-4") == "SKU-4"
    with pytest.raises(LookupError, match="NOPE-2"):
        await strict("NOPE-2")
    with pytest.raises(LookupError):
        await strict(sku="NOPE-3")
    assert loads == [("en", "SKU-3"), ("strict", "SKU-4")]
    assert memory_cache.stats()["bloom_rejects"] == 3


def test_gate_bloom_reject_on_sync_function(memory_cache: Cache) -> None:
    ids = memory_cache.bloom("ids", capacity=100, error_rate=0.01)
    ids.sync.rebuild(range(10))
    absent = cast(int, certainly_absent(ids, range(100, 200), 1)[0])

    @memory_cache.cached(ttl=60, key="id:{n}", bloom="ids", bloom_reject=KeyError)
    def load(n: int) -> int:
        return n * 2

    assert load(3) == 6
    with pytest.raises(KeyError):
        load(absent)


async def test_gate_with_an_undeclared_filter_fails_at_call_time(memory_cache: Cache) -> None:
    @memory_cache.cached(ttl=60, bloom="undeclared")
    def sync_load(n: int) -> int:
        return n

    @memory_cache.cached(ttl=60, bloom="undeclared")
    async def async_load(n: int) -> int:
        return n

    with pytest.raises(ConfigurationError, match="undeclared"):
        sync_load(1)
    with pytest.raises(ConfigurationError, match="undeclared"):
        await async_load(1)


async def test_bloom_key_template_offers_the_raw_identifier(
    redis_cache: Cache, raw_redis: redis.Redis, prefix: str
) -> None:
    """Regression: bloom_key values were percent-escaped like key components."""
    skus = ["AB:12", "with space", "100%", "{braced}", "a%3Ab", "é/漢"]
    bloom = redis_cache.bloom("raw-skus", capacity=100, error_rate=0.001)
    bloom.sync.rebuild([*skus, *(f"eu/{sku}" for sku in skus)])
    loads: list[str] = []

    @redis_cache.cached(ttl=60, key="sku:{sku}", bloom="raw-skus", bloom_key="{sku}")
    def get_sku(sku: str) -> str:
        loads.append(sku)
        return sku.upper()

    @redis_cache.cached(
        ttl=60, key="sku:{region}:{sku}", bloom="raw-skus", bloom_key="{region}/{sku}"
    )
    async def regional(region: str, sku: str, lang: str = "en") -> str:
        loads.append(f"{region}/{sku}")
        return f"{region}/{sku}"

    assert [get_sku(s) for s in skus] == [s.upper() for s in skus]  # the one-field fast path
    assert [get_sku(sku=s) for s in skus] == [s.upper() for s in skus]  # keywords: cached
    assert [await regional("eu", s) for s in skus] == [f"eu/{s}" for s in skus]
    assert [await regional(sku=s, region="eu") for s in skus] == [f"eu/{s}" for s in skus]
    assert await regional("us", "AB:12") is None  # "us/AB:12" was never added
    assert get_sku("AB%3A12") is None  # the escaped form is not the identifier
    assert len(loads) == 2 * len(skus)
    assert redis_cache.stats()["bloom_rejects"] == 2

    # The cache's own Redis keys are still escaped.
    keys = keys_of(raw_redis, prefix)
    assert f"{prefix}:{{sku:AB%3A12}}" in keys
    assert f"{prefix}:{{sku:with%20space}}" in keys
    assert not any("AB:12" in key or " " in key for key in keys)


@pytest.mark.slow
async def test_gate_sends_no_get_to_redis_for_a_certain_miss(
    private_redis: PrivateServer,
) -> None:
    cache = Cache.from_url(private_redis.url, prefix="gate")
    client = redis.Redis(port=private_redis.port)
    try:
        products = cache.bloom("products", capacity=1_000, error_rate=0.001, check_interval=600)
        products.sync.rebuild(range(1, 101))
        absent = cast(list[int], certainly_absent(products, range(1_000, 2_000), 20))
        loads: list[int] = []

        @cache.cached(ttl=60, key="product:{pid}", bloom="products")
        def get_product(pid: int) -> int:
            loads.append(pid)
            return pid

        @cache.cached(ttl=60, key="product:{pid}", bloom="products")
        async def aget_product(pid: int) -> int:
            loads.append(pid)
            return pid

        assert await aget_product(1) == 1  # opens the async face's connection
        client.config_resetstat()
        for pid in absent[:10]:
            assert get_product(pid) is None
        for pid in absent[10:]:
            assert await aget_product(pid) is None
        assert get_calls(client) == 0
        assert loads == [1]
        assert cache.stats()["bloom_rejects"] == 20

        assert get_product(2) == 2  # a known id: GET (a miss), load, fill
        assert get_calls(client) >= 1
        assert loads == [1, 2]
    finally:
        client.close()
        await cache.close()


# --- add, add_many, warm -------------------------------------------------------------------


async def test_add_reports_new_items_and_warm_reports_progress(any_cache: Cache) -> None:
    bloom = any_cache.bloom("adds", capacity=10_000, error_rate=0.001)
    assert bloom.sync.warm([]) == 0  # builds the (empty) filter: adds need one
    assert bloom.sync.info()["generation"] == 1
    assert bloom.sync.add("a") is True
    assert bloom.sync.add("a") is False
    assert await bloom.add("b") is True
    assert await bloom.add("b") is False
    assert bloom.sync.add_many(["a", "b", "c", "d"]) == 2
    assert await bloom.add_many(["c", "e", "f"]) == 2
    assert bloom.sync.add_many([]) == 0
    assert await bloom.contains("f")
    assert counted(bloom) == 6

    seen: list[int] = []
    assert bloom.sync.warm(range(25), batch=10, progress=seen.append) == 25
    assert seen == [10, 20, 25]
    seen.clear()
    assert await bloom.warm(range(1_000, 1_007), batch=3, progress=seen.append) == 7
    assert seen == [3, 6, 7]
    assert counted(bloom) == 6 + 25 + 7
    seen.clear()
    assert await bloom.rebuild(iter(range(50)), batch=20, progress=seen.append) == 50
    assert seen == [20, 40, 50]
    assert all([await bloom.contains(i) for i in range(50)])
    assert counted(bloom) == 50
    assert bloom.sync.info()["generation"] == 2
    assert bloom.sync.add(49) is False
    assert bloom.sync.add(50) is True
    assert counted(bloom) == 51


def test_add_many_counts_a_repeated_item_once(any_cache: Cache) -> None:
    """Regression: each item was tested against the mirror before the batch's bits."""
    bloom = any_cache.bloom("dups", capacity=1_000, error_rate=0.001)
    bloom.sync.rebuild([])
    assert bloom.sync.add_many(["x", "x", "y"]) == 2
    assert counted(bloom) == 2
    assert bloom.sync.add_many(["z", "x", "z", "z", 5, "5", b"5"]) == 2  # 5, "5", b"5": one
    assert bloom.sync.add_many(["x", "y"]) == 0
    assert counted(bloom) == 4


async def test_add_many_counts_a_repeated_item_once_async(any_cache: Cache) -> None:
    bloom = any_cache.bloom("dups", capacity=1_000, error_rate=0.001)
    await bloom.rebuild([])
    assert await bloom.add_many(["x", "x", "y", "y"]) == 2
    info = await bloom.info()
    assert (info["count"], info["adds_counted"]) == (2, 2)


def test_building_a_new_filter_does_not_report_it_missing(
    any_cache: Cache, caplog: pytest.LogCaptureFixture
) -> None:
    """rebuild/warm of a filter never built is no incident; contains on it still is."""
    calls: list[str] = []
    first = any_cache.bloom("new", capacity=1_000, error_rate=0.001, on_missing=calls.append)
    second = any_cache.bloom("new2", capacity=1_000, error_rate=0.001, on_missing=calls.append)
    with caplog.at_level(logging.WARNING, logger="cachekit"):
        assert first.sync.rebuild(range(10)) == 10
        assert second.sync.warm(range(10)) == 10
    assert calls == []
    assert any_cache.stats()["bloom_missing"] == 0
    assert not [r for r in caplog.records if "missing" in r.getMessage()]
    assert first.sync.info()["state"] == second.sync.info()["state"] == "ready"

    never = any_cache.bloom("never", capacity=1_000, error_rate=0.001, on_missing=calls.append)
    assert never.sync.contains("anything")  # "maybe"
    assert calls == ["never"]
    assert any_cache.stats()["bloom_missing"] == 1
    assert never.sync.info()["state"] == "missing"


def test_an_add_to_a_filter_never_built_waits_for_its_build(
    redis_cache: Cache, raw_redis: redis.Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing is written (the first build reads every id); contains stays "maybe"."""
    bloom = redis_cache.bloom("unbuilt", capacity=1_000, error_rate=0.001)
    with caplog.at_level(logging.WARNING, logger="cachekit"):
        bloom.sync.add_many(["a", "b"])  # (it reports them as new, though nothing is stored)
    assert [r for r in caplog.records if "adds wait for its rebuild" in r.getMessage()]
    assert keys_of(raw_redis, prefix) == set()
    assert bloom.sync.contains("a")
    assert bloom.sync.contains("never-added")  # fail open, not a false "no"
    assert bloom.sync.info()["state"] == "missing"


# --- regressions: rebuild geometry, concurrent merges, interrupted rebuilds, loads ---------


def test_rebuilding_with_a_new_geometry_replaces_the_descriptor(
    redis_url: str, prefix: str, raw_redis: redis.Redis
) -> None:
    before, after = (
        Cache.from_url(redis_url, prefix=prefix),
        Cache.from_url(redis_url, prefix=prefix),
    )
    try:
        old = before.bloom("resized", capacity=100, error_rate=0.01, check_interval=0)
        old.sync.rebuild(range(100))
        assert all(old.sync.contains(i) for i in range(100))
        # Over capacity, the warning says "rebuild it larger": a new release does.
        larger = after.bloom("resized", capacity=10_000, error_rate=0.01)
        assert larger.sync.rebuild(range(5_000)) == 5_000
        # Still running the old release: "maybe" (a foreign geometry) is fine, "no" is not.
        old_answers = sum(old.sync.contains(i) for i in range(100))
        meta = descriptor_of(raw_redis, prefix, "resized")
        state = larger.sync.info()["state"]
        print(f"\nold declaration: {old_answers}/100 ids found; new one: {state}; {meta}")
        assert old_answers == 100
        assert (meta["capacity"], meta["k"], meta["bits_per_slice"]) == (
            10_000,
            larger.geometry.k,
            larger.geometry.bits_per_slice,
        )
        assert state == "ready"
        assert all(larger.sync.contains(i) for i in range(5_000))
    finally:
        before.sync.close()
        after.sync.close()


def test_the_mirror_answering_during_a_load_has_the_adds_notified_meanwhile(
    redis_url: str, prefix: str
) -> None:
    loader = Cache.from_url(redis_url, prefix=prefix)
    other = Cache.from_url(redis_url, prefix=prefix)
    try:
        mine = loader.bloom("midload", capacity=1_000, error_rate=0.001, check_interval=600)
        theirs = other.bloom("midload", capacity=1_000, error_rate=0.001)
        theirs.sync.rebuild(range(100))
        assert mine.sync.contains(5)
        mine.state.on_message(None)  # a reconnect: reload at the next call
        loading = Stepper(bloom_sync(loader.bound().ctx, mine.state), backend_of(loader))
        bitmap = loading.perform(loading.until(is_get_of(part_key(prefix, "midload", 1))))
        assert theirs.sync.add("added-meanwhile")
        wait_for(lambda: bool(mine.state.pending), timeout=2.0)  # notified here
        try:
            assert mine.sync.contains(7)  # another call, answered by the old mirror
            assert mine.sync.contains("added-meanwhile")
        finally:
            loading.finish(bitmap)
    finally:
        loader.sync.close()
        other.sync.close()


def run_interleaved(client: redis.Redis, *schedule: tuple[MergeBits, int]) -> None:
    """Run single commands of ``MergeBits`` pipelines in the order of ``schedule``."""
    for op, index in schedule:
        client.execute_command(*op.pipeline()[index])  # type: ignore[no-untyped-call]


def test_two_merges_at_once_never_lose_the_winners_bits(
    redis_url: str, prefix: str, raw_redis: redis.Redis
) -> None:
    first, second, fresh = (Cache.from_url(redis_url, prefix=prefix) for _ in range(3))
    try:
        a = first.bloom("twowarm", capacity=1_000, error_rate=0.001)
        b = second.bloom("twowarm", capacity=1_000, error_rate=0.001)
        ids = [f"id-{i}" for i in range(500)]
        warm_a = Stepper(
            cachekit.bloom.flow.bloom_warm(first.bound().ctx, a.state, ids, 10_000, None),
            backend_of(first),
        )
        warm_b = Stepper(
            cachekit.bloom.flow.bloom_warm(second.bound().ctx, b.state, ids, 10_000, None),
            backend_of(second),
        )
        merge_a = warm_a.until(is_op(MergeBits))  # both start-ups build the same ids
        merge_b = warm_b.until(is_op(MergeBits))  # B announced last: B's will be swapped in
        assert [cmd[0] for cmd in merge_b.pipeline()] == ["SET", "BITOP", "DEL", "INCRBY"]
        # One order the server may run two non-transactional pipelines in:
        run_interleaved(raw_redis, (merge_b, 0), (merge_a, 0), (merge_a, 1), (merge_a, 2))
        run_interleaved(raw_redis, (merge_b, 1), (merge_b, 2), (merge_b, 3), (merge_a, 3))
        assert warm_a.finish(None) == warm_b.finish(None) == len(ids)

        reader = fresh.bloom("twowarm", capacity=1_000, error_rate=0.001)
        found = sum(reader.sync.contains(x) for x in ids)
        print(f"\nafter two merges at once: {found}/{len(ids)} ids found")
        assert found == len(ids)
    finally:
        for cache in (first, second, fresh):
            cache.sync.close()


def test_an_interrupted_rebuild_leaves_nothing_behind(
    redis_cache: Cache, prefix: str, raw_redis: redis.Redis
) -> None:
    bloom = redis_cache.bloom("aborted", capacity=1_000, error_rate=0.001)
    bloom.sync.rebuild(range(100))

    def items() -> Iterator[int]:
        yield from range(50)
        raise RuntimeError("the database went away")

    with pytest.raises(RuntimeError, match="went away"):
        bloom.sync.rebuild(items())
    assert bloom.sync.add("meanwhile")
    assert bloom.sync.rebuild(range(100)) == 100  # the next rebuild succeeds
    leftovers = keys_of(raw_redis, prefix) - filter_keys(prefix, "aborted", 3)
    print(f"\nafter an interrupted rebuild and a good one: {sorted(leftovers)} left over")
    assert leftovers == set()
    assert descriptor_of(raw_redis, prefix, "aborted")["next"] == 0
