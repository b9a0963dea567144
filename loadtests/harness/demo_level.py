"""Demo-level arms: HTTP traffic at freshly started demo shops, one per arm.

For a scenario, :func:`run_demo_rounds` starts one demo per arm (each with its own
embedded Valkey and SQLite, its environment saying which protections are on), then runs
the rounds with the arms in rotating order, so both shops see the same machine at nearly
the same time. In each round it runs the workload's warm-up, reads ``/metrics``, drives
the workload's requests open-loop while sampling ``/metrics`` every
:data:`SAMPLE_EVERY` seconds (database queries per second over time, ``db_qps``), reads
``/metrics`` again and adds the differences to the arm: database queries
(``demo_db_queries_total``) and loader calls (``cachekit_loads_total``). The shops are
stopped at the end, whatever happened.

Usage::

    workload = DemoWorkload(paths=lambda round_index, n: ["/products/1"] * n, rate=150)
    arms = await run_demo_rounds(ctx, "breakdown", specs, workload)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from loadtests.harness.demo_runner import DemoApp, DemoError
from loadtests.harness.openloop import open_loop
from loadtests.harness.outcome import Arm, Context, Role
from loadtests.harness.rounds import rotation

__all__ = [
    "SAMPLE_EVERY",
    "DemoArmSpec",
    "DemoWorkload",
    "HttpError",
    "protection_arms",
    "run_demo_rounds",
]

SAMPLE_EVERY = 0.5  # seconds between /metrics samples during a round
QUERIES = "demo_db_queries_total"
LOADS = "cachekit_loads_total"

Request = Callable[[int], Awaitable[object]]


class HttpError(RuntimeError):
    """A response with a status the workload does not accept (``HTTP 500``)."""


@dataclass(frozen=True)
class DemoArmSpec:
    """One demo arm: its role, label and the environment its shop starts with."""

    role: Role
    label: str
    env: dict[str, str]


def protection_arms() -> list[DemoArmSpec]:
    """The usual pair: the shop with every protection, and with none (a plain TTL cache)."""
    return [
        DemoArmSpec("on", "demo, DEMO_PROTECTIONS=all", {"DEMO_PROTECTIONS": "all"}),
        DemoArmSpec("off", "demo, DEMO_PROTECTIONS=none", {"DEMO_PROTECTIONS": "none"}),
    ]


@dataclass
class DemoWorkload:
    """What one round of a demo scenario does.

    * **paths** - ``paths(round_index, n)``: the paths of ``n`` GET requests (simple
      workloads), answered with a status in ``ok_status``;
    * **request** - or ``request(client, round_index)``: what request ``i`` does;
    * **warm** - ``warm(client, round_index)`` before the round (not measured);
    * **background** - ``background(client, round_index)`` runs while the load runs
      (a writer, say) and is cancelled when it ends;
    * **after** - ``after(client, arm, round_index)`` when the load is over (checks);
    * **width** - seconds per bucket of ``db_qps``.
    """

    rate: float
    duration: float
    paths: Callable[[int, int], list[str]] | None = None
    request: Callable[[httpx.AsyncClient, int], Request] | None = None
    warm: Callable[[httpx.AsyncClient, int], Awaitable[None]] | None = None
    background: Callable[[httpx.AsyncClient, int], Coroutine[Any, Any, None]] | None = None
    after: Callable[[httpx.AsyncClient, Arm, int], Awaitable[None]] | None = None
    ok_status: frozenset[int] = frozenset({200, 404})
    timeout: float = 5.0
    width: float = 0.5
    env: dict[str, str] = field(default_factory=dict)  # for every arm's shop

    def requests_for(self, client: httpx.AsyncClient, round_index: int) -> Request:
        if self.request is not None:
            return self.request(client, round_index)
        assert self.paths is not None, "a workload needs paths or request"
        paths = self.paths(round_index, round(self.rate * self.duration) + 1)
        ok = self.ok_status

        async def get(i: int) -> None:
            response = await client.get(paths[i])
            if response.status_code not in ok:
                raise HttpError(f"HTTP {response.status_code}")

        return get


def http_client(url: str, timeout: float) -> httpx.AsyncClient:
    """A client with room for a burst of concurrent requests."""
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    return httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits)


async def run_demo_rounds(
    ctx: Context,
    scenario: str,
    specs: Sequence[DemoArmSpec],
    workload: DemoWorkload,
    *,
    db_latency_ms: float = 5.0,
    seed_products: int = 10_000,
) -> list[Arm]:
    """Start a shop per arm, run the rounds in rotating order, stop the shops; the arms."""
    s = ctx.settings
    arms = {spec.role: Arm("demo", spec.role, spec.label) for spec in specs}
    base_env = {"DB_LATENCY_MS": f"{db_latency_ms:g}", "SEED_PRODUCTS": str(seed_products)}
    apps = {
        spec.role: DemoApp({**base_env, **workload.env, **spec.env}, name=f"demo ({spec.role})")
        for spec in specs
    }
    where = f"{scenario} · demo"
    ctx.progress.say(where, f"starting {len(apps)} fresh demo shop(s)")
    try:
        for role, app in list(apps.items()):
            # One at a time: shops started together can end up sharing one embedded Valkey
            # (see demo_runner.embedded_server_died); a failed start is retried.
            for attempt in range(3):
                try:
                    await app.start()
                    break
                except DemoError as exc:
                    if attempt == 2:
                        raise
                    ctx.progress.say(where, f"{role}: {exc}; starting it again")
                    apps[role] = app = DemoApp(app.extra_env, name=app.name)
        ctx.progress.say(
            where,
            "ready: " + ", ".join(f"{role} in {app.started_in:.1f}s" for role, app in apps.items()),
        )
        for r in range(s.rounds):
            for spec in rotation(specs, r):
                label = f"{where} · {spec.role} · round {r + 1}/{s.rounds}"
                await _round(ctx, label, arms[spec.role], apps[spec.role], workload, r)
    finally:
        await asyncio.gather(*(app.stop() for app in apps.values()), return_exceptions=True)
        for role, app in apps.items():
            # What the shop logged besides its URL line (warnings, errors), for the record.
            said = [line for line in app.log if app.url not in line]
            if said:
                arms[role].extra["demo log"] = "\n".join(said[-20:])
    return list(arms.values())


async def _round(
    ctx: Context, where: str, arm: Arm, app: DemoApp, workload: DemoWorkload, r: int
) -> None:
    async with http_client(app.url, workload.timeout) as client:
        if workload.warm is not None:
            ctx.progress.say(where, "warming up")
            await workload.warm(client, r)
        before = await app.metrics(client)
        samples: list[tuple[float, float]] = []
        loop = asyncio.get_running_loop()
        origin = loop.time() + 0.05
        latest = {"db queries": 0, "loader calls": 0}

        async def sample() -> None:
            while True:
                with contextlib.suppress(httpx.HTTPError, RuntimeError):
                    m = await app.metrics(client)
                    samples.append((loop.time() - origin, m.get(QUERIES, 0.0)))
                    latest["db queries"] = int(m.get(QUERIES, 0.0) - before.get(QUERIES, 0.0))
                    latest["loader calls"] = int(m.get(LOADS, 0.0) - before.get(LOADS, 0.0))
                await asyncio.sleep(SAMPLE_EVERY)

        sampler = asyncio.create_task(sample())
        background = (
            asyncio.create_task(workload.background(client, r))
            if workload.background is not None
            else None
        )
        try:
            trace = await open_loop(
                workload.requests_for(client, r),
                rate=workload.rate,
                duration=workload.duration,
                request_timeout=workload.timeout,
                origin=origin,
                on_tick=ctx.progress.ticker(where, lambda: latest),
            )
        finally:
            for task in (sampler, background):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
        after = await app.metrics(client)
        queries = int(after.get(QUERIES, 0.0) - before.get(QUERIES, 0.0))
        loads = int(after.get(LOADS, 0.0) - before.get(LOADS, 0.0))
        arm.add_trace(trace, db_queries=queries, loader_calls=loads)
        for name, value in after.items():
            if name.startswith("cachekit_") and name.endswith("_total"):
                delta = int(value - before.get(name, 0.0))
                arm.counters[name.removeprefix("cachekit_").removesuffix("_total")] += delta
        width = workload.width
        arm.add_series("db_qps", width, rate_series(samples, width, trace.duration))
        arm.add_series("p99_ms", width, trace.latency_series(width, 99))
        if workload.after is not None:
            await workload.after(client, arm, r)
    ctx.progress.say(
        where,
        f"done: {trace.requests:,} requests, {sum(trace.errors.values()):,} errors, "
        f"{queries:,} db queries, {loads:,} loader calls, p50 {trace.percentile_ms(50):.1f} ms, "
        f"p99 {trace.percentile_ms(99):.1f} ms",
    )


def rate_series(
    samples: Sequence[tuple[float, float]], width: float, duration: float
) -> list[float]:
    """Per-second rates in ``width``-second buckets from samples of a cumulative counter.

    Each interval between two samples spreads its increase evenly over the buckets it
    overlaps (the counter was only seen at the samples).
    """
    buckets = [0.0] * max(1, math.ceil(duration / width))
    for (t0, c0), (t1, c1) in itertools.pairwise(samples):
        if t1 <= t0:
            continue
        per_second = (c1 - c0) / (t1 - t0)
        for index in range(len(buckets)):
            lo, hi = index * width, (index + 1) * width
            overlap = min(hi, t1) - max(lo, t0)
            if overlap > 0:
                buckets[index] += per_second * overlap
    return [b / width for b in buckets]
