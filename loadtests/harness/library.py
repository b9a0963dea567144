"""Library-level arms: a decorated async loader over the simulated database, driven open-loop.

Each arm of a round builds a :class:`Subject` (what a request awaits, how to count its
loader calls, how to close it) on a fresh :class:`simdb.SimulatedDatabase` and fresh
keys; :func:`measure` warms it up, zeroes the counts, drives it at a fixed arrival rate
and adds the round to the arm: requests, errors, latencies, database queries, loader
calls and database queries per second over time (``db_qps``).

The three kinds of client are built here the same way for every scenario: cachekit
(:func:`cachekit_cache`), cashews (:func:`cashews_cache`, an instance of its own per arm
rather than the module-level ``cashews.cache``, so arms never share state) and a naive
hand-written cache-aside (:class:`NaiveCache`: GET, on a miss load and SET; no
coalescing, no lock, no null caching), which is what "no protection" means where cachekit
cannot switch a protection off (its in-process single flight is always on).

Usage::

    db = SimulatedDatabase(latency_ms=5, connections=10)
    subject = Subject(call=lambda i: get_product(ids[i]), close=cache.close, loads=loads)
    await measure(ctx, "penetration · library · on", arm, subject, db, rate=400,
                  duration=8, request_timeout=5, width=0.5)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import redis.asyncio
from cashews import Cache as CashewsCache

from cachekit import Cache
from loadtests.harness.openloop import Trace, bucket_counts, open_loop
from loadtests.harness.outcome import Arm, Context
from loadtests.harness.simdb import SimulatedDatabase
from loadtests.harness.tables import percentile

__all__ = [
    "Counter",
    "NaiveCache",
    "Subject",
    "cachekit_cache",
    "cashews_cache",
    "measure",
]

T = TypeVar("T")


class Counter:
    """A loader-call counter a loader increments and :func:`measure` reads and zeroes."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> int:
        return self.n


@dataclass
class Subject:
    """What one arm's requests call, and its bookkeeping."""

    call: Callable[[int], Awaitable[object]]
    close: Callable[[], Awaitable[None]]
    loads: Counter
    warm: Callable[[], Awaitable[None]] | None = None
    stats: Callable[[], dict[str, int]] | None = None  # cachekit's counters, if it is one


def cachekit_cache(url: str, prefix: str) -> Cache:
    """A cachekit cache on ``url`` whose keys start with ``prefix``."""
    return Cache.from_url(url, prefix=prefix)


def cashews_cache(url: str) -> CashewsCache:
    """A cashews cache of its own on ``url`` (no client-side cache, as a fleet would run)."""
    cache = CashewsCache()
    cache.setup(url, client_side=False)
    return cache


class NaiveCache:
    """Hand-written cache-aside: GET; on a miss, load and SET with a TTL. No protection.

    ``None`` results are not cached (as most hand-written code does), and nothing stops
    a hundred concurrent misses of one key from loading it a hundred times.
    """

    def __init__(self, url: str, prefix: str, *, timeout: float = 1.0) -> None:
        self.client = redis.asyncio.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self.prefix = prefix

    async def get_or_load(self, key: str, ttl: float, load: Callable[[], Awaitable[Any]]) -> Any:
        full = f"{self.prefix}:{key}"
        raw = await self.client.get(full)
        if raw is not None:
            return orjson.loads(raw)
        value = await load()
        if value is not None:
            await self.client.set(full, orjson.dumps(value), px=max(1, int(ttl * 1000)))
        return value

    async def close(self) -> None:
        await self.client.aclose()


async def measure(
    ctx: Context,
    where: str,
    arm: Arm,
    subject: Subject,
    db: SimulatedDatabase,
    *,
    rate: float,
    duration: float,
    request_timeout: float,
    width: float,
    counts: Callable[[], Mapping[str, int]] | None = None,
    request: Callable[[int], Awaitable[object]] | None = None,
    origin: float | None = None,
    finale: Callable[[], Awaitable[None]] | None = None,
) -> Trace:
    """Warm ``subject`` up, zero the counts, drive it open-loop and add the round to ``arm``.

    ``request`` (default ``subject.call``) is what one request does, given its index;
    ``counts`` adds running counts to the progress lines; ``finale`` runs after the load,
    before the subject is closed, and its queries are not counted (a final check).
    """
    try:
        if subject.warm is not None:
            await subject.warm()
        db.queries = 0
        db.instants.clear()
        subject.loads.n = 0
        before = subject.stats() if subject.stats is not None else {}

        def running() -> dict[str, int]:
            base = {"db queries": db.queries, "loader calls": subject.loads.n}
            return {**base, **(counts() if counts else {})}

        trace = await open_loop(
            request or subject.call,
            rate=rate,
            duration=duration,
            request_timeout=request_timeout,
            origin=origin,
            on_tick=ctx.progress.ticker(where, running),
        )
        queries, loads, instants = db.queries, subject.loads.n, list(db.instants)
        if subject.stats is not None:
            for name, value in subject.stats().items():
                arm.counters[name] += value - before.get(name, 0)
        if finale is not None:
            await finale()
    finally:
        await subject.close()
    arm.add_trace(trace, db_queries=queries, loader_calls=loads)
    arm.add_series(
        "db_qps", width, bucket_counts([t - trace.origin for t in instants], width, duration)
    )
    arm.add_series("p99_ms", width, trace.latency_series(width, 99))
    ctx.progress.say(
        where,
        f"done: {trace.requests:,} requests, {sum(trace.errors.values()):,} errors, "
        f"{queries:,} db queries, {loads:,} loader calls, "
        f"p50 {trace.percentile_ms(50):.1f} ms, p99 {trace.percentile_ms(99):.1f} ms, "
        f"start lag p99 {percentile(trace.start_lag, 99) * 1000:.1f} ms",
    )
    return trace
