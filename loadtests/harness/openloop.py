"""An open-loop load generator: requests start at a fixed arrival rate, whatever happens.

A closed-loop client (N workers, each sending its next request when the previous one
answered) slows down when the system under test slows down, so it hides exactly the
moments a cache protection is about: the spike after a hot key expires is met with fewer
requests, and the latency figures omit the requests that never got sent ("coordinated
omission"). Here request ``i`` is *due* at ``i / rate`` seconds after the start and is
started then (or as soon as the event loop gets to it), independently of how many
requests are still in flight. Its latency runs from the moment it was due, not from the
moment it actually started, so a generator that fell behind shows up in the figures
instead of flattering them; how far behind it fell is recorded too (``start_lag``).

Every request is bounded by ``request_timeout`` (counted as the error ``timeout``); at most
``max_in_flight`` run at once, and a request due while that many are running is not sent
and counted as the error ``dropped`` (a real client would have given up too).

Usage::

    async def request(i: int) -> None:
        await get_product(ids[i])

    trace = await open_loop(request, rate=400, duration=10, request_timeout=5)
    trace.requests, trace.errors, trace.percentile_ms(99)
    trace.completions(width=0.5)      # requests finished per bucket
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from loadtests.harness.tables import percentile

__all__ = ["Sample", "Tick", "Trace", "bucket_counts", "open_loop"]

Request = Callable[[int], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class Sample:
    """One request: when it was due (s from the start), how long it took (s), its error."""

    due: float
    latency: float
    error: str | None


@dataclass(frozen=True, slots=True)
class Tick:
    """Running counts, handed to the ``on_tick`` callback every ``tick_every`` seconds."""

    elapsed: float
    sent: int
    done: int
    errors: int
    in_flight: int


@dataclass
class Trace:
    """Everything one open-loop run recorded."""

    rate: float
    duration: float
    origin: float  # the loop time of "due 0": time series of the run are relative to it
    samples: list[Sample] = field(default_factory=list)
    start_lag: list[float] = field(default_factory=list)  # actual start - due, seconds

    @property
    def requests(self) -> int:
        return len(self.samples)

    @property
    def errors(self) -> Counter[str]:
        return Counter(s.error for s in self.samples if s.error is not None)

    def latencies_ms(self, since: float = -math.inf, until: float = math.inf) -> list[float]:
        """Latencies (ms) of the successful requests due in ``[since, until)``."""
        return [
            s.latency * 1000 for s in self.samples if s.error is None and since <= s.due < until
        ]

    def percentile_ms(self, p: float) -> float:
        return percentile(self.latencies_ms(), p)

    def completions(self, width: float) -> list[float]:
        """Requests per second that finished in each bucket of ``width`` seconds."""
        return bucket_counts([s.due + s.latency for s in self.samples], width, self.duration)

    def latency_series(self, width: float, p: float) -> list[float]:
        """The ``p``-th percentile latency (ms) of the requests due in each bucket."""
        buckets: list[list[float]] = [[] for _ in range(max(1, math.ceil(self.duration / width)))]
        for s in self.samples:
            index = int(s.due // width)
            if s.error is None and 0 <= index < len(buckets):
                buckets[index].append(s.latency * 1000)
        return [percentile(b, p) if b else math.nan for b in buckets]


def bucket_counts(instants: Sequence[float], width: float, duration: float) -> list[float]:
    """Events per second in each ``width``-second bucket of ``[0, duration)``.

    ``instants`` are seconds from the start; those outside the window are left out.
    """
    counts = [0.0] * max(1, math.ceil(duration / width))
    for t in instants:
        index = int(t // width)
        if 0 <= index < len(counts):
            counts[index] += 1
    return [c / width for c in counts]


async def open_loop(
    request: Request,
    *,
    rate: float,
    duration: float,
    request_timeout: float,
    max_in_flight: int = 5_000,
    origin: float | None = None,
    on_tick: Callable[[Tick], None] | None = None,
    tick_every: float = 2.0,
) -> Trace:
    """Call ``request(i)`` at ``rate`` per second for ``duration`` seconds; the :class:`Trace`.

    **Parameters:**

    * **request** - called with the request's index; an exception is an error, named by
      its type (by ``str(exc)`` for a ``RuntimeError``: raise one with a short reason,
      such as ``HTTP 500``).
    * **rate** / **duration** - ``round(rate * duration)`` requests, evenly spaced.
    * **request_timeout** - seconds one request may take before it counts as ``timeout``.
    * **max_in_flight** - beyond it a due request is ``dropped`` instead of sent.
    * **origin** - the loop time of the first due instant (default: 50 ms from now), so a
      caller can line other recordings up with the run.
    * **on_tick** - progress callback, every ``tick_every`` seconds while the run lasts.

    Returns after the last request finished (or timed out).
    """
    if rate <= 0 or duration <= 0:
        raise ValueError("rate and duration must be positive")
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05 if origin is None else origin
    trace = Trace(rate=rate, duration=duration, origin=start)
    total = round(rate * duration)
    in_flight: set[asyncio.Task[None]] = set()
    sent = 0

    async def one(index: int, due: float) -> None:
        began = loop.time()
        trace.start_lag.append(began - due)
        error: str | None = None
        try:
            async with asyncio.timeout(request_timeout):
                await request(index)
        except TimeoutError:
            error = "timeout"
        except Exception as exc:
            error = str(exc) if isinstance(exc, RuntimeError) else type(exc).__name__
        trace.samples.append(Sample(due - start, loop.time() - due, error))

    async def ticker() -> None:
        while on_tick is not None:
            await asyncio.sleep(tick_every)
            errors = sum(1 for s in trace.samples if s.error is not None)
            on_tick(Tick(loop.time() - start, sent, len(trace.samples), errors, len(in_flight)))

    ticking = asyncio.create_task(ticker()) if on_tick is not None else None
    try:
        for index in range(total):
            due = start + index / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            sent += 1
            if len(in_flight) >= max_in_flight:
                trace.samples.append(Sample(due - start, 0.0, "dropped"))
                continue
            task = asyncio.create_task(one(index, due))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(set(in_flight))
    finally:
        if ticking is not None:
            ticking.cancel()
        for task in in_flight:
            task.cancel()
    return trace
