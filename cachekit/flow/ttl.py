"""TTL jitter against avalanches: entries written together must not expire together.

Every TTL cachekit writes (values, null markers, stale windows) is spread uniformly by
``± spread`` (0.1 by default: ±10 %), drawn from the cache's injectable random source, so
tests are deterministic and a warm-up of 10,000 keys expires over minutes, not in one
instant.

Usage::

    jittered(60.0, 0.1, rng)   # somewhere in [54, 66]
"""

from __future__ import annotations

import random

__all__ = ["jittered"]


def jittered(seconds: float, spread: float, rng: random.Random) -> float:
    """``seconds`` times a uniform factor in ``[1 - spread, 1 + spread]``.

    Usage::

        ttl = jittered(300, 0.1, random.Random(7))
    """
    if not spread or not seconds:
        return seconds
    return seconds * (1.0 + spread * (2.0 * rng.random() - 1.0))
