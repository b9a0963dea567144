"""Penetration: requests for product ids that exist nowhere.

Every request asks for an id the database does not hold: half of them from a pool of
1,000 such ids asked again and again (a scraper cycling through a list), half never asked
before (an enumeration). Without protection each one is a database query. Null caching
stops the repeats after their first miss; only a Bloom gate of the existing ids stops
the never-seen ones too, before Redis or the database is asked.

Arms (library level, one loader query = ``DB_LATENCY`` of a 10-connection database):

* **on** - cachekit ``@cache.cached(ttl=60, null_ttl=30, bloom="products")`` with the
  filter rebuilt from the 100,000 existing ids (capacity 200,000, error rate 0.001);
* **off** - cachekit ``@cache.cached(ttl=60, lock=False)``: a plain TTL cache, ``None``
  not cached;
* **peer** - cashews ``@cache(ttl=60)``, which caches ``None`` results for the full TTL
  (its default condition stores every result): null caching, no Bloom filter (cashews'
  separate ``@cache.bloom`` decorator is measured by ``python -m loadtests penetration``).

Demo level: ``GET /products/{id}`` for the same kind of ids against the demo with
``DEMO_PROTECTIONS=all`` and ``none``; database queries from its ``/metrics``.
"""

from __future__ import annotations

import random
import time
from typing import Any

from loadtests.harness.demo_level import DemoWorkload, protection_arms, run_demo_rounds
from loadtests.harness.library import (
    Counter,
    Subject,
    cachekit_cache,
    cashews_cache,
    measure,
)
from loadtests.harness.outcome import (
    ROLES,
    Arm,
    Chart,
    Context,
    Headline,
    Panel,
    Role,
    ScenarioResult,
    fold,
    number,
)
from loadtests.harness.rounds import rotation
from loadtests.harness.simdb import SimulatedDatabase

NAME = "penetration"
EXISTING = 100_000  # the database holds ids 1 .. EXISTING
POOL = 1_000  # absent ids asked again and again
POOL_BASE = 10_000_000
FRESH_BASE = 20_000_000  # never-repeated absent ids are drawn above this
DB_LATENCY_MS = 5.0
CONNECTIONS = 10
WIDTH = 0.5  # seconds per bucket of the time series
DEMO_RATE = 150.0
DEMO_DB_LATENCY_MS = 5.0

__all__ = ["NAME", "run"]


def absent_ids(rng: random.Random, n: int) -> list[int]:
    """``n`` absent ids: alternately from the repeated pool and never seen before."""
    fresh = rng.sample(range(FRESH_BASE, FRESH_BASE + 1_000_000_000), n // 2 + 1)
    return [POOL_BASE + rng.randrange(POOL) if i % 2 == 0 else fresh[i // 2] for i in range(n)]


def product(pid: int) -> dict[str, Any] | None:
    """The database row of ``pid``, or ``None`` when it does not exist."""
    if 1 <= pid <= EXISTING:
        return {"id": pid, "name": f"Product {pid}", "price_cents": 999}
    return None


async def build(
    ctx: Context, role: Role, prefix: str, db: SimulatedDatabase, ids: list[int]
) -> Subject:
    """The arm ``role``'s decorated loader over ``db``, asked for ``ids[i]``."""
    url = ctx.settings.redis_url
    loads = Counter()

    async def load(pid: int) -> dict[str, Any] | None:
        loads.n += 1
        return await db.run(lambda: product(pid))

    if role == "peer":
        peer = cashews_cache(url)

        @peer(ttl=60, key=prefix + ":p:{pid}")
        async def cashews_product(pid: int) -> dict[str, Any] | None:
            return await load(pid)

        async def close_peer() -> None:
            await peer.close()

        return Subject(lambda i: cashews_product(ids[i]), close_peer, loads)

    cache = cachekit_cache(url, prefix)
    if role == "on":
        bloom = cache.bloom("products", capacity=2 * EXISTING, error_rate=0.001)

        @cache.cached(ttl=60, key="p:{pid}", null_ttl=30, bloom="products")
        async def protected(pid: int) -> dict[str, Any] | None:
            return await load(pid)

        async def warm() -> None:
            await bloom.rebuild(range(1, EXISTING + 1))

        return Subject(lambda i: protected(ids[i]), cache.close, loads, warm, cache.stats)

    @cache.cached(ttl=60, key="p:{pid}", lock=False)
    async def plain(pid: int) -> dict[str, Any] | None:
        return await load(pid)

    return Subject(lambda i: plain(ids[i]), cache.close, loads, stats=cache.stats)


LABELS: dict[Role, str] = {
    "on": "cachekit, Bloom gate + null cache",
    "off": "cachekit, plain TTL cache",
    "peer": "cashews @cache (caches None)",
}


async def run(ctx: Context) -> ScenarioResult:
    """Run the library arms (rounds, rotating order), then the demo arms."""
    s = ctx.settings
    rate = s.scaled(400, 300)
    began = time.monotonic()
    result = ScenarioResult(
        NAME,
        "Penetration: requests for ids that exist nowhere",
        "Every request asks for a product id that does not exist: half from a pool of "
        f"{POOL:,} absent ids asked again and again, half never asked before. Without "
        "protection each is a database query; null caching stops the repeats after their "
        "first miss; a Bloom gate of the existing ids also stops the never-seen ones, "
        "before Redis or the database is asked.",
        setup=[
            f"library: {rate:g} requests/s for {s.seconds:g} s per arm and round, "
            f"{s.rounds} round(s), arms in rotating order; the same id sequence for every "
            "arm of a round",
            f"simulated database: {EXISTING:,} existing ids, {DB_LATENCY_MS:g} ms per query, "
            f"{CONNECTIONS} connections",
            'cachekit on: `@cache.cached(ttl=60, null_ttl=30, bloom="products")`, filter '
            f"capacity {2 * EXISTING:,}, error rate 0.001, rebuilt from the existing ids; "
            "off: `@cache.cached(ttl=60, lock=False)`; peer: cashews `@cache(ttl=60)`",
        ],
    )
    arms = {role: Arm("library", role, LABELS[role]) for role in ("on", "off", "peer")}
    result.arms.extend(arms.values())
    for r in range(s.rounds):
        ids = absent_ids(random.Random(s.seed + r), round(rate * s.seconds) + 1)
        for role in rotation(ROLES, r):
            where = f"{NAME} · library · {role} · round {r + 1}/{s.rounds}"
            db = SimulatedDatabase(latency_ms=DB_LATENCY_MS, connections=CONNECTIONS)
            prefix = f"{ctx.run}:pen:{role}:{r}"
            subject = await build(ctx, role, prefix, db, ids)
            await measure(
                ctx, where, arms[role], subject, db,
                rate=rate, duration=s.seconds, request_timeout=5.0, width=WIDTH,
            )  # fmt: skip
    if s.demo:
        result.arms.extend(await run_demo_rounds(ctx, NAME, protection_arms(), demo_workload(ctx)))
        result.setup.append(
            f"demo: GET /products/{{id}} for the same kind of ids at {DEMO_RATE:g} requests/s, "
            f"DB_LATENCY_MS={DEMO_DB_LATENCY_MS:g}; a fresh shop per arm"
        )
    summarize(result, ctx)
    result.seconds = time.monotonic() - began
    return result


def demo_workload(ctx: Context) -> DemoWorkload:
    """``GET /products/{id}`` for absent ids (404 is the expected answer)."""

    def paths(round_index: int, n: int) -> list[str]:
        ids = absent_ids(random.Random(ctx.settings.seed + 100 + round_index), n)
        return [f"/products/{pid}" for pid in ids]

    return DemoWorkload(rate=DEMO_RATE, duration=ctx.settings.seconds, paths=paths)


def summarize(result: ScenarioResult, ctx: Context) -> None:
    """Headline (database queries), verdict and notes from the arms' figures."""
    head = Headline("database queries", "lower")
    for arm in result.arms:
        head.values[(arm.level, arm.role)] = float(arm.db_queries)
    result.headline = head
    on, off, peer = (result.arm("library", r) for r in ("on", "off", "peer"))
    if on and off and peer:
        verdict = (
            f"{number(on.db_queries)} database queries with the Bloom gate + null cache vs "
            f"{number(off.db_queries)} without ({fold(on.db_queries, off.db_queries)}) and "
            f"{number(peer.db_queries)} with cashews' null caching"
        )
        result.verdict = (
            verdict
            if on.db_queries < min(off.db_queries, peer.db_queries)
            else ("NOT better: " + verdict)
        )
        result.notes.append(
            "The never-repeated half of the ids defeats any null cache (cashews' and "
            "cachekit's alike): only the Bloom gate stops it. Whatever queries the gate lets "
            "through are its false positives (0.1 % of absent ids) and the first miss of each "
            "of them; cashews' count falls over the round as its null entries fill up."
        )
    result.charts.append(
        Chart(
            f"{NAME}.png",
            "Penetration: database queries per second, requests for absent ids",
            [Panel("db_qps", "DB queries/s"), Panel("p99_ms", "p99 latency, ms", log=True)],
        )
    )
