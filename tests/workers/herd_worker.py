"""A worker process for ``tests/flow/test_breakdown.py``: many coroutines hit one key at once.

Run as ``python -m tests.workers.herd_worker MODE CONFIG_JSON`` from the project root. The worker
builds its own :class:`~cachekit.Cache` on the given Redis, warms up (connections and the
notification subscription), pushes its pid onto the ``ready`` list, blocks on ``BLPOP go``
so that every worker starts within the same millisecond, then runs ``callers`` concurrent
calls of one decorated ``async def`` and prints one JSON line: the values each caller got,
each caller's latency in seconds and the cache's stats.

Modes:

* ``herd`` - a cold key: one load across the fleet is expected.
* ``stale`` - a key the test primed and let go stale: the callers get the old value and one
  background rebuild runs across the fleet; the worker waits until the stored bytes change.

Every load sleeps ``load_seconds`` and then ``INCR``s the ``counter`` key, so the test
counts loads across processes; the value a load returns names the process and the count.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

import redis.asyncio

from cachekit import Cache


async def run(mode: str, cfg: dict[str, Any]) -> dict[str, Any]:
    url: str = cfg["url"]
    cache = Cache.from_url(url, prefix=cfg["prefix"])
    raw = redis.asyncio.Redis.from_url(url)
    load_seconds: float = cfg["load_seconds"]

    async def load() -> dict[str, int]:
        await asyncio.sleep(load_seconds)
        n = await raw.incr(cfg["counter"])
        return {"pid": os.getpid(), "n": int(n)}

    @cache.cached(ttl=cfg["ttl"], stale=cfg.get("stale", 0), key=cfg["key"])
    async def hot() -> dict[str, int]:
        return await load()

    @cache.cached(ttl=60, key="warmup:{pid}")
    async def warmup(pid: int) -> int:
        return pid

    try:
        await warmup(os.getpid())  # opens connections and starts the subscription
        value_key = f"{cfg['prefix']}:{{{cfg['key']}}}"
        before = await raw.get(value_key)
        base = cache.stats()  # the warm-up's miss and load are not part of the report
        await raw.rpush(cfg["ready"], os.getpid())
        if await raw.blpop([cfg["go"]], timeout=30) is None:
            raise SystemExit("never told to go")

        async def timed() -> tuple[dict[str, int], float]:
            started = time.perf_counter()
            value = await hot()
            return value, time.perf_counter() - started

        results = await asyncio.gather(*(timed() for _ in range(cfg["callers"])))
        changed = None
        if mode == "stale":
            # Wait (bounded) until the one rebuild of the fleet has filled the key, so that
            # closing the cache does not cancel it if it runs here.
            for _ in range(1000):  # at most 10 s
                changed = await raw.get(value_key) != before
                if changed:
                    break
                await asyncio.sleep(0.01)
        return {
            "pid": os.getpid(),
            "values": [value for value, _ in results],
            "latencies": [latency for _, latency in results],
            "stats": {name: n - base[name] for name, n in cache.stats().items()},
            "changed": changed,
        }
    finally:
        await cache.close()
        await raw.aclose()


def main() -> None:
    mode, config = sys.argv[1], json.loads(sys.argv[2])
    if mode not in ("herd", "stale"):
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(asyncio.run(run(mode, config))))


if __name__ == "__main__":
    main()
