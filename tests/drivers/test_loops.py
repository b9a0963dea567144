"""The async face across event loops: one client per loop, closed with its loop.

A cache outlives loops: ``asyncio.run`` per script or job, pytest-asyncio's loop per test,
Starlette's ``TestClient`` without ``with`` (a loop per request). Each API is called in
several ``asyncio.run`` calls and must answer as if it were one loop (a hit stays a hit),
with no exception and no socket left behind (``gc.collect()`` in the test makes a leak
fail here, not in whichever test runs when the collector finds it).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import warnings
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio
from sqlalchemy import create_engine

from cachekit import Cache
from cachekit.backends.perloop import client_of
from cachekit.drivers.drive import AsyncDriver
from cachekit.drivers.task_notify import TaskListener
from cachekit.near.local import LocalCache
from cachekit.sessions import CartStore
from cachekit.testing import FakeClock
from tests.support.response_cache_apps import Shop, build_app
from tests.support.starlette_testclient import TestClient

pytest_plugins = ["pytester"]
T = TypeVar("T")
KINDS = ["url", "injected", "async-only", "memory", "near"]


def run(make: Callable[[], Awaitable[T]]) -> T:
    """``make()`` on a new event loop, as a script or a job would."""

    async def main() -> T:
        return await make()

    return asyncio.run(main())


def face(cache: Cache) -> AsyncDriver:
    return cache.bound().aio


def has_sync(cache: Cache) -> bool:
    backend = cache.bound().sync.backend
    return type(getattr(backend, "inner", backend)).__name__ != "_NoSyncBackend"


def no_leaks() -> None:
    """Collect now: a leaked socket or client warns here (and fails this test)."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        gc.collect()
    leaks = [str(w.message) for w in seen if issubclass(w.category, ResourceWarning)]
    assert leaks == []


def build(kind: str, redis_url: str, prefix: str, **options: Any) -> Cache:
    if kind == "url":
        return Cache.from_url(redis_url, prefix=prefix, **options)
    if kind == "injected":
        return Cache(
            client=redis.asyncio.Redis.from_url(redis_url),
            sync_client=redis.Redis.from_url(redis_url),
            prefix=prefix,
            **options,
        )
    if kind == "async-only":
        return Cache(client=redis.asyncio.Redis.from_url(redis_url), prefix=prefix, **options)
    if kind == "memory":
        return Cache.from_url("memory://", prefix=prefix, **options)
    assert kind == "near"
    local = LocalCache(max_entries=100, ttl=30)
    cache = Cache.from_url(redis_url, prefix=prefix, local=local, **options)
    assert local.wait_ready(5)
    return cache


@pytest.fixture(params=KINDS)
def each_cache(request: pytest.FixtureRequest, redis_url: str, prefix: str) -> Iterator[Cache]:
    """Each way a cache is made, closed at the end on a loop of its own.

    With a patient time budget: these tests count loads and hits across event loops, and
    on a busy machine a read past the default 0.25 s deadline fails open (another load).
    """
    patient: dict[str, float] = {}
    if request.param != "memory":
        patient["deadline"] = 2.0
    if request.param in ("url", "near"):  # an injected client keeps its own socket timeout
        patient["socket_timeout"] = 2.0
    cache = build(request.param, redis_url, prefix, **patient)
    yield cache
    run(cache.close)
    no_leaks()


def test_a_decorated_coroutine_hits_across_asyncio_runs(each_cache: Cache) -> None:
    calls: list[int] = []

    @each_cache.cached(ttl=60, key="product:{n}")
    async def product(n: int) -> dict[str, int]:
        calls.append(n)
        return {"n": n}

    for _ in range(3):
        assert run(lambda: product(5)) == {"n": 5}
    assert calls == [5]
    stats = each_cache.stats()
    assert stats["hits"] + stats["local_hits"] >= 2, stats
    run(lambda: product.invalidate(n=5))
    assert run(lambda: product(5)) == {"n": 5}
    assert calls == [5, 5]
    assert face(each_cache).loops == 0  # every run's client went with its loop
    no_leaks()


def test_the_raw_api_across_asyncio_runs(each_cache: Cache) -> None:
    run(lambda: each_cache.set("a", 1, ttl=60))
    run(lambda: each_cache.set_many({"b": 2, "c": 3}, ttl=60))
    assert run(lambda: each_cache.get("a")) == 1
    assert run(lambda: each_cache.get_many(["a", "b", "c"])) == {"a": 1, "b": 2, "c": 3}
    assert run(lambda: each_cache.delete("a"))
    run(lambda: each_cache.invalidate("b"))
    run(lambda: each_cache.invalidate_tags("catalog"))
    assert run(lambda: each_cache.get_many(["a", "b", "c"])) == {"c": 3}
    if has_sync(each_cache):
        assert each_cache.sync.get("c") == 3  # one set of data for both faces
    no_leaks()


def test_locks_across_asyncio_runs(each_cache: Cache) -> None:
    async def take() -> int:
        async with each_cache.lock("report", ttl=5, wait=2) as lock:
            await lock.extend(5)
            assert lock.fencing_token is not None
            return lock.fencing_token

    tokens = [run(take) for _ in range(3)]
    assert tokens == sorted(set(tokens))  # strictly increasing, each run its own holder
    no_leaks()


def test_a_lock_waiter_is_woken_on_a_later_loop(each_cache: Cache) -> None:
    """The wait for a held lock is answered by the release, not the wait's bound: the
    notification listener follows the loops (on the async-only cache it is a task)."""

    async def contend() -> float:
        loop = asyncio.get_running_loop()
        async with each_cache.lock("busy", ttl=5, wait=1):
            waiter = asyncio.create_task(take_after())
            await asyncio.sleep(0.2)
        return await waiter - loop.time()

    async def take_after() -> float:
        async with each_cache.lock("busy", ttl=5, wait=20):
            return asyncio.get_running_loop().time()

    for _ in range(2):
        assert run(contend) < 10  # released at 0.2 s; the bound was 20 s
    listener = face(each_cache).listener
    if isinstance(listener, TaskListener):
        assert listener._task is not None
        assert listener._task.done()  # it ended with its loop
    no_leaks()


def test_bloom_filters_across_asyncio_runs(each_cache: Cache) -> None:
    bloom = each_cache.bloom("ids", capacity=1000, error_rate=0.01)
    assert run(lambda: bloom.rebuild([1, 2])) == 2
    assert run(lambda: bloom.add_many([3])) == 1
    assert run(lambda: bloom.contains(2))
    assert not run(lambda: bloom.contains(99))
    assert run(lambda: bloom.add(4))
    assert run(lambda: bloom.contains(4))
    no_leaks()


def test_the_cart_across_asyncio_runs(each_cache: Cache, tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/cart.db")
    try:
        cart = CartStore(each_cache, engine)
        run(cart.create_schema)
        run(lambda: cart.add("alice", "sku-1", 1))
        run(lambda: cart.add("alice", "sku-1", 2))
        assert run(lambda: cart.get("alice")) == {"sku-1": 3}
        assert run(lambda: cart.get("alice")) == {"sku-1": 3}
    finally:
        engine.dispose()
    no_leaks()


@pytest.mark.parametrize("kind", ["url", "near"])
def test_the_response_cache_under_testclient_without_with(
    kind: str, redis_url: str, prefix: str
) -> None:
    """Every request on a new loop: the second is a HIT, served from Redis."""
    cache = build(kind, redis_url, prefix)
    shop = Shop()
    client = TestClient(build_app(shop, cache, ttl=60))
    assert client.get("/page").headers["x-cache"] == "MISS"
    assert client.get("/page").headers["x-cache"] == "HIT"
    assert shop.calls["/page"] == 1
    assert face(cache).loops == 0
    cache.sync.close()
    no_leaks()


def test_deferred_work_runs_when_its_loop_ends(redis_url: str, prefix: str) -> None:
    """A second delete due after the loop ends is run as the loop shuts down, not lost."""
    cache = Cache.from_url(redis_url, prefix=prefix, double_delete=30)
    raw = redis.Redis.from_url(redis_url)
    try:

        async def invalidate_then_refill() -> None:
            await cache.invalidate("k")
            cache.sync.set("k", "from a lagging replica", ttl=60)

        run(invalidate_then_refill)
        assert cache.sync.get("k") is None  # the second delete ran at the loop's end
        assert cache.stats()["deferred"] >= 1
    finally:
        raw.close()
        cache.sync.close()
    no_leaks()


def test_a_rebuild_cut_short_by_its_loop_can_run_again(clock: FakeClock) -> None:
    cache = Cache.from_url("memory://", clock=clock, jitter=0)
    loads: list[str] = []
    hang = False

    @cache.cached(ttl=10, stale=100, key="slow")
    async def slow() -> str:
        loads.append("load")
        if hang:
            await asyncio.sleep(60)  # the loop ends first
        return f"v{len(loads)}"

    assert run(slow) == "v1"
    clock.advance(11)
    hang = True
    assert run(slow) == "v1"  # stale served; the rebuild dies with the loop
    assert not face(cache).rebuilding  # its claim went with it
    hang = False
    assert run(slow) == "v1"  # stale again, and this time a rebuild starts
    assert loads == ["load", "load", "load"]
    run(cache.close)


def test_each_loop_gets_its_own_client_with_the_same_bounds(redis_url: str, prefix: str) -> None:
    cache = Cache.from_url(redis_url, prefix=prefix, max_connections=3)
    seen: list[Any] = []

    async def look() -> None:
        await cache.set("k", 1)
        client = client_of(face(cache).backend)
        seen.append(client)
        assert client.connection_pool.max_connections == 3 + 1  # + the listener's

    run(look)
    run(look)
    assert seen[0] is not seen[1]
    run(cache.close)
    no_leaks()


def test_a_loop_closed_by_hand_is_cleaned_up_by_the_next_one(redis_url: str, prefix: str) -> None:
    """``loop.close()`` without ``shutdown_asyncgens``: the client is found dead and its
    sockets closed without the dead loop, quietly."""
    cache = Cache.from_url(redis_url, prefix=prefix)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(cache.set("k", 1))
    loop.close()
    assert face(cache).loops == 1
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert run(lambda: cache.get("k")) == 1
        gc.collect()
    assert [w for w in seen if issubclass(w.category, ResourceWarning)] == []
    assert face(cache).loops == 0
    run(cache.close)
    no_leaks()


def test_sync_close_releases_a_hand_closed_loop(redis_url: str, prefix: str) -> None:
    cache = Cache.from_url(redis_url, prefix=prefix)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(cache.set("k", 1))
    loop.close()
    cache.sync.close()
    assert face(cache).loops == 0
    no_leaks()
    assert run(lambda: cache.get("k")) == 1  # still usable: a new loop, a new client
    cache.sync.close()
    no_leaks()


@contextlib.contextmanager
def loop_in_thread() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in a thread of its own; stopped and closed afterwards."""
    other = asyncio.new_event_loop()
    thread = threading.Thread(target=other.run_forever, daemon=True)
    thread.start()
    try:
        yield other
    finally:
        other.call_soon_threadsafe(other.stop)
        thread.join(5)
        other.run_until_complete(other.shutdown_asyncgens())
        other.close()


def test_close_reaches_a_loop_running_in_another_thread(redis_url: str, prefix: str) -> None:
    cache = Cache.from_url(redis_url, prefix=prefix)
    with loop_in_thread() as other:
        asyncio.run_coroutine_threadsafe(cache.set("k", 1), other).result(5)
        assert run(lambda: cache.get("k")) == 1
        assert face(cache).loops == 1  # the other thread's loop still runs
        run(cache.close)  # closes the other loop's client on that loop
        assert not cache.configured
    no_leaks()


def test_sync_close_reaches_a_loop_running_in_another_thread(redis_url: str, prefix: str) -> None:
    cache = Cache.from_url(redis_url, prefix=prefix)
    with loop_in_thread() as other:
        try:
            asyncio.run_coroutine_threadsafe(cache.set("k", 1), other).result(5)
            assert face(cache).loops == 1
            cache.sync.close()  # the other loop closes its own client, and is waited for
            assert face(cache).loops == 0
            assert asyncio.run_coroutine_threadsafe(cache.get("k"), other).result(5) == 1
        finally:
            asyncio.run_coroutine_threadsafe(cache.close(), other).result(5)
    no_leaks()


def test_sync_close_on_the_running_loop_retires_it_there(redis_url: str, prefix: str) -> None:
    """Sync code on a running loop cannot wait for it: the client is closed just after."""
    cache = Cache.from_url(redis_url, prefix=prefix)

    async def main() -> int:
        await cache.set("k", 1)
        cache.sync.close()
        await asyncio.sleep(0.05)  # the retirement runs on this loop
        return face(cache).loops

    assert run(main) == 0
    run(cache.close)
    no_leaks()


def test_pytest_asyncio_function_scoped_loops(
    pytester: pytest.Pytester, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module-level cache used by async tests, each on pytest-asyncio's loop of its own."""
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
        "filterwarnings = error\n"
    )
    pytester.makepyfile(
        """
        import asyncio, gc, os, uuid
        from cachekit import Cache

        cache = Cache.from_url(os.environ["LOOPS_REDIS_URL"], prefix=f"t{uuid.uuid4().hex}")
        loads = []
        loops = []

        @cache.cached(ttl=60)
        async def answer() -> int:
            loads.append(1)
            return 42

        async def test_first_loop_fills():
            loops.append(asyncio.get_running_loop())
            assert await answer() == 42

        async def test_second_loop_hits():
            loops.append(asyncio.get_running_loop())
            assert await answer() == 42
            assert loads == [1] and loops[0] is not loops[1]
            assert cache.stats()["hits"] == 1

        def test_closed_with_their_loops():
            assert cache.bound().aio.loops == 0
            cache.sync.close()
            gc.collect()
        """
    )
    monkeypatch.setenv("LOOPS_REDIS_URL", redis_url)
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(passed=3)


@pytest.mark.slow
@pytest.mark.parametrize("topology", ["sentinel", "cluster"])
def test_sentinel_and_cluster_faces_across_asyncio_runs(
    topology: str, request: pytest.FixtureRequest
) -> None:
    """The per-loop client of a Sentinel-managed primary, and of a Cluster (its nodes)."""
    servers = request.getfixturevalue(f"private_{topology}")
    cache = Cache.from_url(servers.url, prefix="loops")
    calls: list[int] = []

    @cache.cached(ttl=60, key="item:{n}")
    async def item(n: int) -> int:
        calls.append(n)
        return n

    for _ in range(3):
        assert run(lambda: item(7)) == 7
    assert calls == [7]
    assert face(cache).loops == 0
    loop = asyncio.new_event_loop()
    assert loop.run_until_complete(cache.get("item:7")) == 7
    loop.close()  # by hand: the next loop abandons its client quietly
    assert run(lambda: item(7)) == 7
    run(lambda: item.invalidate(n=7))
    run(cache.close)
    no_leaks()
