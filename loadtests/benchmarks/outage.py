"""Outage benchmark: throughput, latency and database load before, during and after a Redis kill.

What it measures
----------------
An open-loop load: calls of a cached ``async def`` arrive at a fixed rate (``--rate``,
default 500 per second) whatever happens to earlier calls, each for one key of a hot set
(``--keys``, default 10, picked uniformly: 50 calls per second per key). The "database"
behind the cached function sleeps ``--db-ms`` (default 50) per query and records when each
query began (``--db-pool`` > 0 also caps concurrent queries, as a real connection pool
would; by default it does not, so only the query counts differ, not the query times).

Each contender runs through three phases against a private server of its own:

* **before** (``--before`` s): Redis healthy, every key cached (warmed first);
* **during** (``--during`` s): the server was SIGKILLed (``--fault stop``: SIGSTOPped,
  a hung server whose connections stay open);
* **after** (``--after`` s): the server restarted on the same port, empty (``stop``:
  SIGCONT, data kept); the app keeps running (nothing is restarted on the client side).

Contenders, one after the other in the same run, with the same time budget:

* **cachekit** - ``@cache.cached(ttl, key=...)``, defaults: 250 ms per operation, a
  circuit breaker (5 failures, 2 s cool-down), and in degraded mode reads load through
  in-process single-flight;
* **naive** - the cache-aside people write by hand: ``GET``; on a miss load and ``SET``,
  both wrapped in ``try/except`` so Redis errors become misses; a plain ``redis.asyncio``
  client with cachekit's short timeouts (250 ms socket and connect timeouts, one
  immediate retry on a broken connection, a 64-connection pool waited for 250 ms): no
  single-flight, no breaker;
* **cashews** - ``@cache(ttl, key=...)`` on ``cashews.cache`` with the same timeouts
  (its Redis errors are suppressed by default; it coalesces concurrent calls per
  process). Skipped with a note if it cannot be set up.

Per phase: the throughput (calls completed per second of load), p50/p99/max latency
measured from each call's *scheduled* arrival (so a stall is not hidden by the generator
waiting: no coordinated omission), errors that reached callers, database queries per
second, and the log lines written at WARNING or above (with how many carried a traceback).
"recovered after" is the time from the restart to the last database query of the after
phase (with a TTL longer than the run, the cache is refilled then). The timeline (per
``--bucket-ms``) of database queries per second and p99 latency, with the kill and the
restart marked, is drawn into ``outage.png``.

Usage::

    .venv/bin/python -m loadtests outage                 # ~1 minute
    .venv/bin/python -m loadtests outage --quick         # ~35 s, shorter phases
    .venv/bin/python -m loadtests outage --fault stop    # a hung server instead
    .venv/bin/python -m loadtests outage --rate 1000 --db-ms 50 --db-pool 16 --markdown

It writes ``loadtests/results/outage.json`` and ``outage.png`` (``--out-dir``;
``outage-stop.*`` with ``--fault stop``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
import redis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from loadtests.harness import RESULTS
from loadtests.harness.args import bench_parser, parse, write_json
from loadtests.harness.openloop import Sample, open_loop
from loadtests.harness.servers import PrivateServer, server_binary
from loadtests.harness.simdb import SimulatedDatabase
from loadtests.harness.tables import (
    environment,
    environment_line,
    error_summary,
    markdown_table,
    percentile,
    text_table,
)

QUICK = (2.0, 3.0, 5.0)  # --quick: the phases before, during and after the outage, s
PHASES = ("before", "during", "after")
TEXT_COLUMNS = frozenset({"contender", "phase", "errors"})
BUDGET = 0.25  # cachekit's default deadline, given to every contender's client
Call = Callable[[str], Awaitable[Any]]


@dataclass(frozen=True)
class Settings:
    """What one run does, from the command line."""

    rate: float
    keys: int
    ttl: float
    db_ms: float
    db_pool: int
    before: float
    during: float
    after: float
    bucket_ms: float
    contenders: tuple[str, ...]
    binary: str
    fault: str  # "kill" or "stop"


# --------------------------------------------------------------------------- the world


class LogCounter(logging.Handler):
    """Counts (and swallows) WARNING+ records of every logger: when, and with a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[tuple[float, bool]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((time.monotonic(), record.exc_info is not None))


async def query(db: SimulatedDatabase, key: str) -> dict[str, Any]:
    """The system of record's answer for ``key``, after one query."""
    return await db.run(lambda: {"key": key, "name": f"product {key}", "price": len(key) * 100})


@dataclass
class Built:
    """A contender ready to be called: its cached function and how to close it."""

    call: Call
    close: Callable[[], Awaitable[None]]
    stats: Callable[[], dict[str, int]] = dict


async def build_cachekit(url: str, db: SimulatedDatabase, s: Settings) -> Built:
    from cachekit import Cache

    cache = Cache.from_url(url, prefix="outage")

    @cache.cached(ttl=s.ttl, key="product:{key}")
    async def product(key: str) -> dict[str, Any]:
        return await query(db, key)

    return Built(product, cache.close, cache.stats)


async def build_naive(url: str, db: SimulatedDatabase, s: Settings) -> Built:
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=64,
        timeout=BUDGET,
        socket_timeout=BUDGET,
        socket_connect_timeout=BUDGET,
        retry=Retry(NoBackoff(), 1),
    )
    client = redis.asyncio.Redis.from_pool(pool)

    async def product(key: str) -> dict[str, Any]:
        name = f"naive:product:{key}"
        try:
            raw = await client.get(name)
        except (redis.RedisError, OSError):
            raw = None  # Redis is down: treat it as a miss
        if raw is not None:
            cached: dict[str, Any] = orjson.loads(raw)
            return cached
        value = await query(db, key)
        with suppress(redis.RedisError, OSError):
            await client.set(name, orjson.dumps(value), ex=int(s.ttl))
        return value

    return Built(product, client.aclose)


async def build_cashews(url: str, db: SimulatedDatabase, s: Settings) -> Built:
    from cashews import cache

    cache.setup(
        url,
        client_side=False,
        max_connections=64,
        socket_timeout=BUDGET,
        socket_connect_timeout=BUDGET,
    )

    @cache(ttl=s.ttl, key="cashews:product:{key}")
    async def product(key: str) -> dict[str, Any]:
        return await query(db, key)

    return Built(product, cache.close)


BUILDERS: dict[str, Callable[[str, SimulatedDatabase, Settings], Awaitable[Built]]] = {
    "cachekit": build_cachekit,
    "naive": build_naive,
    "cashews": build_cashews,
}
LABELS = {
    "cachekit": "cachekit (single-flight, breaker)",
    "naive": "naive cache-aside",
    "cashews": "cashews @cache",
}


# --------------------------------------------------------------------------- the load


@dataclass
class Run:
    """Everything one contender went through."""

    name: str
    samples: list[Sample] = field(default_factory=list)  # due: the loop's clock
    queries: list[float] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)  # start, kill, restart, end
    logs: list[tuple[float, bool]] = field(default_factory=list)
    wrong: int = 0
    stats: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    def bounds(self, phase: str) -> tuple[float, float]:
        edges = [self.marks[k] for k in ("start", "kill", "restart", "end")]
        i = PHASES.index(phase)
        return edges[i], edges[i + 1]


async def load(call: Call, keys: Sequence[str], s: Settings, run: Run, seconds: float) -> None:
    """Calls at ``s.rate`` per second for ``seconds`` (open loop), each for a random key."""
    rng = random.Random(len(run.samples))
    chosen = [rng.choice(keys) for _ in range(round(seconds * s.rate))]

    async def one(i: int) -> None:
        value = await call(chosen[i])
        if not isinstance(value, dict) or value.get("key") != chosen[i]:
            run.wrong += 1

    trace = await open_loop(one, rate=s.rate, duration=seconds, request_timeout=30.0)
    run.samples += [replace(x, due=trace.origin + x.due) for x in trace.samples]


async def run_contender(name: str, s: Settings, logs: LogCounter) -> Run:
    """Warm, then before / kill / during / restart / after, against a server of its own."""
    run = Run(name)
    logs.records.clear()
    server = PrivateServer(binary=s.binary)
    db = SimulatedDatabase(latency_ms=s.db_ms, connections=s.db_pool or 1_000_000)
    built: Built | None = None
    keys = [f"p{i}" for i in range(s.keys)]
    try:
        server.start()
        built = await BUILDERS[name](server.url, db, s)
        for key in keys:  # every key cached, connections open
            await built.call(key)
        await asyncio.gather(*(built.call(key) for key in keys * 4))
        db.instants.clear()
        run.marks["start"] = time.monotonic()
        await load(built.call, keys, s, run, s.before)
        run.marks["kill"] = time.monotonic()
        await asyncio.to_thread(server.kill if s.fault == "kill" else server.pause)
        await load(built.call, keys, s, run, s.during)
        await asyncio.to_thread(server.start if s.fault == "kill" else server.resume)
        run.marks["restart"] = time.monotonic()
        await load(built.call, keys, s, run, s.after)
        run.marks["end"] = time.monotonic()
        run.stats = built.stats()
    except Exception as exc:
        run.error = f"{type(exc).__name__}: {exc}"
    finally:
        run.queries = list(db.instants)
        run.logs = list(logs.records)
        if built is not None:
            with suppress(Exception):
                await built.close()
        server.stop()
    return run


# --------------------------------------------------------------------------- results


def phase_figures(run: Run, phase: str, s: Settings) -> dict[str, Any]:
    """One contender's figures over one phase (latencies in ms, rates per second)."""
    start, end = run.bounds(phase)
    seconds = end - start  # the restart's own time counts to "during" for queries ...
    loaded = {"before": s.before, "during": s.during, "after": s.after}[phase]  # ... not calls
    samples = [x for x in run.samples if start <= x.due < end]
    latencies = [x.latency * 1e3 for x in samples]
    errors = [x.error for x in samples if x.error]
    queries = sum(1 for t in run.queries if start <= t < end)
    logs = [tb for t, tb in run.logs if start <= t < end]
    last = max((t for t in run.queries if t >= start), default=None)
    return {
        "calls": len(samples),
        "calls_per_s": (len(samples) - len(errors)) / loaded,
        "latency_ms": {p: percentile(latencies, p) for p in (50, 99)}
        | {100: max(latencies, default=0.0)},
        "queries": queries,
        "queries_per_s": queries / seconds,
        "logs": len(logs),
        "tracebacks": sum(logs),
        "errors": errors,
        "recovered_s": None if phase != "after" or last is None else last - start,
    }


def phase_row(run: Run, phase: str, s: Settings) -> dict[str, str]:
    f = phase_figures(run, phase, s)
    errors, recovered = f["errors"], f["recovered_s"]
    return {
        "contender": LABELS[run.name],
        "phase": phase,
        "calls/s": f"{f['calls_per_s']:,.0f}",
        "p50 ms": f"{f['latency_ms'][50]:.1f}",
        "p99 ms": f"{f['latency_ms'][99]:.1f}",
        "max ms": f"{f['latency_ms'][100]:.1f}",
        "DB queries/s": f"{f['queries_per_s']:,.1f}",
        "logs (tracebacks)": f"{f['logs']} ({f['tracebacks']})",
        "errors": str(len(errors)) + (f" ({error_summary(errors[0])})" if errors else ""),
        "recovered after s": (
            "" if phase != "after" else "-" if recovered is None else f"{recovered:.2f}"
        ),
    }


def rows(runs: Sequence[Run], s: Settings) -> list[dict[str, str]]:
    table = []
    for run in runs:
        if run.error is not None:
            table.append({"contender": LABELS[run.name], "result": f"FAILED: {run.error}"})
        else:
            table.extend(phase_row(run, phase, s) for phase in PHASES)
    return table


def timeline(run: Run, bucket: float) -> list[dict[str, float]]:
    """Per bucket, from the kill: queries per second, p99 latency (ms), calls, errors."""
    kill = run.marks["kill"]
    first = int((run.marks["start"] - kill) // bucket)
    last = int((run.marks["end"] - kill) // bucket)
    lat: dict[int, list[float]] = {i: [] for i in range(first, last + 1)}
    errors = dict.fromkeys(lat, 0)
    queries = dict.fromkeys(lat, 0)
    for x in run.samples:
        i = int((x.due - kill) // bucket)
        if i in lat:
            lat[i].append(x.latency)
            errors[i] += x.error is not None
    for t in run.queries:
        i = int((t - kill) // bucket)
        if i in queries:
            queries[i] += 1
    return [
        {
            "t": round(i * bucket, 3),
            "db_per_s": queries[i] / bucket,
            "p99_ms": round(percentile(lat[i], 99) * 1e3, 2) if lat[i] else 0.0,
            "calls": len(lat[i]),
            "errors": errors[i],
        }
        for i in range(first, last + 1)
    ]


def plot(path: Path, runs: Sequence[Run], s: Settings) -> None:
    """DB queries per second and p99 latency over time, kill and restart marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bucket = s.bucket_ms / 1000
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    colors = {"cachekit": "tab:blue", "naive": "tab:red", "cashews": "tab:green"}
    for run in runs:
        if run.error is not None:
            continue
        points = timeline(run, bucket)
        xs = [p["t"] for p in points]
        color = colors.get(run.name, "tab:gray")
        top.step(xs, [p["db_per_s"] for p in points], where="post", color=color,
                 label=LABELS[run.name])  # fmt: skip
        bottom.step(xs, [max(p["p99_ms"], 0.01) for p in points], where="post", color=color,
                    label=LABELS[run.name])  # fmt: skip
    restart = max(
        (r.marks["restart"] - r.marks["kill"] for r in runs if r.error is None), default=0
    )
    for ax in (top, bottom):
        ax.axvline(0, color="black", linestyle="--", linewidth=1)
        ax.axvline(restart, color="black", linestyle=":", linewidth=1)
        ax.grid(True, alpha=0.3)
    fault, heal = ("SIGKILL", "restart") if s.fault == "kill" else ("SIGSTOP", "SIGCONT")
    top.text(0, top.get_ylim()[1] * 0.95, " " + fault, va="top", fontsize=8)
    top.text(restart, top.get_ylim()[1] * 0.95, " " + heal, va="top", fontsize=8)
    top.set_ylabel("database queries per second")
    bottom.set_ylabel("p99 latency, ms (log)")
    bottom.set_yscale("log")
    bottom.set_xlabel(f"seconds from the {fault} ({s.bucket_ms:g} ms buckets)")
    top.legend(fontsize=8, loc="upper right")
    what = "killed and restarted" if s.fault == "kill" else "stopped and continued"
    fig.suptitle(
        f"Redis {what} under {s.rate:g} calls/s over {s.keys} hot keys "
        f"(database {s.db_ms:g} ms per query)"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(runs: Sequence[Run], s: Settings, env: dict[str, str], markdown: bool) -> dict[str, Any]:
    """Print the table; the results as a JSON-ready dict."""
    print(
        f"cachekit outage benchmark: {s.rate:g} calls/s (open loop) over {s.keys} hot keys, "
        f"database {s.db_ms:g} ms per query"
        + (f" ({s.db_pool} at a time)" if s.db_pool else "")
        + f"; phases {s.before:g} s / {s.during:g} s ("
        + ("SIGKILL" if s.fault == "kill" else "SIGSTOP")
        + f") / {s.after:g} s ("
        + ("restarted" if s.fault == "kill" else "SIGCONT")
        + ")"
    )
    print(environment_line(env))
    print()
    table = rows(runs, s)
    print(markdown_table(table, TEXT_COLUMNS) if markdown else text_table(table))
    for run in runs:
        if run.wrong:
            print(f"!! {LABELS[run.name]}: {run.wrong} calls returned another key's value")
    bucket = s.bucket_ms / 1000
    return {
        "settings": {
            "rate": s.rate,
            "keys": s.keys,
            "ttl": s.ttl,
            "db_ms": s.db_ms,
            "db_pool": s.db_pool,
            "phases_s": {"before": s.before, "during": s.during, "after": s.after},
            "bucket_ms": s.bucket_ms,
            "budget_s": BUDGET,
            "fault": s.fault,
        },
        "environment": env,
        "table": table,
        "contenders": [
            {
                "contender": LABELS[run.name],
                "error": run.error,
                "wrong_values": run.wrong,
                "cachekit_stats": {k: v for k, v in run.stats.items() if v},
                "timeline": timeline(run, bucket) if run.error is None else [],
            }
            for run in runs
        ],
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(
        "outage",
        "A Redis SIGKILL and restart under open-loop load: cachekit's degraded mode "
        "(single-flight, breaker) vs a hand-written cache-aside (and cashews).",
        markdown=True,
        url=False,
        output=False,
    )
    parser.add_argument("--rate", type=float, default=500.0, help="calls per second (500)")
    parser.add_argument("--keys", type=int, default=10, help="hot keys (10)")
    parser.add_argument("--ttl", type=float, default=300.0, help="cache TTL, seconds (300)")
    parser.add_argument("--db-ms", type=float, default=50.0, help="database query ms (50)")
    parser.add_argument(
        "--db-pool", type=int, default=0, help="concurrent database queries (0: unlimited)"
    )
    parser.add_argument("--before", type=float, default=5.0, help="healthy seconds (5)")
    parser.add_argument("--during", type=float, default=5.0, help="seconds killed (5)")
    parser.add_argument("--after", type=float, default=8.0, help="seconds after restart (8)")
    parser.add_argument("--quick", action="store_true", help="phases of 2 / 3 / 5 s")
    parser.add_argument(
        "--fault",
        choices=("kill", "stop"),
        default="kill",
        help="SIGKILL then restart (default), or SIGSTOP then SIGCONT",
    )
    parser.add_argument("--bucket-ms", type=float, default=250.0, help="timeline bucket (250)")
    parser.add_argument(
        "--contenders",
        default="cachekit,naive,cashews",
        help="comma-separated, in run order (cachekit,naive,cashews)",
    )
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="loadtests/results/")
    parser.add_argument("--no-plot", action="store_true", help="do not draw outage.png")
    args = parse(parser, argv, at_least_1=("keys",), not_negative=("db_ms", "db_pool"))
    if args.quick:
        args.before, args.during, args.after = QUICK
    unknown = set(args.contenders.split(",")) - set(BUILDERS)
    if unknown:
        parser.error(f"unknown contenders: {', '.join(sorted(unknown))}")
    if min(args.rate, args.before, args.during, args.after, args.bucket_ms) <= 0:
        parser.error("--rate, the phases and --bucket-ms must be positive")
    return args


async def bench(s: Settings) -> tuple[list[Run], dict[str, str]]:
    """Every contender in turn; the runs and the environment."""
    # Count every library's warnings instead of printing them (cashews logs a traceback
    # per failed command; cachekit one line per kind of failure).
    logs = LogCounter()
    root = logging.getLogger()
    root.addHandler(logs)
    try:
        with PrivateServer(binary=s.binary) as probe, redis.Redis.from_url(probe.url) as admin:
            info = admin.info("server")
        env = environment(
            info,
            "redis://127.0.0.1:(private)",
            packages=("cachekit", "redis", "hiredis", "cashews"),
        )
        runs = []
        for i, name in enumerate(s.contenders, 1):
            began = time.monotonic()
            run = await run_contender(name, s, logs)
            runs.append(run)
            took = time.monotonic() - began
            status = run.error or f"{len(run.samples)} calls, {len(run.queries)} database queries"
            print(
                f"[{i}/{len(s.contenders)}] {LABELS[name]}: {status} ({took:.1f}s)",
                file=sys.stderr,
                flush=True,
            )
    finally:
        root.removeHandler(logs)
    return runs, env


async def measure(
    s: Settings, out: Path, *, markdown: bool = False, draw: bool = True
) -> tuple[list[Run], dict[str, Any]]:
    """Run the benchmark, print its table, write ``outage.json`` and ``outage.png`` in ``out``.

    (``outage-stop.*`` for ``fault="stop"``.) The suite's ``outage`` scenario calls this too.
    """
    runs, env = await bench(s)
    results = report(runs, s, env, markdown)
    stem = "outage" if s.fault == "kill" else "outage-stop"
    write_json(out / f"{stem}.json", results)
    if draw:
        plot(out / f"{stem}.png", runs, s)
        print(f"timeline drawn into {out / f'{stem}.png'}")
    return runs, results


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    settings = Settings(
        rate=args.rate,
        keys=args.keys,
        ttl=args.ttl,
        db_ms=args.db_ms,
        db_pool=args.db_pool,
        before=args.before,
        during=args.during,
        after=args.after,
        bucket_ms=args.bucket_ms,
        contenders=tuple(args.contenders.split(",")),
        binary=server_binary(args.server),
        fault=args.fault,
    )
    logging.getLogger().setLevel(logging.WARNING)
    runs, _ = asyncio.run(
        measure(settings, args.out_dir, markdown=args.markdown, draw=not args.no_plot)
    )
    if os.environ.get("BENCH_STRICT") and any(r.error or r.wrong for r in runs):
        raise SystemExit(1)
