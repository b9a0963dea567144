"""Consistency benchmark: a 95/5 read/write mix on PostgreSQL rows in 4 processes.

What the suite's ``consistency`` scenario does not measure (it runs one process on a
simulated database): ``--workers`` processes (``multiprocessing`` "spawn") x ``--clients``
asyncio clients for ``--seconds`` on a real PostgreSQL table of ``--rows`` rows, each with
a ``version``, through SQLAlchemy's ORM. An operation picks a row (row *k* with weight
``1 / k ** --zipf``: a few rows are hot) and either reads it through ``@cache.cached(ttl=60,
key="row:{rid}")``, whose loader SELECTs it, or (``--write-ratio``, 5 %) writes it in an
``AsyncSession`` transaction: ``get(..., with_for_update=True)``, ``version += 1``, flush,
commit. Write paths, one run each on fresh keys with the versions reset:

* **invalidate_on_commit** (``cachekit.contrib.sqlalchemy``): the key is invalidated after
  the commit, its rebuild lease voided; judged: 0 stale reads;
* the same on a cache with ``double_delete=0.5``; judged: 0 reads stale beyond 0.5 s;
* **delete before commit** (``await get_row.invalidate(rid)`` after the flush): the classic
  mistake; and the same with ``double_delete=0.5``, the "delayed double delete" bound;
* **no invalidation**: keys live out their TTL (shows that the counter counts).

A read is *stale* when it returned a version lower than one whose ``commit()`` (and the
write path's work after it) had returned before the read began, by that much time; every
client logs ``time.time_ns()`` (the one wall clock of every process) and the coordinator
compares afterwards, so the measured path carries no extra round trip. Writes serialise
per row (``FOR UPDATE``): the run checks that each row's versions run 1, 2, 3 ... and that
no read returned a version nobody committed. *left stale*: rows the cache still held at an
old version when the run was over. ``--rounds`` repeats every write path in rotating order.

``--database-url`` (default ``$DATABASE_URL``; ``postgresql://`` means psycopg 3) names the
database; without one the benchmark says so and exits. A private Redis server is started
unless ``--url`` answers. The table (``bench_consistency_<tag>``) is dropped at the end.

Usage::

    .venv/bin/python -m loadtests consistency      # results: loadtests/results/consistency.json
    .venv/bin/python -m loadtests consistency --seconds 5 --rows 200
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import os
import random
import secrets
import time
import traceback
from array import array
from collections import Counter
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, registry

from loadtests.harness import RESULTS
from loadtests.harness.args import bench_parser, parse, write_json
from loadtests.harness.fleet import Fleet, WorkerError, receive, run_worker
from loadtests.harness.progress import Progress
from loadtests.harness.rounds import interleaved
from loadtests.harness.servers import delete_run_keys, redact, redis_server
from loadtests.harness.tables import (
    environment,
    environment_line,
    error_summary,
    markdown_table,
    percentile,
    text_table,
)

KEY, TTL, SETTLE, NS = "row:{rid}", 60.0, 0.25, 1_000_000_000
TEXT_COLUMNS = frozenset({"contender", "target", "errors"})  # contender: the write path


@dataclass(frozen=True)
class Path:
    slug: str
    label: str
    mode: str  # "after-commit", "before-commit", "none"
    double_delete: float
    judged: bool  # target: 0 reads stale beyond its double_delete window


@dataclass(frozen=True)
class Spec:
    """What a worker builds (pickled to the spawned process)."""

    path: Path
    redis_url: str
    db_url: str
    table: str
    prefix: str
    index: int
    clients: int
    rows: int
    zipf: float
    write_ratio: float
    seed: int


def row_table(name: str) -> sa.Table:
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("payload", sa.String(200), nullable=False),
    )


# --------------------------------------------------------------------------- worker side


class Row:
    """A row of the run's table (mapped imperatively in each worker: its name is per run)."""

    id: int
    version: int


class WriterSession(Session):
    """The writers' session class: the integration listens to it alone."""


async def serve(spec: Spec, conn: Connection) -> None:
    """Build the engine, cache and write path; warm up; run the clients when told."""
    from cachekit import Cache
    from cachekit.contrib.sqlalchemy import invalidate_on_commit

    table = row_table(spec.table)
    registry().map_imperatively(Row, table)
    cache = Cache.from_url(
        spec.redis_url,
        prefix=spec.prefix,
        double_delete=spec.path.double_delete,
        max_connections=4 * spec.clients,
    )
    engine = create_async_engine(spec.db_url, pool_size=2 * spec.clients, max_overflow=0)
    query = sa.select(table.c.id, table.c.version, table.c.payload).where(
        table.c.id == sa.bindparam("rid")
    )

    @cache.cached(ttl=TTL, key=KEY)
    async def get_row(rid: int) -> dict[str, Any]:
        async with engine.connect() as db:
            row = (await db.execute(query, {"rid": rid})).one()
        return {"id": row.id, "version": row.version, "payload": row.payload}

    sessions = async_sessionmaker(engine, sync_session_class=WriterSession, expire_on_commit=False)
    if spec.path.mode == "after-commit":
        invalidate_on_commit(sessions, Row, keys=lambda r: [get_row.key(r.id)], cache=cache)

    async def write(rid: int) -> int:
        async with sessions() as session, session.begin():
            row = await session.get(Row, rid, with_for_update=True)
            assert row is not None, f"row {rid} is missing"
            row.version += 1
            await session.flush()  # the UPDATE runs now, the commit at the block's end
            if spec.path.mode == "before-commit":
                await get_row.invalidate(rid)
            return row.version

    cumulative = list(itertools.accumulate(1 / (k**spec.zipf) for k in range(1, spec.rows + 1)))
    try:
        await asyncio.gather(
            *(get_row(1 + (spec.index + i) % spec.rows) for i in range(spec.clients))
        )
        cache.sync.get("warm")  # the sync face the integration invalidates with
        conn.send(("ready", {}))
        message = await asyncio.to_thread(receive, conn, 600)
        if message[0] != "run":
            return
        _, start, end = message
        reads, writes = array("q"), array("q")  # row, version, began ns, latency/done ns
        errors: Counter[str] = Counter()
        first: dict[str, str] = {}  # the first traceback of each kind of error, for the JSON

        async def client(index: int) -> None:
            rng = random.Random(f"{spec.seed}:{spec.index}:{index}")
            while time.time() < end:
                rid = bisect.bisect_left(cumulative, rng.random() * cumulative[-1]) + 1
                began = time.time_ns()
                try:
                    if rng.random() < spec.write_ratio:
                        writes.extend((rid, await write(rid), began, time.time_ns()))
                    else:
                        version = (await get_row(rid))["version"]
                        reads.extend((rid, version, began, time.time_ns() - began))
                except Exception as exc:
                    errors[type(exc).__name__] += 1
                    first.setdefault(type(exc).__name__, traceback.format_exc())

        await asyncio.sleep(max(0.0, start - time.time()))
        before = cache.stats()
        await asyncio.gather(*(client(i) for i in range(spec.clients)))
        await asyncio.sleep(spec.path.double_delete + SETTLE)  # second deletes run
        stats = {k: v - before.get(k, 0) for k, v in cache.stats().items()}
        result = {"reads": reads.tobytes(), "writes": writes.tobytes(), "errors": dict(errors)}
        conn.send(("result", result | {"stats": stats, "tracebacks": first}))
    finally:
        await cache.close()
        await engine.dispose()


def worker_main(spec: Spec, conn: Connection) -> None:
    """A spawned worker's entry point."""
    run_worker(serve, spec, conn)


# --------------------------------------------------------------------------- coordinator


@dataclass
class Outcome:
    path: Path
    reads: int = 0
    writes: int = 0
    seconds: float = 0.0
    stale: int = 0  # reads stale by more than 0
    stale_beyond: int = 0  # ... by more than the path's double_delete window
    max_stale_ms: float = 0.0
    anomalies: int = 0  # versions logged twice, skipped, or read before anyone wrote them
    read_ms: list[float] = field(default_factory=list)
    stats: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    tracebacks: dict[str, str] = field(default_factory=dict)
    left_stale: int = 0
    failure: str | None = None


def quads(raw: bytes) -> list[tuple[int, int, int, int]]:
    values = array("q")
    values.frombytes(raw)
    it = iter(values)
    return list(zip(it, it, it, it, strict=True))


def analyse(out: Outcome, results: Sequence[dict[str, Any]]) -> None:
    """Stale reads from every worker's log: per row, the earliest completion of a newer version."""
    committed: dict[int, dict[int, int]] = {}
    for result in results:
        for rid, version, _, done in quads(result["writes"]):
            versions = committed.setdefault(rid, {})
            out.anomalies += version in versions
            versions[version] = done
        out.stats.update(result["stats"])
        out.errors.update(result["errors"])
        out.tracebacks |= result["tracebacks"]
    newer: dict[int, list[float]] = {}  # rid -> [v]: earliest completion of a version > v
    for rid, versions in committed.items():
        top = max(versions)
        out.anomalies += top - len(versions)
        earliest, suffix = math.inf, [math.inf] * (top + 1)
        for v in range(top, 0, -1):
            earliest = min(earliest, versions.get(v, math.inf))
            suffix[v - 1] = earliest
        newer[rid] = suffix
        out.writes += len(versions)
    window = out.path.double_delete * NS
    for result in results:
        for rid, version, began, latency in quads(result["reads"]):
            out.reads += 1
            out.read_ms.append(latency / 1e6)
            suffix = newer.get(rid, [math.inf])
            if version >= len(suffix):
                out.anomalies += version > len(suffix) - 1
                continue
            late = began - suffix[version]  # > 0: a newer commit had returned before the read
            if late > 0:
                out.stale += 1
                out.stale_beyond += late > window
                out.max_stale_ms = max(out.max_stale_ms, late / 1e6)


def left_stale(spec: Spec, engine: sa.Engine, table: sa.Table) -> int:
    """Rows the cache holds at a version older than the table's."""
    from cachekit import Cache

    cache = Cache.from_url(spec.redis_url, prefix=spec.prefix)

    @cache.cached(ttl=TTL, key=KEY)
    def get_row(rid: int) -> dict[str, Any]:  # its keys only: never called
        raise AssertionError("left_stale reads cached rows by key")

    try:
        with engine.connect() as db:
            current = dict(db.execute(sa.select(table.c.id, table.c.version)).tuples().all())
        keys = {get_row.key(rid): rid for rid in current}
        cached = cache.sync.get_many(list(keys))
        return sum(value["version"] < current[keys[key]] for key, value in cached.items())
    finally:
        cache.sync.close()


def run_path(
    path: Path, base: Spec, engine: sa.Engine, table: sa.Table, args: Any, rep: int
) -> Outcome:
    """One write path: reset the versions, run the workers, read their logs."""
    out = Outcome(path)
    began = time.monotonic()
    spec = replace(base, path=path, prefix=f"{base.prefix}:{path.slug}:{rep}")
    with engine.begin() as db:
        db.execute(table.update().values(version=0))
    try:
        specs = [replace(spec, index=i) for i in range(args.workers)]
        with Fleet(worker_main, specs, f"consistency-{path.slug}") as fleet:
            fleet.collect("ready", 120)
            start = time.time() + 1.0
            fleet.broadcast(("run", start, start + args.seconds))
            results = fleet.collect("result", args.seconds + path.double_delete + 120)
        analyse(out, results)
        out.left_stale = left_stale(spec, engine, table)
    except (WorkerError, redis.RedisError, sa.exc.SQLAlchemyError, OSError) as exc:
        out.failure = f"{type(exc).__name__}: {exc}"
    out.seconds = time.monotonic() - began
    return out


def row(outs: Sequence[Outcome], seconds: float) -> dict[str, str]:
    """One write path's cells over its rounds (sums; the max of the maxima)."""
    path = outs[0].path
    failures = [o.failure for o in outs if o.failure is not None]
    if failures:
        return {"contender": path.label, "result": f"FAILED: {error_summary(failures[0])}"}
    stats: Counter[str] = sum((o.stats for o in outs), Counter())
    errors: Counter[str] = sum((o.errors for o in outs), Counter())
    reads, stale_beyond = sum(o.reads for o in outs), sum(o.stale_beyond for o in outs)
    looked = stats["hits"] + stats["misses"]
    window = f"> {path.double_delete * 1000:g} ms" if path.double_delete else "> 0"
    return {
        "contender": path.label,
        "reads": f"{reads:,}",
        "writes": f"{sum(o.writes for o in outs):,}",
        "stale reads": f"{sum(o.stale for o in outs):,}",
        "stale beyond window": f"{stale_beyond:,} ({window})",
        "max staleness ms": f"{max(o.max_stale_ms for o in outs):.2f}",
        "left stale": str(sum(o.left_stale for o in outs)),
        "hit ratio": f"{stats['hits'] / looked:.3f}" if looked else "-",
        "fills refused": f"{stats['stale_sets_refused']:,}",
        "fail-open reads / retried writes": f"{stats['fallbacks']} / {stats['deferred_retries']}",
        "ops/s": f"{(reads + sum(o.writes for o in outs)) / (seconds * len(outs)):,.0f}",
        "read p99 ms": f"{percentile([x for o in outs for x in o.read_ms], 99):.1f}",
        "target": ("ok" if stale_beyond == 0 else "MISSED") if path.judged else "",
        "errors": ", ".join(f"{n} {e}" for e, n in errors.most_common())
        + (f" {sum(o.anomalies for o in outs)} anomalies" if any(o.anomalies for o in outs) else "")
        or "0",
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = bench_parser(
        "consistency",
        "Write paths on PostgreSQL rows in several processes, stale reads counted.",
        rounds=1,
        json=RESULTS / "consistency.json",
        markdown=True,
    )
    parser.set_defaults(url=None)  # a private server unless --url answers
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--workers", type=int, default=4, help="processes (4)")
    parser.add_argument("--clients", type=int, default=8, help="clients per process (8)")
    parser.add_argument("--seconds", type=float, default=30.0, help="per write path (30)")
    parser.add_argument("--rows", type=int, default=1000, help="table rows (1,000)")
    parser.add_argument("--write-ratio", type=float, default=0.05, help="(0.05)")
    parser.add_argument("--zipf", type=float, default=1.0, help="row k weighs 1/k**zipf (1)")
    parser.add_argument("--double-delete", type=float, default=0.5, help="seconds (0.5)")
    parser.add_argument("--paths", help="comma-separated slugs (all)")
    args = parse(parser, argv, at_least_1=("workers", "clients", "rows", "rounds"))
    dd = args.double_delete
    after, before = "invalidate_on_commit", "delete before commit"
    paths = [
        Path("after-commit", after, "after-commit", 0.0, True),
        Path("after-commit-dd", f"{after}, double_delete={dd:g}", "after-commit", dd, True),
        Path("before-commit", before, "before-commit", 0.0, False),
        Path("before-commit-dd", f"{before}, double_delete={dd:g}", "before-commit", dd, False),
        Path("none", "no invalidation", "none", 0.0, False),
    ]
    if args.paths:
        paths = [p for p in paths if p.slug in args.paths.split(",")]
    if not args.database_url or not args.database_url.startswith(("postgres", "postgresql")):
        print(
            "consistency: skipped - it needs PostgreSQL: set DATABASE_URL or pass --database-url "
            "postgresql://user@host:5432/db (the suite's `--only consistency` needs no database)"
        )
        return
    db_url = "postgresql+psycopg://" + args.database_url.split("://", 1)[1]
    run = f"benchcons-{secrets.token_hex(4)}"
    table = row_table(f"bench_consistency_{run.split('-')[1]}")
    engine = sa.create_engine(db_url)
    progress = Progress()
    outcomes: dict[str, list[Outcome]] = {p.slug: [] for p in paths}
    with redis_server(args.url, args.server) as url:
        admin = redis.Redis.from_url(url)
        try:
            table.create(engine)
            with engine.begin() as db:
                db.execute(
                    table.insert(),
                    [
                        {"id": i, "version": 0, "payload": "x" * 100}
                        for i in range(1, args.rows + 1)
                    ],
                )
                pg = db.execute(sa.text("SHOW server_version")).scalar()
            env = environment(
                admin.info("server"), url, packages=("cachekit", "redis", "sqlalchemy", "psycopg")
            )
            env = {"database": f"PostgreSQL {pg}, {redact(db_url)}", **env}
            base = Spec(paths[0], url, db_url, table.name, run, 0, args.clients, args.rows,
                        args.zipf, args.write_ratio, 0)  # fmt: skip
            for rep, path in interleaved(paths, args.rounds):
                out = run_path(path, base, engine, table, args, rep)
                outcomes[path.slug].append(out)
                said = f"{out.reads:,} reads, {out.stale:,} stale, max {out.max_stale_ms:.1f} ms"
                progress.say(f"{rep + 1}/{args.rounds} {path.slug}", out.failure or said)
        finally:
            with suppress(sa.exc.SQLAlchemyError):
                table.drop(engine, checkfirst=True)
            engine.dispose()
            with suppress(redis.RedisError, OSError):
                delete_run_keys(admin, run)
            admin.close()
    cells = [row(outcomes[p.slug], args.seconds) for p in paths]
    hot = 1 / sum(1 / k**args.zipf for k in range(1, args.rows + 1))
    print(
        f"cachekit consistency benchmark: {args.workers} processes x {args.clients} clients, "
        f"{args.seconds:g} s per write path x {args.rounds} round(s), {args.rows:,} rows (the "
        f"hottest takes {hot:.0%}), {args.write_ratio:.0%} writes; target for "
        "invalidate_on_commit: 0 reads stale beyond its double_delete window"
    )
    print(environment_line(env))
    print()
    print(markdown_table(cells, TEXT_COLUMNS) if args.markdown else text_table(cells))
    write_json(
        args.json,
        {
            "settings": {
                k: v for k, v in vars(args).items() if k not in ("json", "url", "database_url")
            },
            "environment": env,
            "table": cells,
            "stats": {p.slug: sum((o.stats for o in outcomes[p.slug]), Counter()) for p in paths},
            "tracebacks": {p.slug: [o.tracebacks for o in outcomes[p.slug]] for p in paths},
        },
    )
