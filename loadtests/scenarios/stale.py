"""Logical expiry: serve the stale value while one rebuild runs, or make readers wait.

Library level: 50 hot entries, each built by a slow 100 ms query, live 2 s (written
together, no jitter, so they also go stale together) and are read at random at a steady
rate. When an entry expires, a blocking cache makes the readers that arrive during its
rebuild wait for it (one load thanks to the lock, but a wait all the same); with logical
expiry they are served the old value at once while one background rebuild runs.

* **on** - cachekit ``@cache.cached(ttl=2, stale=30, jitter=0)``: stale-while-rebuild;
* **off** - cachekit ``@cache.cached(ttl=2, jitter=0)`` (``lock=True``): blocking rebuild;
* **peer** - cashews ``@cache.early(ttl=32, early_ttl=2)``: its background early refresh.

Demo level: ``PRODUCT_TTL=2`` with the shop's stale window (``DEMO_PROTECTIONS=all``,
``PRODUCT_STALE=30``) or none (``DEMO_PROTECTIONS=none``), 50 hot products read at random.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import httpx

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

__all__ = ["NAME", "run"]

NAME = "stale"
KEYS = 50
TTL = 2.0
STALE = 30.0
LOAD_MS = 100.0
CONNECTIONS = 10
WIDTH = 0.25
DEMO_RATE = 150.0
DEMO_DB_LATENCY_MS = 50.0

LABELS: dict[Role, str] = {
    "on": "cachekit, stale-while-rebuild (stale=30)",
    "off": "cachekit, blocking rebuild (stale=0, lock)",
    "peer": "cashews @cache.early(early_ttl=2)",
}


async def build(
    ctx: Context, role: Role, prefix: str, db: SimulatedDatabase, ids: list[int]
) -> Subject:
    """The arm's reader of the hot entries."""
    url = ctx.settings.redis_url
    loads = Counter()

    async def load(i: int) -> dict[str, Any]:
        loads.n += 1
        await db.query(LOAD_MS)
        return {"id": i, "rows": list(range(10))}

    async def prime(call: Any) -> None:
        # Written together and at once (a bulk warm-up): the database answers instantly.
        db.bypass = True
        try:
            await asyncio.gather(*(call(i) for i in range(KEYS)))
        finally:
            db.bypass = False

    if role == "peer":
        peer = cashews_cache(url)

        @peer.early(ttl=TTL + STALE, early_ttl=TTL, key=prefix + ":hot:{i}")
        async def early(i: int) -> dict[str, Any]:
            return await load(i)

        async def close_peer() -> None:
            await peer.close()

        return Subject(lambda n: early(ids[n]), close_peer, loads, lambda: prime(early))
    cache = cachekit_cache(url, prefix)
    stale = STALE if role == "on" else 0.0

    @cache.cached(ttl=TTL, key="hot:{i}", stale=stale, jitter=0, lock=True)
    async def hot(i: int) -> dict[str, Any]:
        return await load(i)

    return Subject(lambda n: hot(ids[n]), cache.close, loads, lambda: prime(hot), cache.stats)


async def run(ctx: Context) -> ScenarioResult:
    """Library rounds (rotating arms), then the demo arms."""
    s = ctx.settings
    rate = s.scaled(400, 300)
    began = time.monotonic()
    result = ScenarioResult(
        NAME,
        "Logical expiry: stale-while-rebuild vs a blocking rebuild",
        f"{KEYS} hot entries, each built by a {LOAD_MS:g} ms query, live {TTL:g} s (written "
        "together, no jitter) and are read at random. When they expire, a blocking cache "
        "makes the readers that arrive during a rebuild wait for it; with logical expiry "
        "they get the old value at once while one background rebuild per entry runs.",
        setup=[
            f"library: {rate:g} reads/s for {s.seconds:g} s per arm and round, {s.rounds} "
            f"round(s), rotating order; a {CONNECTIONS}-connection database",
            "on: `@cache.cached(ttl=2, stale=30, jitter=0)`; off: `@cache.cached(ttl=2, "
            "jitter=0)` (lock on); peer: cashews `@cache.early(ttl=32, early_ttl=2)`",
            f"waited: requests slower than the {LOAD_MS:g} ms query (they waited for a load)",
        ],
        extra_columns=["waited", "stale hits"],
    )
    arms = {role: Arm("library", role, LABELS[role]) for role in ("on", "off", "peer")}
    result.arms.extend(arms.values())
    for r in range(s.rounds):
        rng = random.Random(s.seed + r)
        ids = [rng.randrange(KEYS) for _ in range(round(rate * s.seconds) + 1)]
        for role in rotation(ROLES, r):
            where = f"{NAME} · library · {role} · round {r + 1}/{s.rounds}"
            db = SimulatedDatabase(latency_ms=LOAD_MS, connections=CONNECTIONS)
            subject = await build(ctx, role, f"{ctx.run}:stale:{role}:{r}", db, ids)
            trace = await measure(
                ctx, where, arms[role], subject, db,
                rate=rate, duration=s.seconds, request_timeout=5.0, width=WIDTH,
            )  # fmt: skip
            arm = arms[role]
            waited = sum(1 for ms in trace.latencies_ms() if ms >= LOAD_MS)
            arm.extra["waited"] = int(arm.extra.get("waited", 0)) + waited
    if s.demo:
        demo = await run_demo_rounds(
            ctx, NAME, protection_arms(), demo_workload(ctx), db_latency_ms=DEMO_DB_LATENCY_MS
        )
        for arm in demo:
            arm.extra["waited"] = sum(1 for ms in arm.latencies_ms if ms >= DEMO_DB_LATENCY_MS)
        result.arms.extend(demo)
        result.setup.append(
            f"demo: PRODUCT_TTL={TTL:g}, {KEYS} hot products (new ones each round) read "
            f"once to fill the cache, then {DEMO_RATE:g} reads/s at random; "
            f"DB_LATENCY_MS={DEMO_DB_LATENCY_MS:g}; waited = slower than one query"
        )
    for arm in result.arms:
        if arm.counters:  # cachekit's arms: how many reads were answered with a stale value
            arm.extra["stale hits"] = arm.counters["stale_hits"]
    summarize(result)
    result.seconds = time.monotonic() - began
    return result


def demo_workload(ctx: Context) -> DemoWorkload:
    """Hot products read at random; each round its own products."""

    def first(round_index: int) -> int:
        return 1 + round_index * KEYS

    async def warm(client: httpx.AsyncClient, round_index: int) -> None:
        base = first(round_index)
        await asyncio.gather(*(client.get(f"/products/{pid}") for pid in range(base, base + KEYS)))

    def paths(round_index: int, n: int) -> list[str]:
        rng = random.Random(ctx.settings.seed + 300 + round_index)
        base = first(round_index)
        return [f"/products/{base + rng.randrange(KEYS)}" for _ in range(n)]

    return DemoWorkload(
        rate=DEMO_RATE,
        duration=ctx.settings.seconds,
        paths=paths,
        warm=warm,
        ok_status=frozenset({200}),
        width=WIDTH,
        env={"PRODUCT_TTL": f"{TTL:g}"},
    )


def summarize(result: ScenarioResult) -> None:
    """Headline (p99 latency), verdict, notes and the chart."""
    head = Headline("p99 latency ms", "lower", digits=1)
    for arm in result.arms:
        head.values[(arm.level, arm.role)] = arm.p(99)
    result.headline = head
    on, off, peer = (result.arm("library", r) for r in ("on", "off", "peer"))
    if on and off and peer:
        text = (
            f"p99 {number(on.p(99), 1)} ms serving stale vs {number(off.p(99), 1)} ms "
            f"blocking ({fold(on.p(99), off.p(99), 'lower')}), cashews early "
            f"{number(peer.p(99), 1)} ms; {number(float(on.extra.get('waited', 0)))} vs "
            f"{number(float(off.extra.get('waited', 0)))} requests waited for a load"
        )
        result.verdict = text if on.p(99) < off.p(99) else "NOT better: " + text
        result.notes.append(
            "Loader calls are about the same in every arm: each entry is rebuilt once "
            "per TTL either way. Logical expiry moves the rebuild off the request path; "
            "it does not save database work."
        )
    result.charts.append(
        Chart(
            f"{NAME}.png",
            f"Logical expiry: {KEYS} entries going stale every {TTL:g} s",
            [Panel("p99_ms", "p99 latency, ms", log=True), Panel("db_qps", "DB queries/s")],
        )
    )
