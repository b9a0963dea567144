"""A request arriving while the first one stores its response (issue 18, defect 1).

The second request reads the cache just before the first one's fill, and asks for the
lease just after it: the lease is free again, but the value it guards is there. It must
be served that value (``X-Cache: HIT``), and the app must run once.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cachekit import Cache
from cachekit.backends.ops.leases import Fill, TakeLease
from cachekit.backends.ops.responses import ReadResponse
from tests.support.response_cache_apps import Shop, build_app, client_for


class _Interleave:
    """Wraps the async backend: the fill waits for the second read, the second lease
    attempt waits for the fill; so the second request reads before and leases after."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self._run = backend.run
        self.reads = 0
        self.leases = 0
        self.second_read = asyncio.Event()
        self.filled = asyncio.Event()

    async def run(self, op: Any) -> Any:
        if isinstance(op, Fill):
            await self.second_read.wait()
            result = await self._run(op)
            self.filled.set()
            return result
        if isinstance(op, TakeLease):
            self.leases += 1
            if self.leases == 2:
                await self.filled.wait()
        result = await self._run(op)
        if isinstance(op, ReadResponse):
            self.reads += 1
            if self.reads == 2:
                self.second_read.set()
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_request_leasing_just_after_the_fill_is_served_the_fill(
    backend: str, memory_cache: Cache, redis_cache: Cache
) -> None:
    cache = memory_cache if backend == "memory" else redis_cache
    shop = Shop()
    app = build_app(shop, cache)
    async with client_for(app) as client:
        await client.get("/other")  # binds the cache (a 404: not stored)
        here = cache.bound().aio._loops.get()  # this event loop's share of the async face
        interleave = _Interleave(here.backend)
        here.backend = interleave
        first = asyncio.create_task(client.get("/page"))
        await shop.called.wait()  # the first request is in the app, holding the lease
        second = await asyncio.wait_for(client.get("/page"), 10)
        first_response = await first
        here.backend = interleave._backend
    assert interleave.leases == 2  # the second request did ask for the lease after the fill
    assert first_response.headers["x-cache"] == "MISS"
    assert second.headers["x-cache"] == "HIT"
    assert second.text == first_response.text
    assert shop.calls["/page"] == 1
