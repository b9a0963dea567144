"""Deferred work: each operation is retried by the schedule its flow gave it.

An abandoned lease's release is retried quickly (its waiters wait for it or for the lease
to lapse); a write's retries keep the slow default. The delays asked for are recorded; the
retries themselves run at once, so no test here waits on a clock.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from cachekit.backends.ops import Delete, Op
from cachekit.backends.ops.leases import Release
from cachekit.drivers.deferred import AsyncDeferred, SyncDeferred
from cachekit.exceptions import BackendTimeout
from cachekit.flow.effects import BACKOFF, Later
from cachekit.flow.read import RELEASE_BACKOFF, _abandon
from cachekit.stats import LogOnce, Stats
from tests.support.waiting import eventually, eventually_sync


class Flaky:
    """A backend whose first ``failures`` runs time out; it records what ran."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.ran: list[Op[Any]] = []
        self.done = threading.Event()

    def _run(self, op: Op[Any]) -> Any:
        if self.failures:
            self.failures -= 1
            raise BackendTimeout("test: no reply")
        self.ran.append(op)
        self.done.set()
        return True

    def run(self, op: Op[Any]) -> Any:
        return self._run(op)

    def close(self) -> None:
        return None


class AsyncFlaky(Flaky):
    async def run(self, op: Op[Any]) -> Any:
        return self._run(op)

    async def close(self) -> None:  # type: ignore[override]
        return None


def log() -> LogOnce:
    return LogOnce(logging.getLogger("cachekit.test"))


def test_an_abandoned_lease_is_released_with_the_quick_schedule() -> None:
    flow = _abandon(context_stub(), "p:{k}", ("p:{k}:lease", b"token"))
    later = next(flow)
    assert isinstance(later, Later)
    assert isinstance(later.op, Release)
    assert (later.delay, later.backoff) == (0.0, RELEASE_BACKOFF)
    # Ten tries at most: together they outlast the default lock_ttl (5 s).
    assert sum(RELEASE_BACKOFF[min(n, len(RELEASE_BACKOFF) - 1)] for n in range(1, 10)) > 5.0
    assert Later(Delete(["p:{k}"]), 1.0).backoff == BACKOFF


def test_sync_retries_follow_the_schedule_they_were_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backend = Flaky(failures=3)
    deferred = SyncDeferred(backend, Stats(), log())
    asked: list[float] = []
    real = SyncDeferred.schedule

    def now(
        self: SyncDeferred, op: Op[Any], delay: float, attempt: int = 0, backoff: Any = BACKOFF
    ) -> None:
        asked.append(delay)
        real(self, op, 0.0, attempt, backoff)

    monkeypatch.setattr(SyncDeferred, "schedule", now)
    deferred.schedule(Delete(["p:{k}"]), 0.0, backoff=RELEASE_BACKOFF)
    eventually_sync(backend.done.is_set, "the fourth try lands")
    deferred.close()
    assert asked == [0.0, 0.1, 0.2, 0.4]
    assert len(backend.ran) == 1


async def test_async_retries_follow_the_schedule_they_were_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backend = AsyncFlaky(failures=2)
    stats = Stats()
    deferred = AsyncDeferred(backend, stats, log())
    asked: list[float] = []
    real = AsyncDeferred.schedule

    def now(
        self: AsyncDeferred, op: Op[Any], delay: float, attempt: int = 0, backoff: Any = BACKOFF
    ) -> None:
        asked.append(delay)
        real(self, op, 0.0, attempt, backoff)

    monkeypatch.setattr(AsyncDeferred, "schedule", now)
    deferred.schedule(Delete(["p:{k}"]), 0.0)  # a write: the default, slow schedule
    await eventually(backend.done.is_set, "the third try lands")
    await deferred.close()
    assert asked == [0.0, BACKOFF[1], BACKOFF[2]]
    assert stats.snapshot()["deferred_retries"] == 2


def context_stub() -> Any:
    """The one field ``_abandon`` reads."""

    class Ctx:
        channel = "p:notify"

    return Ctx()
