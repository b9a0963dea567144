"""Where the microseconds of a cache hit go: each step of the hit path, timed alone.

The hit-path benchmark (:mod:`loadtests.benchmarks.hitpath`) times whole calls against a
Redis GET; this one takes the I/O out (the guarded backend's inner backend is replaced by
one that returns the stored bytes at once) and times each step of a hit in a tight loop,
best of ``--repeat`` runs of ``--calls`` calls, in nanoseconds of this thread's CPU time
(so the other processes of a shared machine add no waiting to it). Run it on two checkouts
to compare before and after a change; the figures are CPU time on a warm cache, so a real
hit (whose I/O evicts caches) pays each of them somewhat more.

Steps (the cached value is the ~1 KiB product dict of the hit-path benchmark):

* ``orjson.loads`` of the payload: the floor's own decode;
* key rendering: the decorated function's key template and the key space;
* envelope decode: header checks, crc of the key, payload decode;
* one counter increment;
* the guard (breaker, deadline, slot) around a backend call, each face;
* the read flow driven by hand (no driver, no guard);
* the driver with the flow (no guard);
* the whole decorated call and the raw ``get``, each face (guard included).

Usage::

    .venv/bin/python -m loadtests hitsteps
    .venv/bin/python -m loadtests hitsteps --json steps.json
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from cachekit import Cache
from cachekit.backends.ops import Get, Op
from cachekit.flow.envelope import HEADER_SIZE, decode
from cachekit.flow.read import cached_read
from loadtests.benchmarks.hitpath import product
from loadtests.harness.args import write_json

PID = 5


class Instant:
    """A sync backend that answers every operation with ``raw`` at once."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def run(self, op: Op[Any]) -> Any:
        return self.raw

    def close(self) -> None:
        return None


class AsyncInstant:
    """The async twin of :class:`Instant`."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    async def run(self, op: Op[Any]) -> Any:
        return self.raw

    async def close(self) -> None:
        return None


# CPU time of this thread, not wall time: on a shared machine, the time other processes
# hold the CPU is not counted (their effect on caches still is).
clock = time.thread_time_ns


def best_ns(call: Callable[[], object], calls: int, repeat: int) -> float:
    """The best over ``repeat`` runs of the mean CPU ns per call of ``calls`` calls."""
    for _ in range(min(calls, 1000)):
        call()
    best = float("inf")
    for _ in range(repeat):
        start = clock()
        for _ in range(calls):
            call()
        best = min(best, (clock() - start) / calls)
    return best


async def abest_ns(call: Callable[[], Awaitable[object]], calls: int, repeat: int) -> float:
    """The async twin of :func:`best_ns`."""
    for _ in range(min(calls, 1000)):
        await call()
    best = float("inf")
    for _ in range(repeat):
        start = clock()
        for _ in range(calls):
            await call()
        best = min(best, (clock() - start) / calls)
    return best


def measure(url: str, calls: int, repeat: int) -> dict[str, float]:
    """Every step's ns per call."""
    cache = Cache.from_url(url, prefix=f"benchhs-{secrets.token_hex(4)}")

    @cache.cached(ttl=600, key="product:{pid}")
    def get_product(pid: int) -> dict[str, Any]:
        return product(pid)

    @cache.cached(ttl=600, key="product:{pid}")
    async def aget_product(pid: int) -> dict[str, Any]:
        return product(pid)

    out: dict[str, float] = {}
    b = cache.bound()
    ctx = b.ctx
    get_product(PID)  # the one miss: stores the entry
    key = ctx.keyspace.value(get_product.key(PID))
    guard: Any = b.sync.backend
    real = guard.inner
    raw = real.client.get(key)
    assert isinstance(raw, bytes)
    policy = get_product._typed_policy(ctx)
    serializer = policy.serializer or ctx.serializer

    def timed(name: str, call: Callable[[], object]) -> None:
        out[name] = best_ns(call, calls, repeat)

    def by_hand() -> object:
        flow = cached_read(ctx, policy, "product:5")
        flow.send(None)
        try:
            flow.send(raw)
        except StopIteration as stop:
            return stop.value
        raise AssertionError("not a hit")

    def read_flow() -> Any:
        return cached_read(ctx, policy, "product:5")

    builder = get_product._builder
    try:
        timed("floor: orjson.loads(payload)", lambda: orjson.loads(raw[HEADER_SIZE:]))
        render = getattr(builder, "storage_key", None)  # absent before the one-step form
        if render is None:
            timed("key rendering", lambda: ctx.keyspace.value(builder.build((PID,), {})))
        else:
            timed("key rendering", lambda: render(ctx.keyspace, (PID,), {}))
        timed("envelope decode", lambda: decode(key, raw, serializer))
        timed("counter increment", lambda: ctx.stats.incr("hits"))
        timed("read flow by hand", by_hand)
        guard.inner = Instant(raw)
        timed("guard (sync)", lambda: guard.run(Get(key)))
        timed("decorated def hit", lambda: get_product(PID))
        timed("cache.sync.get hit", lambda: cache.sync.get("product:5"))
        b.sync.backend = guard.inner  # the driver alone, no guard
        timed("driver + read flow (sync)", lambda: b.sync.drive(read_flow()))
    finally:
        b.sync.backend = guard
        guard.inner = real

    async def on_loop() -> None:
        aguard: Any = b.aio.backend
        areal = aguard.inner
        aguard.inner = AsyncInstant(raw)
        try:
            out["guard (async)"] = await abest_ns(lambda: aguard.run(Get(key)), calls, repeat)
            out["decorated async def hit"] = await abest_ns(
                lambda: aget_product(PID), calls, repeat
            )
            out["await cache.get hit"] = await abest_ns(
                lambda: cache.get("product:5"), calls, repeat
            )
        finally:
            aguard.inner = areal
            await cache.close()

    asyncio.run(on_loop())
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests hitsteps", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--calls", type=int, default=100_000, help="calls per run (100000)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per step, best kept (5)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    steps = measure(args.url, args.calls, args.repeat)
    width = max(map(len, steps))
    for name, ns in steps.items():
        print(f"{name:{width}s} {ns:8.0f} ns")
    write_json(args.json, {"ns_per_call": {k: round(v) for k, v in steps.items()}})
