"""Progress lines on stderr while the suite runs: where it is, how long it has run, counts.

Every line starts with the suite's elapsed time and the position (scenario, level, arm,
phase), so a person watching a ten-minute run can tell it is alive and roughly how each
arm is doing before the report exists.

Usage::

    progress = Progress()
    progress.say("penetration · library · on", "warming up")
    trace = await open_loop(..., on_tick=progress.ticker("penetration · library · on",
                                                         lambda: {"db": db.queries}))
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import TextIO

from loadtests.harness.openloop import Tick

__all__ = ["LogLines", "Progress", "clock"]


def clock(seconds: float) -> str:
    """``seconds`` as ``m:ss`` (or ``h:mm:ss``)."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Writes progress lines, each stamped with the time since the suite began."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.began = time.monotonic()
        self.stream = stream if stream is not None else sys.stderr

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.began

    def say(self, where: str, message: str) -> None:
        """One line: ``[m:ss] where: message``."""
        print(f"[{clock(self.elapsed)}] {where}: {message}", file=self.stream, flush=True)

    def ticker(
        self, where: str, counts: Callable[[], Mapping[str, int]] | None = None
    ) -> Callable[[Tick], None]:
        """An ``on_tick`` callback for :func:`openloop.open_loop` printing running counts.

        ``counts`` adds the scenario's own running counts (database queries, loads).
        """

        def tick(t: Tick) -> None:
            extra = "".join(f", {k} {v:,}" for k, v in (counts() if counts else {}).items())
            self.say(
                where,
                f"t={t.elapsed:4.1f}s sent {t.sent:,}, done {t.done:,}, errors {t.errors:,}, "
                f"in flight {t.in_flight:,}{extra}",
            )

        return tick


class LogLines(logging.Handler):
    """Library log records as progress lines: first line only, each kind a few times.

    cachekit logs a breaker opening once; cashews logs a full traceback for every Redis
    error it suppresses, hundreds a second during an outage. Here each (logger, message
    template) is shown ``limit`` times, without tracebacks; the rest are only counted.
    """

    def __init__(self, progress: Progress, limit: int = 3) -> None:
        super().__init__(logging.WARNING)
        self.progress = progress
        self.limit = limit
        self.seen: Counter[tuple[str, str]] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        kind = (record.name, str(record.msg))
        self.seen[kind] += 1
        if self.seen[kind] <= self.limit:
            first = (record.getMessage().splitlines() or [kind[1]])[0]
            first = first.removeprefix(f"{record.name}: ")
            more = " (further ones counted only)" if self.seen[kind] == self.limit else ""
            self.progress.say(f"  log {record.name}", first[:200] + more)

    @property
    def hidden(self) -> int:
        return sum(max(0, n - self.limit) for n in self.seen.values())
