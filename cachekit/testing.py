"""Helpers for testing code that uses cachekit: a clock you move by hand.

Usage::

    from cachekit import Cache
    from cachekit.testing import FakeClock

    clock = FakeClock()
    cache = Cache.from_url("memory://", clock=clock)
    cache.sync.set("k", 1, ttl=10)
    clock.advance(11)
    assert cache.sync.get("k") is None
"""

from __future__ import annotations

__all__ = ["FakeClock"]


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
