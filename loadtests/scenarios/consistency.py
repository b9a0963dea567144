"""Write consistency: writers update rows and invalidate while readers read, stale reads counted.

The approach of the ``consistency`` benchmark (:mod:`loadtests.benchmarks.consistency`:
PostgreSQL in several processes), here open-loop with cashews the peer: every
row carries a version; writers commit ``version + 1`` and then do the arm's cache work;
readers read rows through the cache. A read is *stale* when it returned a version older
than one whose write (commit and cache work) had completed before the read began; its
staleness is by how much time. After the writers stop, every row is read once more:
*left stale* counts rows the cache still serves at an old version (they stay wrong
until their TTL, 30 s here).

Library level (a simulated database: reads 10 ms, snapshot halfway; write transactions
20 ms; 50 rows picked Zipf-like, so a few are hot and often written):

* **on** - cachekit ``@cache.cached(ttl=30)``; the writer calls ``invalidate()`` after the
  commit, which also voids the lease of a load in flight, so a load that read the row
  before the commit cannot write it back afterwards (a refused "stale set");
* **off** - the same decorator, but the writer invalidates *before* committing (inside the
  transaction), the classic mistake: a reader refills the old row in between;
* **peer** - cashews ``@cache(ttl=30)`` with ``cache.delete()`` after the commit: the right
  order, but nothing stops a load that began before the commit from writing its old row
  back after the delete.

Demo level: ``PUT /products/{id}`` (``invalidate_on_commit`` in both shops) with an
ever-increasing price while ``GET /products/{id}`` reads; ``DEMO_PROTECTIONS=none``
decorates the loader with ``lock=False``, without a lease.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from loadtests.harness.demo_level import DemoWorkload, HttpError, protection_arms, run_demo_rounds
from loadtests.harness.library import (
    Counter,
    Subject,
    cachekit_cache,
    cashews_cache,
    measure,
)
from loadtests.harness.openloop import open_loop
from loadtests.harness.outcome import (
    ROLES,
    Arm,
    Chart,
    Context,
    Headline,
    Panel,
    Role,
    ScenarioResult,
    number,
)
from loadtests.harness.rounds import rotation
from loadtests.harness.simdb import SimulatedDatabase
from loadtests.scenarios.staleness import ZIPF, Log, cumulative, zipf_rows

__all__ = ["NAME", "run"]

NAME = "consistency"
ROWS = 50
TTL = 30.0
READ_MS = 10.0
WRITE_MS = 20.0
CONNECTIONS = 10
WRITE_RATE = 50.0
WIDTH = 0.5
DEMO_ROWS = 5
DEMO_RATE = 150.0
DEMO_WRITE_RATE = 10.0
DEMO_DB_LATENCY_MS = 10.0

LABELS: dict[Role, str] = {
    "on": "cachekit, invalidate after commit (lease voided)",
    "off": "cachekit, delete before commit",
    "peer": "cashews, delete after commit",
}


@dataclass
class Arena:
    """One arm's round: the rows, the read function and the write path."""

    read: Callable[[int], Awaitable[int]]
    write: Callable[[int], Awaitable[None]]
    subject: Subject


async def build(ctx: Context, role: Role, prefix: str, db: SimulatedDatabase, log: Log) -> Arena:
    """The arm's reader and writer over ``db``."""
    url = ctx.settings.redis_url
    versions = [0] * ROWS
    loads = Counter()
    loop = asyncio.get_running_loop()

    async def load(rid: int) -> dict[str, int]:
        loads.n += 1
        version = await db.run(lambda: versions[rid], READ_MS)
        return {"rid": rid, "v": version}

    async def commit(rid: int, before: Callable[[], Awaitable[None]] | None) -> int:
        async with db.connection():
            await asyncio.sleep(WRITE_MS / 2000)
            if before is not None:
                await before()  # the mistake: the cache is emptied before the commit
            await asyncio.sleep(WRITE_MS / 2000)
            versions[rid] += 1
            return versions[rid]

    if role == "peer":
        peer = cashews_cache(url)

        @peer(ttl=TTL, key=prefix + ":row:{rid}")
        async def cashews_row(rid: int) -> dict[str, int]:
            return await load(rid)

        async def cashews_read(rid: int) -> int:
            return int((await cashews_row(rid))["v"])

        async def cashews_write(rid: int) -> None:
            version = await commit(rid, None)
            await peer.delete(f"{prefix}:row:{rid}")
            log.write(rid, version, loop.time())

        async def close_peer() -> None:
            await peer.close()

        return Arena(
            cashews_read, cashews_write, Subject(lambda i: cashews_read(0), close_peer, loads)
        )

    cache = cachekit_cache(url, prefix)

    @cache.cached(ttl=TTL, key="row:{rid}")
    async def row(rid: int) -> dict[str, int]:
        return await load(rid)

    async def read(rid: int) -> int:
        return int((await row(rid))["v"])

    async def write(rid: int) -> None:
        if role == "on":
            version = await commit(rid, None)
            await row.invalidate(rid)
        else:
            version = await commit(rid, lambda: row.invalidate(rid))
        log.write(rid, version, loop.time())

    return Arena(read, write, Subject(lambda i: read(0), cache.close, loads, stats=cache.stats))


async def run(ctx: Context) -> ScenarioResult:
    """Library rounds (rotating arms), then the demo arms."""
    s = ctx.settings
    rate = s.scaled(400, 300)
    began = time.monotonic()
    result = ScenarioResult(
        NAME,
        "Write consistency: invalidation while readers read",
        "Writers commit new versions of rows and invalidate the cache while readers read "
        "them. A read is stale when it returned a version older than one whose write "
        "(commit and invalidation) had completed before the read began. After the writers "
        "stop, every row is read again: rows still served at an old version stay wrong "
        "until their TTL.",
        setup=[
            f"library: {rate:g} reads/s and {WRITE_RATE:g} writes/s over {ROWS} rows (Zipf "
            f"{ZIPF:g}), {s.seconds:g} s per arm and round, {s.rounds} round(s), rotating "
            f"order; reads {READ_MS:g} ms (snapshot halfway), write transactions "
            f"{WRITE_MS:g} ms, {CONNECTIONS} connections; TTL {TTL:g} s",
            "on: `@cache.cached(ttl=30)`, `invalidate()` after commit; off: the same, "
            "invalidated before the commit; peer: cashews `@cache(ttl=30)`, `delete()` "
            "after commit",
        ],
        extra_columns=["writes", "stale reads", "max staleness ms", "left stale"],
    )
    arms = {role: Arm("library", role, LABELS[role]) for role in ("on", "off", "peer")}
    result.arms.extend(arms.values())
    for r in range(s.rounds):
        rng = random.Random(s.seed + r)
        n = round(rate * s.seconds) + 1
        read_rows = zipf_rows(rng, ROWS, n)
        write_rows = zipf_rows(rng, ROWS, round(WRITE_RATE * s.seconds) + 1)
        for role in rotation(ROLES, r):
            where = f"{NAME} · library · {role} · round {r + 1}/{s.rounds}"
            db = SimulatedDatabase(latency_ms=READ_MS, connections=CONNECTIONS)
            log = Log()
            arena = await build(ctx, role, f"{ctx.run}:cons:{role}:{r}", db, log)
            await round_of(ctx, where, arms[role], arena, db, log, read_rows, write_rows, rate)
    if s.demo:
        result.arms.extend(
            await run_demo_rounds(
                ctx, NAME, protection_arms(), demo_workload(ctx), db_latency_ms=DEMO_DB_LATENCY_MS
            )
        )
        result.setup.append(
            f"demo: GET /products/{{id}} at {DEMO_RATE:g}/s and PUT /products/{{id}} "
            f"(price_cents ever increasing) at {DEMO_WRITE_RATE:g}/s over {DEMO_ROWS} "
            f"products (Zipf), DB_LATENCY_MS={DEMO_DB_LATENCY_MS:g}; a read is stale when "
            "it returned a lower price than a PUT answered before the read was sent"
        )
    summarize(result)
    result.seconds = time.monotonic() - began
    return result


async def round_of(
    ctx: Context,
    where: str,
    arm: Arm,
    arena: Arena,
    db: SimulatedDatabase,
    log: Log,
    read_rows: list[int],
    write_rows: list[int],
    rate: float,
) -> None:
    """Reads open-loop, writes open-loop beside them, then the checks."""
    s = ctx.settings
    loop = asyncio.get_running_loop()
    origin = loop.time() + 0.1
    writes = 0

    async def read(i: int) -> None:
        start = loop.time()
        version = await arena.read(read_rows[i])
        log.reads.append((read_rows[i], version, start))

    async def write(i: int) -> None:
        nonlocal writes
        await arena.write(write_rows[i])
        writes += 1

    left: list[int] = []

    async def check() -> None:
        await writer  # the last writes and their invalidations land first
        await asyncio.sleep(0.2)
        for rid, done in log.done.items():
            if await arena.read(rid) < max(v for v, _ in done):
                left.append(rid)

    writer = asyncio.create_task(
        open_loop(write, rate=WRITE_RATE, duration=s.seconds, request_timeout=5.0, origin=origin)
    )
    try:
        await measure(
            ctx, where, arm, arena.subject, db,
            rate=rate, duration=s.seconds, request_timeout=5.0, width=WIDTH,
            request=read, origin=origin, finale=check,
            counts=lambda: {"writes": writes},
        )  # fmt: skip
    finally:
        if not writer.done():
            writer.cancel()
    stale, worst, when = log.stale()
    arm.extra["writes"] = int(arm.extra.get("writes", 0)) + writes
    arm.extra["stale reads"] = int(arm.extra.get("stale reads", 0)) + stale
    arm.extra["max staleness ms"] = max(float(arm.extra.get("max staleness ms", 0.0)), worst * 1000)
    arm.extra["left stale"] = int(arm.extra.get("left stale", 0)) + len(left)
    arm.add_series("stale_cum", WIDTH, cumulative([t - origin for t in when], WIDTH, s.seconds))
    ctx.progress.say(
        where, f"{stale:,} stale reads (max {worst * 1000:.1f} ms), {len(left)} rows left stale"
    )


def demo_workload(ctx: Context) -> DemoWorkload:
    """Reads and price-increasing writes of hot products; stale reads counted per round."""
    loop_time: Callable[[], float] = lambda: asyncio.get_running_loop().time()  # noqa: E731
    prices = itertools.count(10_000)
    logs: dict[int, Log] = {}
    origins: dict[int, float] = {}

    def log_of(round_index: int) -> Log:
        return logs.setdefault(round_index, Log())

    def request(client: httpx.AsyncClient, round_index: int) -> Callable[[int], Awaitable[Any]]:
        rng = random.Random(ctx.settings.seed + 400 + round_index)
        rows = zipf_rows(rng, DEMO_ROWS, round(DEMO_RATE * ctx.settings.seconds) + 1)
        log = log_of(round_index)
        origins[round_index] = loop_time()

        async def read(i: int) -> None:
            pid = 1 + rows[i]
            start = loop_time()
            response = await client.get(f"/products/{pid}")
            if response.status_code != 200:
                raise HttpError(f"HTTP {response.status_code}")
            log.reads.append((pid, int(response.json()["price_cents"]), start))

        return read

    async def writer(client: httpx.AsyncClient, round_index: int) -> None:
        rng = random.Random(ctx.settings.seed + 500 + round_index)
        log = log_of(round_index)
        while True:
            await asyncio.sleep(1 / DEMO_WRITE_RATE)
            pid = 1 + zipf_rows(rng, DEMO_ROWS, 1)[0]
            price = next(prices)
            response = await client.put(f"/products/{pid}", json={"price_cents": price})
            if response.status_code == 200:
                log.write(pid, price, loop_time())

    async def after(client: httpx.AsyncClient, arm: Arm, round_index: int) -> None:
        log = logs.pop(round_index, Log())
        await asyncio.sleep(0.5)
        left = 0
        for pid, writes in log.done.items():
            response = await client.get(f"/products/{pid}")
            if response.status_code == 200 and response.json()["price_cents"] < max(writes)[0]:
                left += 1
        stale, worst, when = log.stale()
        arm.extra["writes"] = int(arm.extra.get("writes", 0)) + sum(
            len(w) for w in log.done.values()
        )
        arm.extra["stale reads"] = int(arm.extra.get("stale reads", 0)) + stale
        arm.extra["max staleness ms"] = max(
            float(arm.extra.get("max staleness ms", 0.0)), worst * 1000
        )
        arm.extra["left stale"] = int(arm.extra.get("left stale", 0)) + left
        origin = origins.pop(round_index, 0.0)
        arm.add_series(
            "stale_cum", WIDTH, cumulative([t - origin for t in when], WIDTH, ctx.settings.seconds)
        )

    return DemoWorkload(
        rate=DEMO_RATE,
        duration=ctx.settings.seconds,
        request=request,
        background=writer,
        after=after,
        ok_status=frozenset({200}),
    )


def summarize(result: ScenarioResult) -> None:
    """Headline (stale reads), verdict, notes and the chart."""
    head = Headline("stale reads", "lower")
    for arm in result.arms:
        head.values[(arm.level, arm.role)] = float(arm.extra.get("stale reads", 0))
    result.headline = head
    on, off, peer = (result.arm("library", r) for r in ("on", "off", "peer"))
    if on and off and peer:
        counts = {a.role: int(a.extra.get("stale reads", 0)) for a in (on, off, peer)}
        left = {a.role: int(a.extra.get("left stale", 0)) for a in (on, off, peer)}
        text = (
            f"{number(counts['on'])} stale reads with invalidate-after-commit vs "
            f"{number(counts['off'])} deleting before the commit and {number(counts['peer'])} "
            f"for cashews (delete after commit, no lease); rows left stale at the end: "
            f"{left['on']} / {left['off']} / {left['peer']}"
        )
        result.verdict = (
            text if counts["on"] <= min(counts["off"], counts["peer"]) else "NOT better: " + text
        )
    if on and int(on.extra.get("stale reads", 0)):
        result.notes.append(
            "The stale reads left with the protection on come from readers that joined a "
            "load already in flight in their process: they get what that load read, which "
            "may predate a commit that completed meanwhile. They last at most one load; the "
            "cache never keeps them (the fill is refused)."
        )
    if on and on.counters["stale_sets_refused"]:
        result.notes.append(
            f"cachekit refused {on.counters['stale_sets_refused']:,} fills with the protection "
            "on: loads that read a row before a commit and would have written it back after "
            "the invalidation (what happens to cashews' delete-after-commit)."
        )
    demo_on, demo_off = result.arm("demo", "on"), result.arm("demo", "off")
    if demo_on and demo_off:
        result.notes.append(
            "Demo level: both shops invalidate after commit, and cachekit checks every fill "
            "against a lease whatever the decorator's options, so `DEMO_PROTECTIONS=none` "
            "does not switch stale-set protection off; this arm checks the whole path "
            "(HTTP, SQLAlchemy commit, `invalidate_on_commit`) rather than contrasting "
            f"options. Stale reads: {int(demo_on.extra.get('stale reads', 0))} (all) vs "
            f"{int(demo_off.extra.get('stale reads', 0))} (none)."
        )
    result.charts.append(
        Chart(
            f"{NAME}.png",
            "Write consistency: stale reads so far, and database load",
            [
                Panel("stale_cum", "stale reads so far in the round"),
                Panel("db_qps", "DB queries/s"),
            ],
        )
    )
