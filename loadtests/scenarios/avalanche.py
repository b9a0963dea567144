"""Avalanche: many keys written at once with one TTL expire at once.

Library level: a bulk job writes 400 product entries in one pipeline
(``cache.set_many``) with the same TTL, then readers ask for random products at a steady
rate. Without jitter every entry expires in the same instant and the readers' misses
all hit the database together: a spike of queries, and on a database with a finite pool,
a spike of latency. With TTL jitter (cachekit's default: ±10 %) the expiries spread over
a fifth of the TTL and the reloads with them.

* **on** - cachekit with ``jitter=0.1`` (the writes and the decorator's own reloads);
* **off** - the same with ``jitter=0``;
* no peer: cashews has no TTL jitter.

Demo level: the shop's products are read once each at the start (all cached within a
fraction of a second), then read at random; ``PRODUCT_TTL`` is short so they expire
during the round. ``DEMO_PROTECTIONS=all`` jitters TTLs (and serves stale while one
rebuild runs), ``none`` does neither.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import httpx

from loadtests.harness.demo_level import DemoWorkload, protection_arms, run_demo_rounds
from loadtests.harness.library import Counter, Subject, cachekit_cache, measure
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
)
from loadtests.harness.rounds import rotation
from loadtests.harness.simdb import SimulatedDatabase

__all__ = ["NAME", "run"]

NAME = "avalanche"
KEYS = 200
JITTER = 0.1
LOAD_MS = 30.0
CONNECTIONS = 10
WIDTH = 0.25
DEMO_KEYS = 100
DEMO_RATE = 150.0
DEMO_DB_LATENCY_MS = 10.0

LABELS: dict[Role, str] = {
    "on": f"cachekit, TTL jitter ±{JITTER:.0%}",
    "off": "cachekit, jitter 0",
}


def value(i: int) -> dict[str, Any]:
    return {"id": i, "name": f"Product {i}", "price_cents": 999}


async def build(
    ctx: Context, role: Role, prefix: str, db: SimulatedDatabase, ids: list[int], ttl: float
) -> Subject:
    """The arm's decorated reader; its warm-up writes every entry in one pipeline."""
    cache = cachekit_cache(ctx.settings.redis_url, prefix)
    jitter = JITTER if role == "on" else 0.0
    loads = Counter()

    @cache.cached(ttl=ttl, key="item:{i}", jitter=jitter, lock=True)
    async def item(i: int) -> dict[str, Any]:
        loads.n += 1
        await db.query()
        return value(i)

    async def warm() -> None:
        entries = {item.key(i): value(i) for i in range(KEYS)}
        await cache.set_many(entries, ttl=ttl, jitter=jitter)

    return Subject(lambda n: item(ids[n]), cache.close, loads, warm, cache.stats)


def expiry_window(ttl: float) -> tuple[float, float]:
    """Seconds into the round in which entries expire and reload, with or without jitter."""
    return ttl * (1 - JITTER) - WIDTH, ttl * (1 + JITTER) + 2.0


async def run(ctx: Context) -> ScenarioResult:
    """Library rounds (rotating arms), then the demo arms."""
    s = ctx.settings
    ttl = s.scaled(8.0, 4.0)
    duration = ttl * (1 + JITTER) + 3.0
    rate = s.scaled(800, 600)
    window = expiry_window(ttl)
    began = time.monotonic()
    result = ScenarioResult(
        NAME,
        "Avalanche: keys written together expire together",
        f"A bulk job writes {KEYS} entries in one pipeline with the same {ttl:g} s TTL, "
        "then readers ask for random entries at a steady rate. Without jitter all expire "
        "in the same instant and every reader's miss reaches the database at once; TTL "
        "jitter spreads the expiries, and so the reloads.",
        setup=[
            f"library: {rate:g} reads/s over {KEYS} keys for {duration:g} s per arm and "
            f"round, {s.rounds} round(s), rotating order; entries written by "
            f"`cache.set_many(ttl={ttl:g}, jitter=...)` just before the reads start",
            f"simulated database: {LOAD_MS:g} ms per query, {CONNECTIONS} connections "
            f"(at most {CONNECTIONS / LOAD_MS * 1000:g} queries/s)",
            "on: jitter 0.1 (cachekit's default); off: jitter 0; no peer (cashews has no "
            "TTL jitter)",
            f"expiry window: requests due from {window[0]:g} s to {window[1]:g} s into the "
            "round (0.9 x TTL - a bucket to 1.1 x TTL + 2 s)",
        ],
        extra_columns=["peak DB queries/s", "p99 ms in expiry window"],
    )
    arms = {role: Arm("library", role, LABELS[role]) for role in ("on", "off")}
    result.arms.extend(arms.values())
    for r in range(s.rounds):
        rng = random.Random(s.seed + r)
        ids = [rng.randrange(KEYS) for _ in range(round(rate * duration) + 1)]
        for role in rotation(ROLES[:2], r):
            where = f"{NAME} · library · {role} · round {r + 1}/{s.rounds}"
            db = SimulatedDatabase(latency_ms=LOAD_MS, connections=CONNECTIONS)
            subject = await build(ctx, role, f"{ctx.run}:ava:{role}:{r}", db, ids, ttl)
            await measure(
                ctx, where, arms[role], subject, db,
                rate=rate, duration=duration, request_timeout=5.0, width=WIDTH,
            )  # fmt: skip
    demo_ttl = s.scaled(8.0, 4.0)
    if s.demo:
        demo = await run_demo_rounds(
            ctx,
            NAME,
            protection_arms(),
            demo_workload(ctx, demo_ttl),
            db_latency_ms=DEMO_DB_LATENCY_MS,
        )
        result.arms.extend(demo)
        result.setup.append(
            f"demo: PRODUCT_TTL={demo_ttl:g}; {DEMO_KEYS} products (new ones each round) "
            "read once each "
            f"(50 at a time) to fill the cache, then {DEMO_RATE:g} reads/s at random among "
            f"them for {demo_ttl * (1 + JITTER) + 3:g} s; DB_LATENCY_MS={DEMO_DB_LATENCY_MS:g}"
        )
    for arm in result.arms:
        peak = max((v for v in arm.mean_series("db_qps") if v == v), default=0.0)
        arm.extra["peak DB queries/s"] = peak
        expiry = ttl if arm.level == "library" else demo_ttl
        since, until = expiry_window(expiry)
        arm.extra["p99 ms in expiry window"] = arm.window_p(99, since, until)
    summarize(result, ttl, demo_ttl)
    result.seconds = time.monotonic() - began
    return result


def demo_workload(ctx: Context, ttl: float) -> DemoWorkload:
    """Fill the cache with every product at once, then read them at random."""

    def first(round_index: int) -> int:
        # Each round reads products of its own: an earlier round's are cached already.
        return 1 + round_index * DEMO_KEYS

    async def warm(client: httpx.AsyncClient, round_index: int) -> None:
        gate = asyncio.Semaphore(50)

        async def one(pid: int) -> None:
            async with gate:
                await client.get(f"/products/{pid}")

        base = first(round_index)
        await asyncio.gather(*(one(pid) for pid in range(base, base + DEMO_KEYS)))

    def paths(round_index: int, n: int) -> list[str]:
        rng = random.Random(ctx.settings.seed + 200 + round_index)
        base = first(round_index)
        return [f"/products/{base + rng.randrange(DEMO_KEYS)}" for _ in range(n)]

    return DemoWorkload(
        rate=DEMO_RATE,
        duration=ttl * (1 + JITTER) + 3.0,
        paths=paths,
        warm=warm,
        ok_status=frozenset({200}),
        width=WIDTH,
        env={"PRODUCT_TTL": f"{ttl:g}"},
    )


def summarize(result: ScenarioResult, ttl: float, demo_ttl: float) -> None:
    """Headline (peak database queries per second), verdict, notes and the chart."""
    head = Headline("peak DB queries/s", "lower")
    for arm in result.arms:
        head.values[(arm.level, arm.role)] = float(arm.extra["peak DB queries/s"])
    result.headline = head
    on, off = result.arm("library", "on"), result.arm("library", "off")
    if on and off:
        p_on, p_off = float(on.extra["peak DB queries/s"]), float(off.extra["peak DB queries/s"])
        text = (
            f"peak {p_on:,.0f} queries/s with jitter vs {p_off:,.0f} without "
            f"({fold(p_on, p_off, 'lower')}); p99 in the expiry window "
            f"{float(on.extra['p99 ms in expiry window']):,.1f} ms vs "
            f"{float(off.extra['p99 ms in expiry window']):,.1f} ms"
        )
        result.verdict = text if p_on < p_off else "NOT better: " + text
    result.notes.append(
        "Total database queries barely differ: every entry is reloaded once either way. "
        "Jitter changes when, not how much - the peak is what a database feels."
    )
    result.notes.append(
        f"Peaks are read from {WIDTH:g} s buckets (library) and from `/metrics` sampled every "
        "0.5 s spread over those buckets (demo), so the demo's peaks are smoothed."
    )
    marks = [ttl] if ttl == demo_ttl else [ttl, demo_ttl]
    result.charts.append(
        Chart(
            f"{NAME}-load.png",
            "Avalanche: entries written together, expiring together (no jitter) or spread",
            [
                Panel("db_qps", "DB queries/s", marks=marks, mark_label="dotted: the TTL"),
                Panel("p99_ms", "p99 latency, ms", marks=marks, log=True),
            ],
        )
    )
