"""The pytest plugin users get with cachekit: run as users run it, through ``pytester``."""

from __future__ import annotations

import pytest

from cachekit import Cache
from cachekit.testing import FakeClock, assert_hits, bypass, track

pytest_plugins = ["pytester"]


@pytest.fixture
def plugin_args(request: pytest.FixtureRequest, pytester: pytest.Pytester) -> list[str]:
    """Load the plugin by name unless the installed entry point already did."""
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    if request.config.pluginmanager.has_plugin("cachekit"):
        return []
    return ["-p", "cachekit.pytest_plugin"]


def test_the_plugin_is_registered_by_its_entry_point() -> None:
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group="pytest11") if ep.value == "cachekit.pytest_plugin"]
    assert [ep.name for ep in found] == ["cachekit"]


def test_memory_cache_clock_and_assertions(
    pytester: pytest.Pytester, plugin_args: list[str]
) -> None:
    pytester.makepyfile(
        """
        from cachekit.testing import assert_hits, track

        calls = []

        def test_hit_then_expiry(cachekit_memory, cachekit_clock):
            @cachekit_memory.cached(ttl=10, key="price:{sku}")
            def price(sku: str) -> int:
                calls.append(sku)
                return 42

            with assert_hits(cachekit_memory, hits=0, misses=1):
                assert price("a") == 42
            with assert_hits(cachekit_memory, hits=1, misses=0):
                assert price("a") == 42
            cachekit_clock.advance(11)
            with track(cachekit_memory) as seen:
                price("a")
            assert seen.misses == 1 and seen.loads == 1
            assert calls == ["a", "a"]

        def test_each_test_gets_a_fresh_cache(cachekit_memory):
            assert cachekit_memory.sync.get("price:a") is None
            assert cachekit_memory.stats()["hits"] == 0
        """
    )
    result = pytester.runpytest(*plugin_args)
    result.assert_outcomes(passed=2)


def test_assert_hits_failure_names_the_counters(
    pytester: pytest.Pytester, plugin_args: list[str]
) -> None:
    pytester.makepyfile(
        """
        from cachekit.testing import assert_hits

        def test_expected_a_hit(cachekit_memory):
            @cachekit_memory.cached(ttl=10)
            def one() -> int:
                return 1

            with assert_hits(cachekit_memory, hits=1):
                one()
        """
    )
    result = pytester.runpytest(*plugin_args)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*cachekit: 0 hit(s), expected 1; counters moved:*misses*"])


def test_bypass_fixture_and_marker(pytester: pytest.Pytester, plugin_args: list[str]) -> None:
    pytester.makepyfile(
        """
        import pytest

        def make(cache, calls):
            @cache.cached(ttl=60, key="k")
            async def value() -> int:
                calls.append(1)
                return len(calls)
            return value

        async def test_fixture(cachekit_memory, cachekit_bypass):
            calls = []
            value = make(cachekit_memory, calls)
            assert [await value(), await value()] == [1, 2]
            assert cachekit_memory.sync.get("k") is None

        @pytest.mark.cachekit_bypass
        async def test_marker(cachekit_memory):
            calls = []
            value = make(cachekit_memory, calls)
            assert [await value(), await value()] == [1, 2]

        async def test_without(cachekit_memory):
            calls = []
            value = make(cachekit_memory, calls)
            assert [await value(), await value()] == [1, 1]
        """
    )
    result = pytester.runpytest(*plugin_args, "--strict-markers")
    result.assert_outcomes(passed=3)


def test_redis_fixture_isolates_each_test(
    pytester: pytest.Pytester,
    plugin_args: list[str],
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``cachekit_redis`` on the server named by CACHEKIT_REDIS_URL: a prefix per test."""
    pytester.makepyfile(
        """
        import redis

        def test_write(cachekit_redis, cachekit_redis_url):
            cachekit_redis.sync.set("shared-name", 1)
            assert cachekit_redis.sync.get("shared-name") == 1

        def test_read(cachekit_redis):
            assert cachekit_redis.sync.get("shared-name") is None
        """
    )
    monkeypatch.setenv("CACHEKIT_REDIS_URL", redis_url)
    result = pytester.runpytest(*plugin_args, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_redis_fixture_closes_the_async_face_of_every_loop(
    pytester: pytest.Pytester,
    plugin_args: list[str],
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``cachekit_redis`` in async tests (a loop per test), in ``asyncio.run`` and on a loop
    closed by hand: every client is closed, none is left for the collector to warn about."""
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
        "filterwarnings = error\n"
    )
    pytester.makepyfile(
        """
        import asyncio, gc
        from cachekit import Cache

        async def test_on_pytest_asyncio_loop(cachekit_redis):
            await cachekit_redis.set("k", 1)
            assert await cachekit_redis.get("k") == 1

        def test_in_asyncio_runs(cachekit_redis):
            asyncio.run(cachekit_redis.set("k", 2))
            assert asyncio.run(cachekit_redis.get("k")) == 2

        def test_on_a_loop_closed_by_hand(cachekit_redis):
            loop = asyncio.new_event_loop()
            loop.run_until_complete(cachekit_redis.set("k", 3))
            loop.close()  # no shutdown_asyncgens: the fixture releases the client

        def test_nothing_was_left_behind():
            Cache.from_url("memory://")  # the integrations' default cache: not the last one
            gc.collect()
        """
    )
    monkeypatch.setenv("CACHEKIT_REDIS_URL", redis_url)
    result = pytester.runpytest(*plugin_args, "-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(passed=4)


@pytest.mark.slow
def test_redis_fixture_starts_an_embedded_server(
    pytester: pytest.Pytester, plugin_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without CACHEKIT_REDIS_URL the session gets an embedded Valkey, stopped at the end."""
    pytester.makepyfile(
        """
        import redis

        def test_on_the_embedded_server(cachekit_redis, cachekit_redis_url):
            assert "127.0.0.1" in cachekit_redis_url or "localhost" in cachekit_redis_url
            cachekit_redis.sync.set("k", {"v": 1})
            assert cachekit_redis.sync.get("k") == {"v": 1}
        """
    )
    monkeypatch.delenv("CACHEKIT_REDIS_URL", raising=False)
    result = pytester.runpytest_subprocess(*plugin_args)
    result.assert_outcomes(passed=1)


# The helpers themselves, without pytest's machinery.


def test_track_follows_until_the_block_ends() -> None:
    cache = Cache.from_url("memory://", clock=FakeClock())
    cache.sync.set("k", 1)
    with track(cache) as seen:
        cache.sync.get("k")
    cache.sync.get("k")  # after the block: not counted
    assert seen.hits == 1
    assert seen.changed() == {"hits": 1}
    with pytest.raises(AttributeError, match="no counter 'hist'"):
        _ = seen.hist


def test_assert_hits_counts_stale_and_null_hits_as_hits() -> None:
    clock = FakeClock()
    cache = Cache.from_url("memory://", clock=clock, jitter=0)

    @cache.cached(ttl=10, stale=60, null_ttl=60, key="n:{n}")
    def maybe(n: int) -> int | None:
        return None if n == 0 else n

    maybe(0)
    maybe(1)
    clock.advance(11)
    with assert_hits(cache, hits=2, misses=0):
        maybe(0)  # a cached None
        maybe(1)  # stale, rebuilt in the background
    with pytest.raises(AssertionError, match="expected 5"), assert_hits(cache, hits=5):
        maybe(1)


def test_bypass_is_local_to_its_context() -> None:
    cache = Cache.from_url("memory://")
    calls: list[int] = []

    @cache.cached(ttl=60, key="x")
    def value() -> int:
        calls.append(1)
        return 7

    with bypass():
        value()
        value()
    value()
    value()
    assert len(calls) == 3  # two bypassed loads, then one miss and one hit
