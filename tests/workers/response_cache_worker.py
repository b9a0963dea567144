"""A worker for ``tests/middleware/test_response_cache_fleet.py``: one app instance, many GETs.

Run as ``python -m tests.workers.response_cache_worker MODE CONFIG_JSON`` from the project root.
The worker builds its own :class:`~cachekit.Cache` on the given Redis and its own app
behind :class:`~cachekit.middleware.ResponseCacheMiddleware`, warms up (connections and
the notification subscription, on another URL), pushes its pid onto the ``ready`` list,
blocks on ``BLPOP go`` so that every worker starts within the same millisecond, then sends
``callers`` concurrent GETs of ``/hot`` and prints one JSON line: each response's status,
``X-Cache`` and body, and the cache's stats.

Modes:

* ``herd`` - ``/hot`` is cold: one run of the handler across the fleet is expected.
* ``stale`` - the test stored ``/hot`` and let it go stale: every caller is served the
  stale copy and one background refresh runs across the fleet. A refresh's handler
  blocks until the test pushes ``release`` (so no refresh can finish, and no caller can
  see a refreshed copy, before every worker has reported); the worker then waits until
  its own refreshes are done, so that closing the cache does not cancel one.

Every run of the handler ``INCR``s the ``counter`` key first, so the test counts runs
across processes; the body names the process and the count.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import httpx
import redis.asyncio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from cachekit import Cache
from cachekit.middleware import ResponseCacheMiddleware


def build_app(cache: Cache, raw: redis.asyncio.Redis, cfg: dict[str, Any]) -> Starlette:
    """The app every worker (and the test, to store the first copy) serves."""

    async def hot(request: Request) -> Response:
        n = int(await raw.incr(cfg["counter"]))
        if n > 1 and cfg.get("gate"):
            await raw.blpop([cfg["release"]], timeout=30)
        await asyncio.sleep(cfg.get("load_seconds", 0.0))
        return PlainTextResponse(f"made by {os.getpid()} as run #{n}")

    async def warm(request: Request) -> Response:
        return PlainTextResponse("warm")

    middleware = Middleware(
        ResponseCacheMiddleware,
        cache=cache,
        ttl=cfg["ttl"],
        stale_while_revalidate=cfg.get("stale", 0),
    )
    return Starlette(
        routes=[Route("/hot", hot), Route("/warm/{pid:int}", warm)], middleware=[middleware]
    )


async def run(mode: str, cfg: dict[str, Any]) -> dict[str, Any]:
    cache = Cache.from_url(cfg["url"], prefix=cfg["prefix"])
    raw = redis.asyncio.Redis.from_url(cfg["url"])
    app = build_app(cache, raw, cfg)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as client:
            await client.get(f"/warm/{os.getpid()}")  # a miss: connections, subscription
            base = cache.stats()
            await raw.rpush(cfg["ready"], os.getpid())
            if await raw.blpop([cfg["go"]], timeout=30) is None:
                raise SystemExit("never told to go")
            responses = await asyncio.gather(*(client.get("/hot") for _ in range(cfg["callers"])))
            if mode == "stale":
                await raw.rpush(cfg["done"], os.getpid())
                face = cache.bound().aio
                for _ in range(2000):  # at most 20 s: the test releases the refresh first
                    if not face.rebuilding:
                        break
                    await asyncio.sleep(0.01)
        return {
            "pid": os.getpid(),
            "responses": [
                {"status": r.status_code, "x_cache": r.headers["x-cache"], "body": r.text}
                for r in responses
            ],
            "stats": {name: n - base[name] for name, n in cache.stats().items()},
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
