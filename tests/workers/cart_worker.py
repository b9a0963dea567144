"""A worker process for ``tests/sessions/test_cart.py``: one share of concurrent cart changes.

Run as ``python -m tests.workers.cart_worker CONFIG_JSON`` from the project root. The worker builds
its own :class:`~cachekit.Cache` and :class:`~cachekit.sessions.CartStore` (on an
``AsyncEngine``), warms up (one read of a cart of its own, which opens the Redis and SQL
connections), pushes its pid onto the ``ready`` list, blocks on ``BLPOP go`` so that every
worker starts at once, then runs all its changes of the shared cart concurrently
(``asyncio.gather``) and prints one JSON line: the cart each change returned, by kind.

Its changes: ``add`` of each SKU in ``adds`` (quantity 1), ``set`` of ``set_sku`` to each
quantity in ``sets`` and ``bumps`` adds of 1 to ``bump_sku``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import redis.asyncio
from sqlalchemy.ext.asyncio import create_async_engine

from cachekit import Cache
from cachekit.sessions import CartStore


async def run(cfg: dict[str, Any]) -> dict[str, Any]:
    cache = Cache.from_url(cfg["url"], prefix=cfg["prefix"])
    engine = create_async_engine(cfg["database_url"])
    raw = redis.asyncio.Redis.from_url(cfg["url"])
    cart = CartStore(cache, engine)
    owner: str = cfg["owner"]
    try:
        await cart.get(f"{owner}-warmup-{os.getpid()}")
        await raw.rpush(cfg["ready"], os.getpid())
        if await raw.blpop([cfg["go"]], timeout=30) is None:
            raise SystemExit("never told to go")
        adds = [cart.add(owner, sku, 1) for sku in cfg["adds"]]
        sets = [cart.set(owner, cfg["set_sku"], qty) for qty in cfg["sets"]]
        bumps = [cart.add(owner, cfg["bump_sku"], 1) for _ in range(cfg["bumps"])]
        results = await asyncio.gather(*adds, *sets, *bumps)
        n_adds, n_sets = len(adds), len(sets)
        return {
            "pid": os.getpid(),
            "adds": results[:n_adds],
            "sets": results[n_adds : n_adds + n_sets],
            "bumps": results[n_adds + n_sets :],
        }
    finally:
        await cache.close()
        await engine.dispose()
        await raw.aclose()


def main() -> None:
    print(json.dumps(asyncio.run(run(json.loads(sys.argv[1])))))


if __name__ == "__main__":
    main()
