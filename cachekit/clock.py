"""Time as a dependency: the decision logic never calls :mod:`time` itself.

Tests inject :class:`cachekit.testing.FakeClock`; production uses :data:`SYSTEM_CLOCK`.

Usage::

    from cachekit.clock import SYSTEM_CLOCK
    started = SYSTEM_CLOCK.monotonic()
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]


class Clock(Protocol):
    """Where cachekit reads the time.

    ``time()`` is wall-clock seconds since the epoch: envelopes store it, so every process
    of a fleet must agree on it. ``monotonic()`` measures durations (load times, waits).
    """

    def time(self) -> float:
        """Seconds since the epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary, never decreasing origin."""
        ...


class SystemClock:
    """The real clocks of :mod:`time`.

    Usage::

        cache = Cache.from_url("memory://", clock=SystemClock())
    """

    __slots__ = ()

    def time(self) -> float:
        """Seconds since the epoch (``time.time``)."""
        return time.time()

    def monotonic(self) -> float:
        """Monotonic seconds (``time.monotonic``)."""
        return time.monotonic()


SYSTEM_CLOCK = SystemClock()
