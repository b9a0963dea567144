"""Cart durability: Redis is SIGKILLed and restarted empty while carts change.

Shoppers (100 carts, 20 SKUs) change their carts at a steady rate: add a quantity, set a
quantity or remove a line. Twice during the run the private Redis server is SIGKILLed
(no persistence: it comes back empty) and restarted 1.5 s later. A change is
*acknowledged* when the call returned; it is *lost* when a later observation of its cart
line (the answer to the next change of the line, or the final read) no longer reflects
it. Changes of one cart are serialised, as one shopper's clicks are.

* **on** - cachekit's ``CartStore`` over a SQLite file: every change commits in SQL
  before it returns, then replaces the Redis copy; reads rebuild from SQL when Redis lost
  the cart. Target: 0 acknowledged changes lost.
* **off** - a cart kept in Redis only (``HINCRBY`` / ``HSET`` / ``HDEL`` on a hash), as a
  session-stored cart is: fast, and gone with the server.
* no peer: cashews has no cart or session store.

Reported per phase (Redis up, down, back): latency percentiles and errors. The final
read goes through a new ``CartStore`` on a new cache (the ``off`` arm: ``HGETALL``).
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from cachekit import Cache, CartError
from cachekit.sessions import CartStore
from loadtests.harness.openloop import bucket_counts, open_loop
from loadtests.harness.outcome import (
    Arm,
    Chart,
    Context,
    Headline,
    Panel,
    Role,
    ScenarioResult,
    number,
)
from loadtests.harness.servers import PrivateServer
from loadtests.harness.simdb import counted_engine
from loadtests.harness.tables import percentile

__all__ = ["NAME", "run"]

NAME = "cart"
OWNERS = 100
SKUS = 20
DOWN = 1.5  # seconds Redis stays dead each time
WIDTH = 0.5

LABELS: dict[Role, str] = {
    "on": "cachekit CartStore (SQL first, Redis copy)",
    "off": "cart in Redis only (a hash per cart)",
}

Items = dict[str, int]
Change = tuple[str, str, int]  # ("add" | "set" | "remove", sku, qty)


@dataclass
class Line:
    """What the acknowledged changes say one cart line holds, and how many it rests on."""

    qty: int = 0  # 0: no such line
    resting: int = 0  # acknowledged changes the current quantity depends on
    uncertain: bool = False  # a change failed without an answer: it may have happened


@dataclass
class Ledger:
    """Acknowledged changes per cart line, and the ones found lost."""

    lines: dict[tuple[str, str], Line] = field(default_factory=dict)
    acknowledged: int = 0
    lost: int = 0
    uncertain_lines: int = 0

    def acked(self, owner: str, change: Change, answered: int) -> None:
        """A change returned; ``answered`` is the line's quantity in its answer."""
        kind, sku, qty = change
        line = self.lines.setdefault((owner, sku), Line())
        self.acknowledged += 1
        if kind == "add":
            expected = line.qty + qty
            if answered != expected and not line.uncertain:
                self.lost += line.resting  # the answer no longer holds what they did
            line.resting = 1 if answered != expected else line.resting + 1
        else:
            line.resting = 1  # absolute: earlier changes are replaced, not lost
        line.qty = answered
        line.uncertain = False

    def failed(self, owner: str, change: Change, exc: Exception) -> None:
        """A change raised. Refused before it was sent: nothing happened; else: maybe."""
        if not refused(exc):
            self.lines.setdefault((owner, change[1]), Line()).uncertain = True

    def final(self, owner: str, items: Items) -> None:
        """The cart as read at the end: every line it contradicts loses its changes."""
        for (who, sku), line in self.lines.items():
            if who != owner:
                continue
            if line.uncertain:
                self.uncertain_lines += 1
            elif items.get(sku, 0) != line.qty:
                self.lost += line.resting


def refused(exc: Exception) -> bool:
    """Whether ``exc`` says the change never reached a server (a refused connection)."""
    if isinstance(exc, redis.exceptions.ConnectionError):
        return "Error 111 connecting" in str(exc) or "Connection refused" in str(exc)
    # CartStore raises before acknowledging only when the SQL transaction failed.
    return isinstance(exc, CartError)


class RedisOnlyCart:
    """A cart kept only in Redis: one hash per owner, answered with the line's quantity."""

    def __init__(self, url: str) -> None:
        self.client = redis.asyncio.Redis.from_url(
            url,
            socket_timeout=0.25,
            socket_connect_timeout=0.25,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )

    async def change(self, owner: str, change: Change) -> int:
        kind, sku, qty = change
        key = f"cart:{owner}"
        if kind == "add":
            return int(await self.client.hincrby(key, sku, qty))
        if kind == "set":
            await self.client.hset(key, sku, str(qty))
            return qty
        await self.client.hdel(key, sku)
        return 0

    async def read(self, owner: str) -> Items:
        raw = await self.client.hgetall(f"cart:{owner}")
        return {str(k): int(v) for k, v in raw.items()}

    async def close(self) -> None:
        await self.client.aclose()


def changes(rng: random.Random, n: int) -> list[tuple[str, Change]]:
    """``n`` changes: (owner, (kind, sku, qty)); half adds, 30 % sets, 20 % removes."""
    out = []
    for _ in range(n):
        owner = f"shopper-{rng.randrange(OWNERS)}"
        sku = f"SKU-{rng.randrange(SKUS)}"
        roll = rng.random()
        if roll < 0.5:
            out.append((owner, ("add", sku, rng.randint(1, 3))))
        elif roll < 0.8:
            out.append((owner, ("set", sku, rng.randint(1, 9))))
        else:
            out.append((owner, ("remove", sku, 0)))
    return out


async def run(ctx: Context) -> ScenarioResult:
    """Both arms, one after the other, in rotating order over the rounds."""
    s = ctx.settings
    rate = s.scaled(60, 40)
    duration = s.scaled(12.0, 6.0)
    kills = [round(duration * 0.3, 2), round(duration * 0.65, 2)]
    began = time.monotonic()
    result = ScenarioResult(
        NAME,
        "Cart durability: Redis killed during cart changes",
        f"{OWNERS} shoppers change their carts ({SKUS} SKUs) at a steady rate; the private "
        f"Redis is SIGKILLed at {kills[0]:g} s and {kills[1]:g} s and restarted empty "
        f"{DOWN:g} s later each time. An acknowledged change is lost when a later "
        "observation of its cart line (the next change's answer or the final read) no "
        "longer reflects it.",
        setup=[
            f"{rate:g} changes/s for {duration:g} s per arm and round, {s.rounds} round(s), "
            "rotating order; changes of one cart serialised (one shopper); 50 % add, 30 % "
            "set, 20 % remove",
            "on: `CartStore(cache, engine)` on a SQLite file; off: a Redis hash per cart; "
            "no peer (cashews has no cart store); no demo arm (the demo's carts belong to "
            "sessions, which live in Redis by design)",
            "phases: up (before the first kill), down (Redis dead), back (after a restart); "
            "DB queries: the SQL statements the store sent",
        ],
        extra_columns=[
            "acknowledged",
            "lost",
            "p99 ms up",
            "p99 ms down",
            "p99 ms back",
            "errors down",
        ],
    )
    arms = {role: Arm("library", role, LABELS[role]) for role in ("on", "off")}
    arms["off"].loader_calls = None
    arms["on"].loader_calls = None
    result.arms.extend(arms.values())
    for r in range(s.rounds):
        plan = changes(random.Random(s.seed + r), round(rate * duration) + 1)
        for role in ("on", "off") if r % 2 == 0 else ("off", "on"):
            where = f"{NAME} · library · {role} · round {r + 1}/{s.rounds}"
            await one_round(ctx, where, arms[role], role, plan, rate, duration, kills)
    summarize(result, kills)
    result.seconds = time.monotonic() - began
    return result


async def one_round(
    ctx: Context,
    where: str,
    arm: Arm,
    role: Role,
    plan: list[tuple[str, Change]],
    rate: float,
    duration: float,
    kills: list[float],
) -> None:
    """One arm's round on its own server (and database), with the kills."""
    ledger = Ledger()
    statements = [0]
    with PrivateServer() as server, tempfile.TemporaryDirectory(prefix="loadtest-cart-") as tmp:
        engine = counted_engine(f"sqlite:///{Path(tmp) / 'cart.db'}", statements)
        cache = Cache.from_url(server.url, prefix=f"{ctx.run}-cart")
        store = CartStore(cache, engine)
        await store.create_schema()
        redis_only = RedisOnlyCart(server.url)
        locks = {f"shopper-{i}": asyncio.Lock() for i in range(OWNERS)}
        do: Callable[[str, Change], Awaitable[int]]
        if role == "on":

            async def through_store(owner: str, change: Change) -> int:
                kind, sku, qty = change
                if kind == "add":
                    items = await store.add(owner, sku, qty)
                elif kind == "set":
                    items = await store.set(owner, sku, qty)
                else:
                    items = await store.remove(owner, sku)
                return items.get(sku, 0)

            do = through_store
        else:
            do = redis_only.change

        async def request(i: int) -> None:
            owner, change = plan[i]
            async with locks[owner]:
                try:
                    answered = await do(owner, change)
                except Exception as exc:
                    ledger.failed(owner, change, exc)
                    raise
                ledger.acked(owner, change, answered)

        async def crashes(origin: float) -> None:
            loop = asyncio.get_running_loop()
            for at in kills:
                await asyncio.sleep(max(0.0, origin + at - loop.time()))
                await asyncio.to_thread(server.kill)
                ctx.progress.say(where, f"Redis SIGKILLed at t={loop.time() - origin:.1f}s")
                await asyncio.sleep(DOWN)
                await asyncio.to_thread(server.start)
                ctx.progress.say(where, f"Redis restarted (empty) at t={loop.time() - origin:.1f}s")

        origin = asyncio.get_running_loop().time() + 0.1
        crasher = asyncio.create_task(crashes(origin))
        statements[0] = 0
        try:
            trace = await open_loop(
                request,
                rate=rate,
                duration=duration,
                request_timeout=5.0,
                origin=origin,
                on_tick=ctx.progress.ticker(
                    where, lambda: {"acknowledged": ledger.acknowledged, "sql": statements[0]}
                ),
            )
        finally:
            await crasher
        sql = statements[0]
        # The final read: a new cache and store (nothing remembered in this process).
        await cache.close()
        fresh = Cache.from_url(server.url, prefix=f"{ctx.run}-cart")
        reader = CartStore(fresh, engine)
        try:
            for owner in locks:
                items = await (reader.get(owner) if role == "on" else redis_only.read(owner))
                ledger.final(owner, items)
        finally:
            await fresh.close()
            await redis_only.close()
            engine.dispose()
    arm.add_trace(trace, db_queries=sql, loader_calls=None)
    phases = phase_of(kills)
    for name in ("up", "down", "back"):
        errs = sum(1 for x in trace.samples if x.error is not None and phases(x.due) == name)
        arm.extra[f"errors {name}"] = int(arm.extra.get(f"errors {name}", 0)) + errs
        # Over every round so far (the arm keeps each success's due time).
        lat = [
            ms for ms, due in zip(arm.latencies_ms, arm.dues, strict=True) if phases(due) == name
        ]
        if lat:  # none when every change of the phase failed
            arm.extra[f"p99 ms {name}"] = percentile(lat, 99)
    arm.extra["acknowledged"] = int(arm.extra.get("acknowledged", 0)) + ledger.acknowledged
    arm.extra["lost"] = int(arm.extra.get("lost", 0)) + ledger.lost
    arm.extra["uncertain lines"] = int(arm.extra.get("uncertain lines", 0)) + ledger.uncertain_lines
    arm.add_series("p99_ms", WIDTH, trace.latency_series(WIDTH, 99))
    errors_at = [x.due for x in trace.samples if x.error is not None]
    arm.add_series("errors_ps", WIDTH, bucket_counts(errors_at, WIDTH, duration))
    ctx.progress.say(
        where,
        f"done: {ledger.acknowledged:,} acknowledged, {ledger.lost:,} lost, "
        f"{sum(trace.errors.values()):,} errors, {sql:,} SQL statements",
    )


def phase_of(kills: list[float]) -> Callable[[float], str]:
    """The phase of an instant: ``up`` before the first kill, ``down``, or ``back``."""

    def phase(t: float) -> str:
        if t < kills[0]:
            return "up"
        if any(k <= t < k + DOWN for k in kills):
            return "down"
        return "back"

    return phase


def summarize(result: ScenarioResult, kills: list[float]) -> None:
    """Headline (acknowledged changes lost), verdict, notes and the chart."""
    head = Headline("acknowledged changes lost", "lower")
    for arm in result.arms:
        head.values[(arm.level, arm.role)] = float(arm.extra.get("lost", 0))
    result.headline = head
    on, off = result.arm("library", "on"), result.arm("library", "off")
    if on and off:
        lost_on, lost_off = int(on.extra.get("lost", 0)), int(off.extra.get("lost", 0))
        text = (
            f"{number(lost_on)} of {number(float(on.extra.get('acknowledged', 0)))} "
            f"acknowledged changes lost with CartStore vs {number(lost_off)} of "
            f"{number(float(off.extra.get('acknowledged', 0)))} in a Redis-only cart; "
            f"{number(float(on.extra.get('errors down', 0)))} vs "
            f"{number(float(off.extra.get('errors down', 0)))} errors while Redis was down"
        )
        result.verdict = text if lost_on == 0 else "MISSED (target 0 lost): " + text
        for arm in (on, off):
            uncertain = int(arm.extra.get("uncertain lines", 0))
            if uncertain:
                result.notes.append(
                    f"{arm.role}: {uncertain} cart line(s) left out of the count: a change to "
                    "them failed without an answer (it may or may not have happened) and "
                    "nothing changed them afterwards."
                )
    result.notes.append(
        "While Redis is down CartStore keeps accepting changes (they commit in SQL) and "
        "serves reads from SQL; the Redis-only cart refuses every change until the server "
        "is back, and then has forgotten every cart."
    )
    result.charts.append(
        Chart(
            f"{NAME}.png",
            "Cart durability: Redis SIGKILLed twice (grey: down)",
            [
                Panel(
                    "p99_ms",
                    "p99 latency, ms",
                    shade=[(k, k + DOWN) for k in kills],
                    shade_label="grey: Redis down",
                    log=True,
                ),
                Panel("errors_ps", "errors/s", shade=[(k, k + DOWN) for k in kills]),
            ],
        )
    )
