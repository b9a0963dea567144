"""Avalanche and null caching: jittered TTLs, and null markers that never overwrite data."""

from __future__ import annotations

import collections
import random

import pytest

from cachekit import Cache, ConfigurationError
from cachekit.backends.memory import SyncMemoryBackend
from cachekit.flow.keys import KeySpace
from cachekit.flow.ttl import jittered
from cachekit.testing import FakeClock


def _remaining(cache: Cache, logical: str) -> float:
    backend = cache.bound().sync.backend
    assert isinstance(backend, SyncMemoryBackend)
    left = backend.store.remaining(KeySpace("cachekit").value(logical))
    assert left is not None
    return left


def test_ten_thousand_keys_written_together_expire_apart() -> None:
    """ttl 60 s, jitter 0.1: spread over >= 10 s, no 1-second bucket over 15 %."""
    cache = Cache.from_url("memory://", clock=FakeClock(), rng=random.Random(1))
    cache.sync.set_many({f"k{n}": n for n in range(10_000)}, ttl=60)
    expiries = [_remaining(cache, f"k{n}") for n in range(10_000)]
    assert min(expiries) >= 54
    assert max(expiries) <= 66
    assert max(expiries) - min(expiries) >= 10
    buckets = collections.Counter(int(e) for e in expiries)
    assert max(buckets.values()) <= 1_500, buckets.most_common(3)


def test_jitter_zero_is_exact_and_jitter_is_deterministic_under_a_seed() -> None:
    exact = Cache.from_url("memory://", clock=FakeClock(), jitter=0)
    exact.sync.set("k", 1, ttl=60)
    assert _remaining(exact, "k") == 60
    runs = []
    for _ in range(2):
        cache = Cache.from_url("memory://", clock=FakeClock(), rng=random.Random(42))
        cache.sync.set_many({f"k{n}": n for n in range(50)}, ttl=60)
        runs.append([_remaining(cache, f"k{n}") for n in range(50)])
    assert runs[0] == runs[1]
    assert len(set(runs[0])) == 50


def test_jitter_spreads_values_null_markers_and_stale_windows() -> None:
    clock = FakeClock()
    cache = Cache.from_url("memory://", clock=clock, rng=random.Random(3), jitter=0.2)

    @cache.cached(ttl=100, stale=50, null_ttl=10, key="item:{n}")
    def item(n: int) -> int | None:
        return None if n % 2 else n

    for n in range(200):
        item(n)
    values = [_remaining(cache, f"item:{n}") for n in range(0, 200, 2)]
    nulls = [_remaining(cache, f"item:{n}") for n in range(1, 200, 2)]
    # value: ttl 100 +-20 plus stale 50 +-10; null marker: 10 +-2, no stale window
    assert all(120 <= v <= 180 for v in values)
    assert max(values) - min(values) > 20
    assert all(8 <= v <= 12 for v in nulls)
    assert max(nulls) - min(nulls) > 1


def test_jittered_bounds() -> None:
    rng = random.Random(0)
    draws = [jittered(100, 0.1, rng) for _ in range(1000)]
    assert min(draws) >= 90
    assert max(draws) <= 110
    assert jittered(100, 0, rng) == 100
    with pytest.raises(ConfigurationError, match="jitter"):
        Cache(jitter=1.5)
    with pytest.raises(ConfigurationError, match="jitter"):
        Cache.from_url("memory://").cached(jitter=-0.1)


@pytest.mark.parametrize("lock", [True, False])
async def test_a_null_marker_never_overwrites_a_real_value(lock: bool) -> None:
    """The loader saw nothing, but a writer stored the real row while it ran."""
    cache = Cache.from_url("memory://", jitter=0)

    @cache.cached(ttl=60, null_ttl=30, key="product:{pid}", lock=lock)
    async def product(pid: int) -> dict[str, int] | None:
        await cache.set(f"product:{pid}", {"id": pid})  # written during our load
        return None  # what our (older) read of the database said

    assert await product(5) is None  # the caller gets what it loaded...
    assert await cache.get("product:5") == {"id": 5}  # ...but the real value stays
    assert await product(5) == {"id": 5}


async def test_null_markers_are_cached_then_cleared_by_invalidation() -> None:
    cache = Cache.from_url("memory://", jitter=0)
    rows: dict[int, str] = {}
    loads = 0

    @cache.cached(ttl=60, null_ttl=30, key="row:{rid}")
    async def row(rid: int) -> str | None:
        nonlocal loads
        loads += 1
        return rows.get(rid)

    assert await row(1) is None
    assert await row(1) is None
    assert loads == 1
    assert cache.stats()["null_hits"] == 1
    rows[1] = "created"
    await row.invalidate(1)  # the write path after the insert commits
    assert await row(1) == "created"
    assert loads == 2


async def test_null_markers_on_redis(redis_cache: Cache) -> None:
    loads = 0

    @redis_cache.cached(ttl=60, null_ttl=30, key="missing:{n}")
    async def missing(n: int) -> str | None:
        nonlocal loads
        loads += 1
        return None

    for _ in range(5):
        assert await missing(1) is None
    assert loads == 1
    assert redis_cache.stats()["null_hits"] == 4


async def test_warm_preloads_with_spread_expiries() -> None:
    cache = Cache.from_url("memory://", clock=FakeClock(), rng=random.Random(5))
    loads: list[int] = []

    @cache.cached(ttl=60, key="item:{n}")
    async def item(n: int) -> int:
        loads.append(n)
        return n * 10

    @cache.cached(ttl=60, key="sync:{n}")
    def sync_item(n: int, scale: int = 1) -> int:
        loads.append(-n)
        return n * scale

    assert await item.warm(range(200)) == 200
    assert sync_item.warm([(1,), {"n": 2, "scale": 3}, 4]) == 3
    assert sorted(loads) == sorted([*range(200), -1, -2, -4])
    assert await item(7) == 70  # served from the warmed entry
    assert sync_item(2, scale=3) == 6
    assert len(loads) == 203
    expiries = {_remaining(cache, f"item:{n}") for n in range(200)}
    assert len(expiries) == 200
    assert max(expiries) - min(expiries) > 6
