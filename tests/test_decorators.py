"""@cache.cached on def and async def: hits, misses, TTLs, None, errors, keys, methods."""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

import pytest

from cachekit import (
    AsyncCachedFunction,
    Cache,
    ConfigurationError,
    NotConfigured,
    SyncCachedFunction,
)
from cachekit.testing import FakeClock


class Loader:
    """Counts calls and returns what it is told."""

    def __init__(self, result: Any = "value") -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.result = result

    def __call__(self, *args: Any) -> Any:
        self.calls.append(args)
        return self.result


async def test_async_function_loads_once_then_hits(memory_cache: Cache) -> None:
    loader = Loader({"id": 5})

    @memory_cache.cached(ttl=60, key="product:{product_id}")
    async def get_product(product_id: int) -> dict[str, int]:
        return loader(product_id)  # type: ignore[no-any-return]

    assert isinstance(get_product, AsyncCachedFunction)
    assert await get_product(5) == {"id": 5}
    assert await get_product(5) == {"id": 5}
    assert await get_product(product_id=5) == {"id": 5}
    assert loader.calls == [(5,)]
    stats = memory_cache.stats()
    assert (stats["misses"], stats["hits"], stats["loads"]) == (1, 2, 1)


def test_sync_function_loads_once_then_hits(memory_cache: Cache) -> None:
    loader = Loader([1, 2])

    @memory_cache.cached(ttl=60)
    def numbers(n: int, scale: int = 1) -> list[int]:
        return loader(n, scale)  # type: ignore[no-any-return]

    assert isinstance(numbers, SyncCachedFunction)
    assert numbers(3) == [1, 2]
    assert numbers(3, 1) == [1, 2]
    assert numbers(n=3, scale=1) == [1, 2]
    assert numbers(3, scale=2) == [1, 2]
    assert loader.calls == [(3, 1), (3, 2)]


def test_entries_expire_after_ttl(memory_cache: Cache, clock: FakeClock) -> None:
    loader = Loader()

    @memory_cache.cached(ttl=60)
    def f() -> str:
        return loader()  # type: ignore[no-any-return]

    f()
    clock.advance(59.9)
    f()
    assert len(loader.calls) == 1
    clock.advance(0.2)
    f()
    assert len(loader.calls) == 2


def test_default_ttl_applies_without_ttl(clock: FakeClock) -> None:
    cache = Cache.from_url("memory://", clock=clock, default_ttl=10, jitter=0)
    loader = Loader()

    @cache.cached()
    def f() -> str:
        return loader()  # type: ignore[no-any-return]

    f()
    clock.advance(9)
    f()
    clock.advance(2)
    f()
    assert len(loader.calls) == 2


def test_none_is_not_cached_by_default(memory_cache: Cache) -> None:
    loader = Loader(None)

    @memory_cache.cached(ttl=60)
    def find(x: int) -> None:
        return loader(x)  # type: ignore[no-any-return]

    assert find(1) is None
    assert find(1) is None
    assert len(loader.calls) == 2


def test_none_is_cached_for_null_ttl(memory_cache: Cache, clock: FakeClock) -> None:
    loader = Loader(None)

    @memory_cache.cached(ttl=60, null_ttl=5)
    def find(x: int) -> None:
        return loader(x)  # type: ignore[no-any-return]

    assert find(1) is None
    assert find(1) is None
    assert len(loader.calls) == 1
    assert memory_cache.stats()["null_hits"] == 1
    clock.advance(5.1)
    assert find(1) is None
    assert len(loader.calls) == 2


async def test_exceptions_are_never_cached(memory_cache: Cache) -> None:
    attempts = 0

    @memory_cache.cached(ttl=60)
    async def flaky() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise LookupError("database hiccup")
        return "ok"

    with pytest.raises(LookupError, match="hiccup"):
        await flaky()
    assert await flaky() == "ok"
    assert await flaky() == "ok"
    assert attempts == 2
    assert memory_cache.stats()["load_errors"] == 1


def test_uncacheable_result_is_returned_uncached_and_warned_once(
    memory_cache: Cache, caplog: pytest.LogCaptureFixture
) -> None:
    loader = Loader()

    class Opaque:
        pass

    @memory_cache.cached(ttl=60)
    def make() -> Opaque:
        loader()
        return Opaque()

    with caplog.at_level(logging.WARNING, logger="cachekit"):
        first, second = make(), make()
    assert isinstance(first, Opaque)
    assert isinstance(second, Opaque)
    assert len(loader.calls) == 2
    assert memory_cache.stats()["uncacheable"] == 2
    warnings = [r for r in caplog.records if "returned uncached" in r.getMessage()]
    assert len(warnings) == 1
    assert "make" in warnings[0].getMessage()


async def test_def_and_async_def_with_one_key_share_entries(memory_cache: Cache) -> None:
    loader = Loader({"id": 7})

    @memory_cache.cached(ttl=60, key="user:{user_id}")
    async def user_async(user_id: int) -> dict[str, int]:
        return loader("async", user_id)  # type: ignore[no-any-return]

    @memory_cache.cached(ttl=60, key="user:{user_id}")
    def user_sync(user_id: int) -> dict[str, int]:
        return loader("sync", user_id)  # type: ignore[no-any-return]

    assert await user_async(7) == {"id": 7}
    assert user_sync(7) == {"id": 7}
    user_sync.invalidate(7)
    assert user_sync(7) == {"id": 7}
    assert await user_async(user_id=7) == {"id": 7}
    assert loader.calls == [("async", 7), ("sync", 7)]


async def test_def_and_async_def_share_entries_on_redis(redis_cache: Cache) -> None:
    @redis_cache.cached(ttl=60, key="item:{n}")
    async def item_async(n: int) -> list[int]:
        return [n, n]

    @redis_cache.cached(ttl=60, key="item:{n}")
    def item_sync(n: int) -> list[int]:
        raise AssertionError("must be served from the entry the async function wrote")

    assert await item_async(3) == [3, 3]
    assert await asyncio.to_thread(item_sync, 3) == [3, 3]


async def test_invalidate_and_refresh_async(memory_cache: Cache) -> None:
    version = 0

    @memory_cache.cached(ttl=60, key="v:{name}")
    async def current(name: str) -> int:
        nonlocal version
        version += 1
        return version

    assert await current("a") == 1
    assert await current("a") == 1
    await current.invalidate("a")
    assert await current("a") == 2
    assert await current.refresh(name="a") == 3
    assert await current("a") == 3


def test_invalidate_and_refresh_sync(memory_cache: Cache) -> None:
    version = 0

    @memory_cache.cached(ttl=60, key="v:{name}")
    def current(name: str) -> int:
        nonlocal version
        version += 1
        return version

    assert current("a") == 1
    current.invalidate(name="a")
    assert current("a") == 2
    assert current.refresh("a") == 3
    assert current("a") == 3
    assert current("b") == 4


def test_wrapped_signature_and_metadata_survive(memory_cache: Cache) -> None:
    def original(product_id: int, *, fields: tuple[str, ...] = ()) -> dict[str, Any]:
        """Load a product."""
        return {}

    wrapped = memory_cache.cached(ttl=1)(original)
    assert inspect.signature(wrapped) == inspect.signature(original)
    assert wrapped.__name__ == "original"  # type: ignore[attr-defined]
    assert wrapped.__doc__ == "Load a product."
    assert wrapped.__wrapped__ is original  # type: ignore[attr-defined]
    assert wrapped.key(5) == f"{__name__}.{original.__qualname__}:5:[]"


def test_bad_template_fails_at_decoration(memory_cache: Cache) -> None:
    with pytest.raises(ConfigurationError, match="must name a parameter"):

        @memory_cache.cached(ttl=1, key="product:{pid}")
        def get_product(product_id: int) -> None: ...


def test_wrong_call_raises_the_functions_type_error(memory_cache: Cache) -> None:
    @memory_cache.cached(ttl=1, key="p:{a}")
    def f(a: int) -> int:
        return a

    with pytest.raises(TypeError):
        f(1, 2)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        f(b=1)  # type: ignore[call-arg]


async def test_declared_cache_raises_not_configured_until_configured() -> None:
    cache = Cache()

    @cache.cached(ttl=60)
    async def f() -> int:
        return 1

    with pytest.raises(NotConfigured, match=r"cache\.configure\("):
        await f()
    cache.configure("memory://")
    assert await f() == 1


async def test_sync_callers_in_threads_and_async_callers_agree(memory_cache: Cache) -> None:
    loader = Loader("shared")

    @memory_cache.cached(ttl=60, key="k")
    def load() -> str:
        return loader()  # type: ignore[no-any-return]

    load()
    results = await asyncio.gather(*(asyncio.to_thread(load) for _ in range(20)))
    assert results == ["shared"] * 20
    assert len(loader.calls) == 1


def test_cache_reads_fail_open_when_redis_is_down(private_redis: Any) -> None:
    cache = Cache.from_url(private_redis.url, prefix="down")
    loader = Loader("from the database")

    @cache.cached(ttl=60)
    def f() -> str:
        return loader()  # type: ignore[no-any-return]

    assert f() == "from the database"
    private_redis.kill()
    assert f() == "from the database"
    assert f() == "from the database"
    stats = cache.stats()
    assert stats["fallbacks"] == 2
    assert stats["write_errors"] == 0  # a failed read means no lease or write is attempted
    assert len(loader.calls) == 3
