"""Helpers for testing code that uses cachekit: a clock you move, a switch, assertions.

Everything here works without pytest; the pytest plugin (:mod:`cachekit.pytest_plugin`,
registered on install) wraps it in fixtures.

Usage::

    from cachekit import Cache
    from cachekit.testing import FakeClock, assert_hits, bypass

    clock = FakeClock()
    cache = Cache.from_url("memory://", clock=clock)
    cache.sync.set("k", 1, ttl=10)
    clock.advance(11)
    assert cache.sync.get("k") is None

    with assert_hits(cache, hits=1, misses=1):
        get_product(5); get_product(5)

    with bypass():
        get_product(5)          # loads, reads and writes nothing
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from cachekit.decorators import BYPASS

if TYPE_CHECKING:
    from cachekit.cache import Cache

__all__ = ["FakeClock", "StatsDelta", "assert_hits", "bypass", "track"]


class FakeClock:
    """A :class:`~cachekit.clock.Clock` that only moves when told to.

    Both readings advance together, so TTLs in the memory backend, logical expiry in
    envelopes and measured load durations all follow the same fake time.

    Usage::

        clock = FakeClock(start=1_700_000_000.0)
        clock.advance(5)
    """

    __slots__ = ("_now", "_origin")

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._origin = start

    def time(self) -> float:
        """The fake wall-clock time."""
        return self._now

    def monotonic(self) -> float:
        """The fake monotonic time (seconds since the clock was made)."""
        return self._now - self._origin

    def advance(self, seconds: float) -> None:
        """Move both readings forward by ``seconds`` (never backwards)."""
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self._now += seconds


@contextmanager
def bypass() -> Iterator[None]:
    """Turn caching off for decorated functions called inside the block.

    Every call loads (runs the function); nothing is read from or written to any cache.
    The switch is a context variable: it covers this thread or task (and tasks it
    starts), never other tests running concurrently.

    Usage::

        with bypass():
            assert get_price(5) == 10      # always the database's answer
    """
    token = BYPASS.set(True)
    try:
        yield
    finally:
        BYPASS.reset(token)


class StatsDelta:
    """How much each counter of a cache moved since :func:`track` began.

    Read counters as attributes (``seen.hits``) or with :meth:`get`; an unknown name is
    an ``AttributeError``.

    Usage::

        with track(cache) as seen:
            get_product(5)
        assert seen.misses == 1 and seen.loads == 1
    """

    __slots__ = ("_before", "_cache", "_frozen")

    def __init__(self, cache: Cache) -> None:
        self._cache = cache
        self._before = cache.stats()
        self._frozen: dict[str, int] | None = None

    def get(self, name: str) -> int:
        """The change of counter ``name`` (frozen when the ``with`` block ended)."""
        now = self._frozen if self._frozen is not None else self._cache.stats()
        if name not in now:
            raise AttributeError(f"cachekit has no counter {name!r}; known: {sorted(now)}")
        return now[name] - self._before.get(name, 0)

    def __getattr__(self, name: str) -> int:
        if name.startswith("_"):
            raise AttributeError(name)
        return self.get(name)

    def changed(self) -> dict[str, int]:
        """Every counter that moved, and by how much."""
        now = self._frozen if self._frozen is not None else self._cache.stats()
        return {
            k: v - self._before.get(k, 0) for k, v in now.items() if v != self._before.get(k, 0)
        }

    def freeze(self) -> None:
        """Stop following the cache: later calls no longer count."""
        self._frozen = self._cache.stats()

    def __repr__(self) -> str:
        return f"<StatsDelta {self.changed()}>"


@contextmanager
def track(cache: Cache) -> Iterator[StatsDelta]:
    """Count what the calls inside the block did to ``cache``'s counters.

    Usage::

        with track(cache) as seen:
            await get_product(5)
        assert seen.hits == 1
    """
    delta = StatsDelta(cache)
    try:
        yield delta
    finally:
        delta.freeze()


@contextmanager
def assert_hits(
    cache: Cache, *, hits: int | None = None, misses: int | None = None
) -> Iterator[StatsDelta]:
    """Fail unless the block made exactly ``hits`` cache hits and ``misses`` misses.

    A hit counts fresh, stale and null hits (all answered from the cache); leave a count
    ``None`` to not check it. The message lists every counter that moved.

    Usage::

        with assert_hits(cache, hits=0, misses=1):
            get_product(5)              # the first call loads
        with assert_hits(cache, hits=1, misses=0):
            get_product(5)              # the second is a hit
    """
    with track(cache) as seen:
        yield seen
    answered = seen.hits + seen.stale_hits + seen.null_hits
    wrong = []
    if hits is not None and answered != hits:
        wrong.append(f"{answered} hit(s), expected {hits}")
    if misses is not None and seen.misses != misses:
        wrong.append(f"{seen.misses} miss(es), expected {misses}")
    if wrong:
        raise AssertionError(f"cachekit: {' and '.join(wrong)}; counters moved: {seen.changed()}")
