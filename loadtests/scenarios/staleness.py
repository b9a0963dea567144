"""Stale-read bookkeeping of the consistency scenario: who read what, when writes landed.

A read is *stale* when it returned a version older than one whose write (commit and cache
work) had completed before the read began; its staleness is by how much time. This is
the definition of the ``consistency`` benchmark (:mod:`loadtests.benchmarks.consistency`);
here every timestamp comes from one event loop's clock.

Usage::

    log = Log()
    log.write(row=3, version=7, at=loop.time())     # a write completed
    log.reads.append((3, 6, started))               # a read of row 3 returned version 6
    count, worst, when = log.stale()
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field

__all__ = ["ZIPF", "Log", "cumulative", "zipf_rows"]

ZIPF = 1.0  # row k is picked with weight 1 / k ** ZIPF


@dataclass
class Log:
    """What readers saw and when writes completed, to find stale reads afterwards."""

    reads: list[tuple[int, int, float]] = field(default_factory=list)  # row, version, start
    done: dict[int, list[tuple[int, float]]] = field(default_factory=dict)  # row: (v, at)

    def write(self, row: int, version: int, at: float) -> None:
        self.done.setdefault(row, []).append((version, at))

    def stale(self) -> tuple[int, float, list[float]]:
        """Stale reads, the largest staleness (s), and when each stale read began."""
        first_newer: dict[int, tuple[list[int], list[float]]] = {}
        for row, writes in self.done.items():
            ordered = sorted(writes)
            versions = [v for v, _ in ordered]
            # suffix minimum: the earliest completion of any version >= versions[i]
            mins: list[float] = []
            best = float("inf")
            for _, at in reversed(ordered):
                best = min(best, at)
                mins.append(best)
            first_newer[row] = (versions, mins[::-1])
        count, worst, when = 0, 0.0, []
        for row, version, start in self.reads:
            if row not in first_newer:
                continue
            versions, mins = first_newer[row]
            i = bisect.bisect_right(versions, version)
            if i < len(versions) and mins[i] < start:
                count += 1
                worst = max(worst, start - mins[i])
                when.append(start)
        return count, worst, when


def zipf_rows(rng: random.Random, rows: int, n: int) -> list[int]:
    """``n`` row numbers, row ``k`` with weight ``1 / k ** ZIPF``."""
    weights = [1 / (k + 1) ** ZIPF for k in range(rows)]
    return rng.choices(range(rows), weights=weights, k=n)


def cumulative(instants: list[float], width: float, duration: float) -> list[float]:
    """How many of ``instants`` fell before the end of each bucket."""
    buckets = max(1, int(duration / width + 0.5))
    ordered = sorted(instants)
    return [float(bisect.bisect_right(ordered, (i + 1) * width)) for i in range(buckets)]
