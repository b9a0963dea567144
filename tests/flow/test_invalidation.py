"""The write path: invalidations that never fail the caller, retries, and double deletes."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from cachekit import Cache
from cachekit.flow.effects import BACKOFF
from tests.support.servers import PrivateServer


def _eventually(check: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(check) and check():
            return True
        time.sleep(0.05)
    return bool(callable(check) and check())


@pytest.mark.slow
@pytest.mark.parametrize("face", ["sync", "async"])
async def test_the_retry_queue_drains_after_redis_comes_back(
    private_redis: PrivateServer, face: str
) -> None:
    cache = Cache.from_url(private_redis.url, prefix="retry")
    await cache.set("row:1", "old")
    private_redis.kill()
    if face == "sync":
        cache.sync.invalidate("row:1")  # no exception: queued
    else:
        await cache.invalidate("row:1")
    assert cache.stats()["deferred"] == 1
    private_redis.start()  # an empty server; put the stale value back as a survivor would
    raw = redis.Redis(port=private_redis.port)
    raw.set("retry:{row:1}", b"stale")
    # The retry runs BACKOFF[0] s after the failure and deletes the survivor.
    gone = await asyncio.to_thread(
        _eventually, lambda: raw.exists("retry:{row:1}") == 0, BACKOFF[0] + 3
    )
    assert gone
    assert cache.stats()["deferred_dropped"] == 0
    raw.close()
    await cache.close()


@pytest.mark.parametrize("face", ["sync", "async"])
async def test_double_delete_removes_a_refill_from_a_lagging_read(
    redis_cache: Cache, raw_redis: redis.Redis, prefix: str, face: str
) -> None:
    await redis_cache.set("row:1", "old")
    if face == "sync":
        redis_cache.sync.invalidate("row:1", double_delete=0.3)
    else:
        await redis_cache.invalidate("row:1", double_delete=0.3)
    await redis_cache.set("row:1", "old")  # a reader refilled from a lagging replica
    assert await redis_cache.get("row:1") == "old"
    await asyncio.sleep(0.8)
    assert raw_redis.exists(f"{prefix}:{{row:1}}") == 0  # the second delete removed it


async def test_close_drops_pending_work_and_counts_it(private_redis: PrivateServer) -> None:
    cache = Cache.from_url(private_redis.url, prefix="drop")
    private_redis.kill()
    await cache.invalidate("a")
    cache.sync.invalidate("b")
    assert cache.stats()["deferred"] == 2
    await cache.close()
    assert cache.stats()["deferred_dropped"] == 2


async def test_invalidate_tags_on_a_dead_server_is_queued_not_raised(
    private_redis: PrivateServer,
) -> None:
    cache = Cache.from_url(private_redis.url, prefix="deadtags")
    private_redis.kill()
    await cache.invalidate_tags("catalog", "carts")
    cache.sync.invalidate_tags("catalog")
    assert cache.stats()["deferred"] == 2
    await cache.close()
