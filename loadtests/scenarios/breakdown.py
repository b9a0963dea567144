"""Breakdown: a hot key expires, or is invalidated, while it is read hundreds of times a second.

Library level: every request reads one hot key whose value takes an expensive 50 ms query
to build and lives 1 s (no jitter, so the expiries stay regular). Each time it expires,
the requests arriving while it is rebuilt all miss. Without protection each of them runs
the query (and they queue for the database's connections); with cachekit's lease lock
and in-process single flight one caller loads and the others wait for its value.

* **on** - cachekit ``@cache.cached(ttl=1, jitter=0, lock=True)``;
* **off** - hand-written cache-aside (GET, load, SET): cachekit cannot switch off its
  in-process single flight, so "none" is code without it;
* **peer** - cashews ``@cache(ttl=1, lock=True)``.

The key figure is loader calls per expiry: the database queries come in one burst per
expiry, and a burst is counted as the queries separated by less than 0.3 s.

Demo level: ``GET /products/1`` at a steady rate while a writer sends ``PUT /products/1``
once a second; each commit invalidates the cached product, and the reads that follow all
miss. Loader calls per invalidation from ``cachekit_loads_total``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from loadtests.harness.demo_level import DemoWorkload, protection_arms, run_demo_rounds
from loadtests.harness.library import (
    Counter,
    NaiveCache,
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

NAME = "breakdown"
TTL = 1.0
LOAD_MS = 50.0  # the hot value's query
CONNECTIONS = 10
WIDTH = 0.25
BURST_GAP = 0.3  # queries closer than this belong to one expiry's burst
DEMO_RATE = 150.0
DEMO_DB_LATENCY_MS = 20.0
HOT_ID = 1
WRITE_EVERY = 1.0

LABELS: dict[Role, str] = {
    "on": "cachekit, lease lock + single flight",
    "off": "hand-written cache-aside, no protection",
    "peer": "cashews @cache(lock=True)",
}


def bursts(instants: list[float], gap: float = BURST_GAP) -> int:
    """How many bursts ``instants`` form (a new one after a pause longer than ``gap``)."""
    count, last = 0, None
    for t in sorted(instants):
        if last is None or t - last > gap:
            count += 1
        last = t
    return count


async def build(ctx: Context, role: Role, prefix: str, db: SimulatedDatabase) -> Subject:
    """The arm ``role``'s reader of the hot key."""
    url = ctx.settings.redis_url
    loads = Counter()

    async def load(item: str) -> dict[str, Any]:
        loads.n += 1
        await db.query(LOAD_MS)
        return {"item": item, "rows": list(range(20))}

    if role == "on":
        cache = cachekit_cache(url, prefix)

        @cache.cached(ttl=TTL, key="hot:{item}", jitter=0, lock=True)
        async def hot(item: str) -> dict[str, Any]:
            return await load(item)

        return Subject(
            lambda i: hot("hot"), cache.close, loads, lambda: _once(hot("hot")), cache.stats
        )
    if role == "peer":
        peer = cashews_cache(url)

        @peer(ttl=TTL, key=prefix + ":hot:{item}", lock=True)
        async def cashews_hot(item: str) -> dict[str, Any]:
            return await load(item)

        async def close_peer() -> None:
            await peer.close()

        return Subject(
            lambda i: cashews_hot("hot"), close_peer, loads, lambda: _once(cashews_hot("hot"))
        )
    naive = NaiveCache(url, prefix)

    async def naive_hot(i: int) -> Any:
        return await naive.get_or_load("hot", TTL, lambda: load("hot"))

    return Subject(naive_hot, naive.close, loads, lambda: _once(naive_hot(0)))


async def _once(call: Any) -> None:
    await call


async def run(ctx: Context) -> ScenarioResult:
    """Library rounds (rotating arms), then the demo arms."""
    s = ctx.settings
    rate = s.scaled(400, 300)
    began = time.monotonic()
    result = ScenarioResult(
        NAME,
        "Breakdown: a hot key expires under load",
        "Every request reads one hot key whose value takes a 50 ms query to build and "
        f"lives {TTL:g} s. Each expiry makes the requests that arrive during the rebuild "
        "miss together: without protection each runs the query; with a lock one loads "
        "and the others wait for its value.",
        setup=[
            f"library: {rate:g} requests/s on one key for {s.seconds:g} s per arm and round, "
            f"{s.rounds} round(s), rotating order; TTL {TTL:g} s without jitter; the query "
            f"takes {LOAD_MS:g} ms on a {CONNECTIONS}-connection database",
            "on: `@cache.cached(ttl=1, jitter=0, lock=True)`; off: hand-written GET / load / "
            "SET (cachekit's in-process single flight cannot be switched off); peer: cashews "
            "`@cache(ttl=1, lock=True)`",
            f"loader calls per expiry: database queries / bursts of queries (a burst ends "
            f"after a {BURST_GAP:g} s pause)",
        ],
        extra_columns=["expiries", "loads per expiry", "max burst"],
    )
    arms = {role: Arm("library", role, LABELS[role]) for role in ("on", "off", "peer")}
    result.arms.extend(arms.values())
    for r in range(s.rounds):
        for role in rotation(ROLES, r):
            where = f"{NAME} · library · {role} · round {r + 1}/{s.rounds}"
            db = SimulatedDatabase(latency_ms=LOAD_MS, connections=CONNECTIONS)
            subject = await build(ctx, role, f"{ctx.run}:brk:{role}:{r}", db)
            trace = await measure(
                ctx, where, arms[role], subject, db,
                rate=rate, duration=s.seconds, request_timeout=5.0, width=WIDTH,
            )  # fmt: skip
            arm = arms[role]
            found = bursts([t - trace.origin for t in db.instants])
            arm.extra["expiries"] = int(arm.extra.get("expiries", 0)) + found
            arm.extra["max burst"] = max(
                int(arm.extra.get("max burst", 0)), _max_burst(db.instants)
            )
    for arm in arms.values():
        expiries = int(arm.extra.get("expiries", 0))
        arm.extra["loads per expiry"] = (arm.loader_calls or 0) / expiries if expiries else 0.0
    if s.demo:
        demo = await run_demo_rounds(
            ctx, NAME, protection_arms(), demo_workload(ctx), db_latency_ms=DEMO_DB_LATENCY_MS
        )
        for arm in demo:
            writes = int(arm.extra.get("expiries", 0))
            arm.extra["loads per expiry"] = (arm.loader_calls or 0) / writes if writes else 0.0
        result.arms.extend(demo)
        result.setup.append(
            f"demo: GET /products/{HOT_ID} at {DEMO_RATE:g} requests/s while PUT "
            f"/products/{HOT_ID} commits every {WRITE_EVERY:g} s (each invalidates it; "
            f'"expiries" counts these writes), DB_LATENCY_MS={DEMO_DB_LATENCY_MS:g}'
        )
    summarize(result)
    result.seconds = time.monotonic() - began
    return result


def _max_burst(instants: list[float]) -> int:
    best = current = 0
    last = None
    for t in sorted(instants):
        current = current + 1 if last is not None and t - last <= BURST_GAP else 1
        best = max(best, current)
        last = t
    return best


def demo_workload(ctx: Context) -> DemoWorkload:
    """Reads of the hot product; a writer updating it once a second."""

    async def writer(client: httpx.AsyncClient, round_index: int) -> None:
        price = 1000 + round_index * 1000
        while True:
            await asyncio.sleep(WRITE_EVERY)
            price += 1
            response = await client.put(f"/products/{HOT_ID}", json={"price_cents": price})
            if response.status_code == 200:
                writes[round_index] = writes.get(round_index, 0) + 1

    writes: dict[int, int] = {}

    async def after(client: httpx.AsyncClient, arm: Arm, round_index: int) -> None:
        arm.extra["expiries"] = int(arm.extra.get("expiries", 0)) + writes.pop(round_index, 0)

    async def warm(client: httpx.AsyncClient, round_index: int) -> None:
        await client.get(f"/products/{HOT_ID}")

    def paths(round_index: int, n: int) -> list[str]:
        return [f"/products/{HOT_ID}"] * n

    return DemoWorkload(
        rate=DEMO_RATE,
        duration=ctx.settings.seconds,
        paths=paths,
        warm=warm,
        background=writer,
        after=after,
        ok_status=frozenset({200}),
    )


def summarize(result: ScenarioResult) -> None:
    """Headline (loader calls per expiry), verdict, notes and charts."""
    head = Headline("loader calls per expiry", "lower", digits=1)
    for arm in result.arms:
        head.values[(arm.level, arm.role)] = float(arm.extra.get("loads per expiry", 0.0))
    result.headline = head
    on, off, peer = (result.arm("library", r) for r in ("on", "off", "peer"))
    if on and off and peer:
        per = {a.role: float(a.extra.get("loads per expiry", 0.0)) for a in (on, off, peer)}
        text = (
            f"{per['on']:.1f} load per expiry with the lock vs {per['off']:.1f} without "
            f"({fold(per['on'], per['off'])}); cashews' lock {per['peer']:.1f}; "
            f"p99 {number(on.p(99), 1)} ms vs {number(off.p(99), 1)} ms without"
        )
        result.verdict = text if per["on"] < per["off"] else "NOT better: " + text
    demo_on, demo_off = result.arm("demo", "on"), result.arm("demo", "off")
    if demo_on and demo_off:
        result.notes.append(
            "Demo level: the shop runs one uvicorn process, so even with "
            "`DEMO_PROTECTIONS=none` (`lock=False`) cachekit's in-process single flight "
            "coalesces the misses of one invalidation; the lease lock only adds something "
            "across processes. Loads per invalidation: "
            f"{float(demo_on.extra.get('loads per expiry', 0)):.2f} (all) vs "
            f"{float(demo_off.extra.get('loads per expiry', 0)):.2f} (none); p99 "
            f"{number(demo_on.p(99), 1)} ms vs {number(demo_off.p(99), 1)} ms."
        )
    result.charts.append(
        Chart(
            f"{NAME}.png",
            "Breakdown: a hot key expiring (library) or invalidated (demo) every second",
            [Panel("db_qps", "DB queries/s"), Panel("p99_ms", "p99 latency, ms", log=True)],
        )
    )
