"""Redis outage, the suite's own minimal version: used when ``bench_outage.py`` is missing.

The cache server dies under load and comes back empty. Readers ask for 20 hot products
at a steady rate through a private Redis server, which is SIGKILLed a third of the way
through the round and restarted (empty) at two thirds.

* **on** - cachekit ``@cache.cached(ttl=60)``: every Redis call has a short deadline, a
  circuit breaker stops calling a dead server, reads fail open (they load from the
  database) and concurrent loads of one key are coalesced in the process;
* **off** - hand-written cache-aside on redis-py (GET, load, SET, 1 s socket timeouts):
  a Redis error is the request's error;
* **peer** - cashews ``@cache(ttl=60)``, whose Redis backend suppresses connection errors
  (a miss) by default.

Figures: errors and latency while Redis is down and after it is back, database queries.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from typing import Any

from library import Counter, NaiveCache, Subject, cashews_cache, measure
from openloop import bucket_counts
from outcome import Arm, Chart, Context, Headline, Panel, Role, ScenarioResult, number
from redisproc import KillableServer
from simdb import SimulatedDatabase

from cachekit import Cache

__all__ = ["NAME", "run"]

NAME = "outage"
KEYS = 20
LOAD_MS = 20.0
CONNECTIONS = 10
WIDTH = 0.5

LABELS: dict[Role, str] = {
    "on": "cachekit, deadlines + breaker + fail open + single flight",
    "off": "hand-written cache-aside on redis-py",
    "peer": "cashews @cache (errors suppressed)",
}


def build(role: Role, url: str, prefix: str, db: SimulatedDatabase, ids: list[int]) -> Subject:
    """The arm's reader of the hot products on the server at ``url``."""
    loads = Counter()

    async def load(pid: int) -> dict[str, Any]:
        loads.n += 1
        await db.query()
        return {"id": pid, "name": f"Product {pid}"}

    async def prime(call: Any) -> None:
        await asyncio.gather(*(call(i) for i in range(KEYS)))

    if role == "on":
        cache = Cache.from_url(url, prefix=prefix)

        @cache.cached(ttl=60, key="p:{pid}")
        async def product(pid: int) -> dict[str, Any]:
            return await load(pid)

        return Subject(
            lambda i: product(ids[i]), cache.close, loads, lambda: prime(product), cache.stats
        )
    if role == "peer":
        peer = cashews_cache(url)

        @peer(ttl=60, key=prefix + ":p:{pid}")
        async def cashews_product(pid: int) -> dict[str, Any]:
            return await load(pid)

        async def close_peer() -> None:
            await peer.close()

        return Subject(
            lambda i: cashews_product(ids[i]), close_peer, loads, lambda: prime(cashews_product)
        )
    naive = NaiveCache(url, prefix)

    async def naive_product(pid: int) -> Any:
        return await naive.get_or_load(f"p:{pid}", 60, lambda: load(pid))

    return Subject(
        lambda i: naive_product(ids[i]), naive.close, loads, lambda: prime(naive_product)
    )


async def run(ctx: Context) -> ScenarioResult:
    """Each arm on its own private server, killed and restarted mid-round."""
    s = ctx.settings
    rate = s.scaled(300, 200)
    duration = max(s.seconds * 1.5, 6.0)
    down, up = round(duration / 3, 2), round(2 * duration / 3, 2)
    began = time.monotonic()
    result = ScenarioResult(
        NAME,
        "Redis outage: the cache server dies under load",
        f"Readers ask for {KEYS} hot products; the private Redis is SIGKILLed at {down:g} s "
        f"and restarted empty at {up:g} s. A cache that fails open keeps answering from "
        "the database; one that passes Redis errors on fails the requests.",
        setup=[
            f"{rate:g} reads/s for {duration:g} s per arm and round, {s.rounds} round(s); "
            f"{LOAD_MS:g} ms queries, {CONNECTIONS} connections",
            "on: `@cache.cached(ttl=60)` (defaults: 0.25 s deadline, breaker after 5 "
            "failures); off: hand-written GET / load / SET on redis-py with 1 s socket "
            "timeouts; peer: cashews `@cache(ttl=60)`",
        ],
        extra_columns=["errors down", "p99 ms down", "DB queries down", "DB queries back"],
    )
    arms = {role: Arm("library", role, LABELS[role]) for role in ("on", "off", "peer")}
    result.arms.extend(arms.values())
    roles: list[Role] = ["on", "off", "peer"]
    for r in range(s.rounds):
        rng = random.Random(s.seed + r)
        ids = [rng.randrange(KEYS) for _ in range(round(rate * duration) + 1)]
        for role in roles[r % 3 :] + roles[: r % 3]:
            where = f"{NAME} · library · {role} · round {r + 1}/{s.rounds}"
            with KillableServer() as server:
                db = SimulatedDatabase(latency_ms=LOAD_MS, connections=CONNECTIONS)
                subject = build(role, server.url, f"{ctx.run}:out:{role}", db, ids)
                origin = asyncio.get_running_loop().time() + 0.3

                async def crash(
                    server: KillableServer = server, origin: float = origin, where: str = where
                ) -> None:
                    loop = asyncio.get_running_loop()
                    await asyncio.sleep(max(0.0, origin + down - loop.time()))
                    await asyncio.to_thread(server.kill)
                    ctx.progress.say(where, f"Redis SIGKILLed at t={loop.time() - origin:.1f}s")
                    await asyncio.sleep(max(0.0, origin + up - loop.time()))
                    await asyncio.to_thread(server.start)
                    ctx.progress.say(where, f"Redis restarted at t={loop.time() - origin:.1f}s")

                crasher = asyncio.create_task(crash())
                try:
                    trace = await measure(
                        ctx, where, arms[role], subject, db,
                        rate=rate, duration=duration, request_timeout=5.0, width=WIDTH,
                        origin=origin,
                    )  # fmt: skip
                finally:
                    await crasher
            arm = arms[role]
            failed = sum(1 for x in trace.samples if down <= x.due < up and x.error is not None)
            arm.extra["errors down"] = int(arm.extra.get("errors down", 0)) + failed
            p99 = arm.window_p(99, down, up)  # over every round so far
            if not math.isnan(p99):  # NaN when every request failed
                arm.extra["p99 ms down"] = p99
            qps = arm.series["db_qps"][-1]
            for phase, lo, hi in (("down", down, up), ("back", up, duration)):
                key = f"DB queries {phase}"
                counted = sum(v * WIDTH for i, v in enumerate(qps) if lo <= i * WIDTH < hi)
                arm.extra[key] = int(arm.extra.get(key, 0)) + round(counted)
            errors_at = [x.due for x in trace.samples if x.error is not None]
            arm.add_series("errors_ps", WIDTH, bucket_counts(errors_at, WIDTH, duration))
    summarize(result, down, up)
    result.seconds = time.monotonic() - began
    return result


def p99_down(arm: Arm) -> str:
    value = arm.extra.get("p99 ms down")
    return "-" if value is None else number(float(value), 1)


def summarize(result: ScenarioResult, down: float, up: float) -> None:
    """Headline (errors while Redis is down), verdict and the chart."""
    head = Headline("errors while Redis is down", "lower")
    for arm in result.arms:
        head.values[(arm.level, arm.role)] = float(arm.extra.get("errors down", 0))
    result.headline = head
    on, off, peer = (result.arm("library", r) for r in ("on", "off", "peer"))
    if on and off and peer:
        e = {a.role: int(a.extra.get("errors down", 0)) for a in (on, off, peer)}
        q = {a.role: int(a.extra.get("DB queries down", 0)) for a in (on, off, peer)}
        text = (
            f"{number(e['on'])} errors while down vs {number(e['off'])} for hand-written "
            f"cache-aside and {number(e['peer'])} for cashews; database queries while down "
            f"{number(q['on'])} / {number(q['off'])} / {number(q['peer'])}; p99 while down "
            f"{p99_down(on)} / {p99_down(off)} / {p99_down(peer)} ms"
        )
        result.verdict = text if e["on"] <= min(e["off"], e["peer"]) else "NOT better: " + text
        back = {a.role: int(a.extra.get("DB queries back", 0)) for a in (on, off, peer)}
        result.notes.append(
            f"After the restart cachekit sent {number(back['on'])} queries to the database "
            f"against {number(back['peer'])} for cashews: its circuit breaker, opened while "
            "Redis was dead, only tries Redis again after its cool-down (2 s by default), "
            "and until then every read is a load. cashews tries Redis on every call."
        )
        if q["on"] >= q["peer"] * 0.9:
            result.notes.append(
                "While Redis was down, cachekit's in-process single flight saved little here: "
                "cashews coalesces concurrent calls of one key in its process too, and at "
                f"this rate a {LOAD_MS:g} ms load of a key rarely overlaps another."
            )
    shade = [(down, up)]
    result.charts.append(
        Chart(
            f"{NAME}-suite.png",  # outage.png belongs to bench_outage.py
            "Redis outage (grey: Redis dead)",
            [
                Panel("db_qps", "DB queries/s", shade=shade, shade_label="grey: Redis down"),
                Panel("errors_ps", "errors/s", shade=shade),
                Panel("p99_ms", "p99 latency, ms", shade=shade, log=True),
            ],
        )
    )
