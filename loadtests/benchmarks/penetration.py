"""Penetration benchmark: 100,000 distinct absent ids against Bloom gates, and ``contains``.

What the suite's ``penetration`` scenario does not measure (its absent ids repeat, its peer
is cashews' null caching): the "database" holds ids ``0 .. 99,999`` and ``--requests``
(100,000) requests ask for *distinct* ids from 10,000,000 up, none of which exists,
through a decorated ``async def`` whose loader counts its calls and takes ``--load-ms``.
Contenders, one after another on the same server:

* **no protection** - cachekit ``@cache.cached(ttl=60, lock=False)``: every request loads;
* **null caching** - the same with ``null_ttl=60``: distinct ids still load once each;
* **cachekit Bloom gate** - the same plus ``bloom="products"``, the filter declared with
  ``cache.bloom("products", capacity=100_000, error_rate=0.01)`` and rebuilt from the
  existing ids: only false positives load. Judged: loads within ``n p +- 3 sqrt(n p (1 -
  p))``, ``p`` the false-positive rate of the filter's geometry holding 100,000 ids;
* **cashews** ``@cache.bloom(capacity=100_000, false_positives=1)``, prefilled as its
  README shows (``await func.set(id)`` per existing id; those loads are not counted).

``--concurrency`` coroutines pull ids from one iterator and yield to the loop after each
request (as a server does between requests). Per contender: loads and the expected band,
requests/s, p50/p99 of one awaited call, and the server's commands per request (``CONFIG
RESETSTAT`` before, ``INFO commandstats`` after; a private server by default).

Then the cost of a membership test: ``bloom.sync.contains`` and ``await bloom.contains``
(cachekit's local mirror of the filter) against a Python ``set`` and pybloom-live's own
``BloomFilter.__contains__`` of the same geometry holding the same ids, in rounds that
rotate the order (:func:`~loadtests.harness.rounds.interleaved`), median of the per-round
means (target for cachekit: <= 10 µs). The same section checks that no existing id is
rejected and counts pybloom-live's false positives over the absent ids.

Usage::

    .venv/bin/python -m loadtests penetration        # results: loadtests/results/penetration.json
    .venv/bin/python -m loadtests penetration --requests 10000 --contains-calls 20000
"""

from __future__ import annotations

import asyncio
import gc
import math
import secrets
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio

from cachekit import Cache
from cachekit.bloom.filter import Bloom
from loadtests.harness import RESULTS
from loadtests.harness.args import bench_parser, parse, write_json
from loadtests.harness.progress import Progress
from loadtests.harness.rounds import interleaved
from loadtests.harness.servers import command_counts, delete_run_keys, redis_server
from loadtests.harness.tables import (
    environment,
    environment_line,
    markdown_table,
    percentile,
    text_table,
)

EXISTING, ABSENT, WARMUP = 100_000, 10_000_000, 60_000_000  # ids: 0.., absent.., warm-up..
CAPACITY, ERROR_RATE, TTL, SIGMAS, CONTAINS_TARGET_US = 100_000, 0.01, 60.0, 3.0, 10.0
TEXT_COLUMNS = frozenset({"contender", "top commands", "target"})
MU, SIGMA = "\u00b5", "\u03c3"
Call = Callable[[int], Awaitable[Any]]


@dataclass
class Outcome:
    """One contender's requests; ``p`` (a Bloom contender's rate) makes it judged."""

    label: str
    p: float | None = None
    requests: int = 0
    loads: int = 0
    seconds: float = math.nan
    latencies_ns: list[int] = field(default_factory=list)
    wrong: int = 0  # absent ids answered with something
    commands: dict[str, int] = field(default_factory=dict)
    fail_open: int = 0  # cachekit's reads that failed open (deadline, breaker): not cached

    @property
    def expected(self) -> float:
        return self.requests * self.p if self.p is not None else float(self.requests)

    @property
    def band(self) -> float:
        return SIGMAS * math.sqrt(self.requests * self.p * (1 - self.p)) if self.p else 0.0

    def row(self, judged: bool) -> dict[str, str]:
        ok = abs(self.loads - self.expected) <= self.band
        expected = f"{self.expected:,.0f}" + (f" ± {self.band:,.0f}" if self.p else "")
        top = ", ".join(f"{c} {n / self.requests:.3f}" for c, n in list(self.commands.items())[:3])
        return {
            "contender": self.label,
            "requests": f"{self.requests:,}",
            "loads": f"{self.loads:,}",
            f"expected ± 3{SIGMA}": expected,
            "target": ("ok" if ok else "MISSED") if judged else "",
            "req/s": f"{self.requests / self.seconds:,.0f}",
            f"p50 {MU}s": f"{percentile(self.latencies_ns, 50) / 1000:.1f}",
            f"p99 {MU}s": f"{percentile(self.latencies_ns, 99) / 1000:.1f}",
            "cmds/req": f"{sum(self.commands.values()) / self.requests:.3f}",
            "top commands": top or "-",
            "fail-open reads": f"{self.fail_open:,}",
            "wrong": str(self.wrong),
        }


async def pooled(
    ids: Sequence[int], concurrency: int, each: Callable[[int], Awaitable[None]]
) -> None:
    """``each(id)`` for every id, ``concurrency`` at a time, yielding to the loop after each."""
    iterator = iter(ids)

    async def worker() -> None:
        for pid in iterator:
            await each(pid)
            await asyncio.sleep(0)  # a Bloom reject never suspends: let others run

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(ids)))))


async def requests(
    call: Call,
    out: Outcome,
    loads: Counter[str],
    admin: redis.asyncio.Redis,
    cache: Cache,
    n: int,
    c: int,
) -> None:
    """Warm up on other absent ids, then time ``n`` distinct absent ids through ``call``."""
    await pooled(range(WARMUP, WARMUP + 1_000), c, call)  # pools, scripts: not counted
    gc.collect()
    loads[out.label] = 0
    fallbacks = cache.stats()["fallbacks"]
    await admin.config_resetstat()

    async def one(pid: int) -> None:
        start = time.perf_counter_ns()
        value = await call(pid)
        out.latencies_ns.append(time.perf_counter_ns() - start)
        out.wrong += bool(value)  # cashews answers False for an absent id

    began = time.perf_counter()
    await pooled(range(ABSENT, ABSENT + n), c, one)
    out.seconds = time.perf_counter() - began
    out.commands = command_counts(await admin.info("commandstats"))
    out.requests, out.loads = n, loads[out.label]
    out.fail_open = cache.stats()["fallbacks"] - fallbacks


async def penetration(
    cache: Cache,
    products: Bloom,
    admin: redis.asyncio.Redis,
    run: str,
    args: Any,
    progress: Progress,
) -> list[Outcome]:
    """The four contenders, one after another."""
    loads: Counter[str] = Counter()
    delay = args.load_ms / 1000

    def loader(label: str) -> Callable[[int], Awaitable[dict[str, Any] | None]]:
        async def load(pid: int) -> dict[str, Any] | None:
            loads[label] += 1
            await asyncio.sleep(delay)
            return {"id": pid, "name": "Widget", "price": 9.99} if 0 <= pid < EXISTING else None

        return load

    began = time.perf_counter()
    await products.rebuild(range(EXISTING))
    p = products.geometry.false_positive_rate(EXISTING)
    progress.say(
        "setup", f"cachekit filter rebuilt ({time.perf_counter() - began:.1f}s), p {p:.5f}"
    )
    none, null, gate = (
        Outcome("cachekit no protection (lock=False)"),
        Outcome("cachekit null caching (null_ttl=60)"),
        Outcome("cachekit Bloom gate + null caching", p=p),
    )
    calls: list[tuple[Outcome, Call]] = [
        (none, cache.cached(ttl=TTL, key="none:{pid}", lock=False)(loader(none.label))),
        (
            null,
            cache.cached(ttl=TTL, key="null:{pid}", lock=False, null_ttl=TTL)(loader(null.label)),
        ),
        (
            gate,
            cache.cached(ttl=TTL, key="bloom:{pid}", lock=False, null_ttl=TTL, bloom="products")(
                loader(gate.label)
            ),
        ),
    ]
    from cashews import cache as cashews
    from cashews.decorators.bloom import params_for

    cashews.setup(args.url, client_side=False, max_connections=args.concurrency)
    m, k = params_for(CAPACITY, ERROR_RATE)
    peer = Outcome(f"cashews @cache.bloom(false_positives={ERROR_RATE * 100:g})")
    peer.p = (1.0 - math.exp(-k * EXISTING / m)) ** k
    exists: Any = cashews.bloom(
        capacity=CAPACITY, false_positives=ERROR_RATE * 100, name=f"{run}:products:{{pid}}"
    )(loader(peer.label))
    began = time.perf_counter()
    await pooled(range(EXISTING), args.concurrency, exists.set)  # its README's prefill
    progress.say("setup", f"cashews filter prefilled ({time.perf_counter() - began:.1f}s)")
    calls.append((peer, exists))
    try:
        for i, (out, call) in enumerate(calls, 1):
            n = args.requests if out.p is not None else args.unprotected_requests
            await requests(call, out, loads, admin, cache, n, args.concurrency)
            progress.say(
                f"penetration {i}/{len(calls)}",
                f"{out.label}: {out.loads:,} loads of {n:,} ({n / out.seconds:,.0f} req/s)",
            )
    finally:
        await cashews.close()
    return [none, null, gate, peer]


async def contains(products: Bloom, args: Any, progress: Progress) -> dict[str, Any]:
    """The membership tests' cost in rotating rounds; false negatives and positives."""
    from pybloom_live import BloomFilter

    own = BloomFilter(CAPACITY, ERROR_RATE)
    for i in range(EXISTING):
        own.add(i)
    present = set(range(EXISTING))
    per_round = max(1, args.contains_calls // args.rounds)
    ids = [i // 2 % EXISTING if i % 2 == 0 else ABSENT + i // 2 for i in range(per_round)]
    sync_probes: dict[str, Callable[[int], object]] = {
        "python set membership (floor)": present.__contains__,
        "pybloom-live BloomFilter.__contains__ (floor)": own.__contains__,
        "cachekit bloom.sync.contains": products.sync.contains,
    }
    label_async = "cachekit await bloom.contains"
    samples: dict[str, list[float]] = {label: [] for label in [*sync_probes, label_async]}
    for pid in ids[:5_000]:  # the mirror's first load is not timed
        products.sync.contains(pid)
        await products.contains(pid)
    for _, label in interleaved(list(samples), args.rounds, collect=True):
        start = time.perf_counter_ns()
        if label == label_async:
            for pid in ids:
                await products.contains(pid)
        else:
            probe = sync_probes[label]
            for pid in ids:
                probe(pid)
        samples[label].append((time.perf_counter_ns() - start) / len(ids) / 1000)
    medians = {label: statistics.median(values) for label, values in samples.items()}
    absent = range(ABSENT, ABSENT + args.requests)
    floor = medians["pybloom-live BloomFilter.__contains__ (floor)"]
    rows = [
        {
            "contains": label,
            f"{MU}s/call (median)": f"{us:.2f}",
            "vs pybloom-live": f"{us / floor:.2f}x",
            "target": ""
            if "floor" in label
            else ("ok" if us <= CONTAINS_TARGET_US else "MISSED") + f" (<= {CONTAINS_TARGET_US:g})",
        }
        for label, us in medians.items()
    ]
    progress.say(
        "contains", ", ".join(f"{r['contains']} {r[f'{MU}s/call (median)']}" for r in rows)
    )
    return {
        "table": rows,
        "calls_per_round": per_round,
        "false_negatives": sum(not products.sync.contains(i) for i in range(EXISTING)),
        "pybloom_false_positives": sum(i in own for i in absent),
        "absent_checked": len(absent),
    }


async def bench(args: Any, url: str, progress: Progress) -> dict[str, Any]:
    run = f"benchpen-{secrets.token_hex(4)}"
    admin = redis.asyncio.Redis.from_url(url)
    cache = Cache.from_url(url, prefix=run, max_connections=args.concurrency)
    products = cache.bloom("products", capacity=CAPACITY, error_rate=ERROR_RATE)
    try:
        env = environment(
            await admin.info("server"),
            url,
            packages=("cachekit", "redis", "hiredis", "cashews", "pybloom-live"),
        )
        outcomes = await penetration(cache, products, admin, run, args, progress)
        found = await contains(products, args, progress)
        return {"environment": env, "outcomes": outcomes, "contains": found}
    finally:
        await cache.close()
        with suppress(redis.RedisError, OSError):
            sync_admin = redis.Redis.from_url(url)
            delete_run_keys(sync_admin, run)
            sync_admin.close()
        await admin.aclose()


def main(argv: Sequence[str] | None = None) -> None:
    parser = bench_parser(
        "penetration",
        "Distinct absent ids against cachekit's Bloom gate and cashews' @cache.bloom.",
        rounds=10,
        json=RESULTS / "penetration.json",
        markdown=True,
    )
    parser.set_defaults(url=None)  # a private server: the command counts are the run's only
    parser.add_argument("--requests", type=int, default=100_000, help="absent ids (100,000)")
    parser.add_argument(
        "--unprotected-requests", type=int, help="for the two without a filter (--requests)"
    )
    parser.add_argument("--concurrency", type=int, default=100, help="requests in flight (100)")
    parser.add_argument("--load-ms", type=float, default=1.0, help="a load's time in ms (1)")
    parser.add_argument("--contains-calls", type=int, default=200_000, help="per contender")
    args = parse(
        parser, argv, at_least_1=("requests", "concurrency", "rounds", "contains_calls"),
        not_negative=("load_ms",),
    )  # fmt: skip
    args.unprotected_requests = args.unprotected_requests or args.requests
    progress = Progress()
    note = "its INFO commandstats also count other clients"
    with redis_server(args.url, args.server, shared_note=note) as args.url:
        result = asyncio.run(bench(args, args.url, progress))
    outcomes: list[Outcome] = result["outcomes"]
    table = [o.row(judged=o.label.startswith("cachekit Bloom")) for o in outcomes]
    render = markdown_table if args.markdown else (lambda t, _: text_table(t))
    c = result["contains"]
    print(
        f"cachekit penetration benchmark: distinct absent ids, the database holds "
        f"{EXISTING:,}; Bloom filters: capacity {CAPACITY:,}, error rate {ERROR_RATE:g}; "
        f"loader {args.load_ms:g} ms; {args.concurrency} in flight"
    )
    print(environment_line(result["environment"]))
    print()
    print(render(table, TEXT_COLUMNS))
    print()
    print(render(c["table"], {"contains", "target"}))
    print(
        f"\n{c['calls_per_round']:,} calls a round x {args.rounds} rounds, existing and absent "
        f"ids alternating; false negatives {c['false_negatives']}; pybloom-live's own false "
        f"positives over the {c['absent_checked']:,} absent ids: {c['pybloom_false_positives']:,}"
    )
    write_json(
        args.json,
        {
            "settings": {k: v for k, v in vars(args).items() if k not in ("json", "url")},
            "environment": result["environment"],
            "penetration": table,
            "commands": {o.label: o.commands for o in outcomes},
            "contains": c,
        },
    )
