"""``/dashboard``: the cache's counters, hit ratio and database load, live, for a person.

A :class:`Sampler` task records the counters once a second (no I/O: ``cache.stats()`` and
the query counter are in-process), so every viewer sees the same rates and the last
minute of history however often it polls. ``GET /dashboard`` is the page; its script
fetches ``GET /dashboard/data`` every second and redraws.

The hit ratio counts what the cache answered (fresh hits, stale hits, cached not-found
markers) against what it had to load (misses); Bloom rejects are answered before the
cache is asked and are shown on their own.

Usage::

    sampler = Sampler(cache, queries, interval=1.0)
    task = asyncio.create_task(sampler.run())
    sampler.report()["rates"]["db_queries"]     # statements per second, last 5 s
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.templating import Jinja2Templates

from cachekit import Cache
from demo_app.db import QueryCounter

__all__ = ["Sample", "Sampler", "dashboard_endpoints", "hit_ratio"]

WINDOW = 5  # samples (seconds) behind the rates shown
HISTORY = 60  # samples kept for the charts
SERVED = ("hits", "stale_hits", "null_hits")


@dataclass(frozen=True, slots=True)
class Sample:
    """The counters at one moment (``at``: monotonic seconds)."""

    at: float
    stats: dict[str, int]
    queries: int

    def lookups(self) -> int:
        """Reads that reached the cache or its Bloom filter."""
        return sum(self.stats.get(n, 0) for n in (*SERVED, "misses", "bloom_rejects"))


def hit_ratio(stats: dict[str, int]) -> float | None:
    """Answered by the cache / (answered + misses); ``None`` before the first read."""
    served = sum(stats.get(n, 0) for n in SERVED)
    total = served + stats.get("misses", 0)
    return served / total if total else None


def _delta(new: Sample, old: Sample) -> dict[str, int]:
    return {name: value - old.stats.get(name, 0) for name, value in new.stats.items()}


class Sampler:
    """The counters every ``interval`` seconds, the last :data:`HISTORY` of them kept.

    **Parameters:** ``cache``, ``queries`` (the engine's :class:`QueryCounter`),
    ``interval`` (seconds), ``clock`` (monotonic seconds; injectable for tests).
    """

    def __init__(
        self,
        cache: Cache,
        queries: QueryCounter,
        *,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache = cache
        self.queries = queries
        self.interval = interval
        self.clock = clock
        self.started = clock()
        self.samples: deque[Sample] = deque(maxlen=HISTORY + 1)

    def take(self) -> Sample:
        """Read the counters now (and keep the reading)."""
        sample = Sample(self.clock(), self.cache.stats(), self.queries.count)
        self.samples.append(sample)
        return sample

    async def run(self) -> None:
        """Sample forever (cancel the task to stop)."""
        while True:
            self.take()
            await asyncio.sleep(self.interval)

    def report(self) -> dict[str, Any]:
        """Totals now, rates over the last few seconds, and per-interval history."""
        now = Sample(self.clock(), self.cache.stats(), self.queries.count)
        past = list(self.samples)
        base = past[-WINDOW] if len(past) >= WINDOW else (past[0] if past else now)
        span = max(now.at - base.at, 1e-9)
        recent = _delta(now, base)
        history = [
            {
                "db_qps": (b.queries - a.queries) / max(b.at - a.at, 1e-9),
                "lookups": (b.lookups() - a.lookups()) / max(b.at - a.at, 1e-9),
                "hit_ratio": hit_ratio(_delta(b, a)),
            }
            for a, b in itertools.pairwise(past)
        ]
        return {
            "uptime": round(now.at - self.started, 1),
            "counters": now.stats,
            "db_queries": now.queries,
            "hit_ratio": hit_ratio(now.stats),
            "recent_hit_ratio": hit_ratio(recent),
            "rates": {
                "db_queries": (now.queries - base.queries) / span if now is not base else 0.0,
                "lookups": (now.lookups() - base.lookups()) / span if now is not base else 0.0,
            },
            "window": round(span, 1) if now is not base else 0.0,
            "history": history,
        }


def dashboard_endpoints(
    sampler: Sampler, templates: Jinja2Templates, protections: Collection[str]
) -> tuple[Callable[[Request], Awaitable[Response]], Callable[[Request], Awaitable[Response]]]:
    """The page and its JSON data endpoint; ``protections``: those product reads use."""
    context = {"title": "Dashboard", "protections": sorted(protections)}

    async def dashboard(request: Request) -> Response:
        return templates.TemplateResponse(request, "dashboard.html", dict(context))

    async def data(request: Request) -> Response:
        return JSONResponse(sampler.report(), headers={"Cache-Control": "no-store"})

    return dashboard, data
