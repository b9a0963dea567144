"""Fixtures of the session tests: caches with patient timeouts, and a store on them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from cachekit import Cache
from cachekit.sessions import RedisSessionStore
from cachekit.testing import FakeClock
from tests.sessions.support import PATIENT


@pytest.fixture
async def redis_cache(redis_url: str, prefix: str) -> AsyncIterator[Cache]:
    """A cache on the shared test Redis, under this test's prefix, with patient timeouts."""
    cache = Cache.from_url(redis_url, prefix=prefix, **PATIENT)
    yield cache
    await cache.close()


@pytest.fixture
def store(redis_cache: Cache) -> RedisSessionStore:
    """A session store on the shared Redis, under the test's prefix."""
    return RedisSessionStore(redis_cache)


@pytest.fixture(params=["memory", "redis"])
async def clocked_cache(
    request: pytest.FixtureRequest, clock: FakeClock, redis_url: str, prefix: str
) -> AsyncIterator[Cache]:
    """The memory backend on the fake clock, then real Redis under the test's prefix."""
    if request.param == "memory":
        cache = Cache.from_url("memory://", clock=clock, jitter=0)
    else:
        cache = Cache.from_url(redis_url, prefix=prefix, **PATIENT)
    yield cache
    await cache.close()
