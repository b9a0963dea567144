"""Counters: exact under threads, whatever the interpreter's switching does."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

import pytest

from cachekit.stats import COUNTERS, Stats


@pytest.fixture
def eager_switching() -> Iterator[None]:
    """Threads switch as often as the interpreter allows, to provoke lost updates."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


@pytest.mark.usefixtures("eager_switching")
def test_no_increment_is_lost_across_threads() -> None:
    stats = Stats()
    per_thread, threads = 20_000, 8

    def bump() -> None:
        for _ in range(per_thread):
            stats.incr("hits")
            stats.incr("misses", 2)

    workers = [threading.Thread(target=bump) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    counts = stats.snapshot()
    assert counts["hits"] == per_thread * threads
    assert counts["misses"] == 2 * per_thread * threads


def test_a_snapshot_has_every_counter_and_is_a_copy() -> None:
    stats = Stats()
    stats.incr("hits")
    snapshot = stats.snapshot()
    assert set(snapshot) == set(COUNTERS)
    snapshot["hits"] = 100
    assert stats.snapshot()["hits"] == 1
