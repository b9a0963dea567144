"""Redis outage: the outage benchmark (``python -m loadtests outage``), read as arms.

``loadtests/benchmarks/outage.py`` is the outage benchmark of this repository: an open-loop
load over a few hot keys on a private server that is SIGKILLed and restarted empty, with
cachekit (deadlines, circuit breaker, reads failing open through in-process single
flight), a hand-written cache-aside that turns Redis errors into misses (no single
flight, no breaker) and cashews. The suite runs it in-process (its ``--quick`` phases in
a quick run) into a temporary directory, copies its chart to ``results/outage-bench.png``
(the benchmark's own ``results/outage.json`` and ``outage.png`` are left alone), keeps
its JSON in ``report.json`` and turns its per-phase table (before, during, after the
outage) into arms: one row per contender and phase.
"""

from __future__ import annotations

import contextlib
import io
import math
import shutil
import tempfile
import time
from pathlib import Path

from loadtests.benchmarks import outage
from loadtests.harness.outcome import Arm, Context, Headline, Role, ScenarioResult, fold, number
from loadtests.harness.servers import server_binary
from loadtests.harness.tables import error_summary

__all__ = ["NAME", "run"]

NAME = "outage"
ROLES_BY_NAME: dict[str, Role] = {"cachekit": "on", "naive": "off", "cashews": "peer"}
IMAGE = "outage-bench.png"  # the chart the benchmark drew in this run, in results/


async def run(ctx: Context) -> ScenarioResult:
    """Run the outage benchmark (its ``--quick`` phases in a quick run); arms from its runs."""
    began = time.monotonic()
    phases = outage.QUICK if ctx.settings.quick else (5.0, 5.0, 8.0)
    s = outage.Settings(
        rate=500.0, keys=10, ttl=300.0, db_ms=50.0, db_pool=0, before=phases[0],
        during=phases[1], after=phases[2], bucket_ms=250.0,
        contenders=tuple(ROLES_BY_NAME), binary=server_binary("auto"), fault="kill",
    )  # fmt: skip
    ctx.progress.say(NAME, "running the outage benchmark (python -m loadtests outage)")
    with tempfile.TemporaryDirectory(prefix="loadtest-outage-") as tmp:
        # Its own table goes nowhere: the suite reports the same figures as arms.
        with contextlib.redirect_stdout(io.StringIO()):
            runs, data = await outage.measure(s, Path(tmp))
        shutil.copyfile(Path(tmp) / "outage.png", ctx.settings.out_dir / IMAGE)
    result = ScenarioResult(
        NAME,
        "Redis outage: the cache server dies under load",
        f"`python -m loadtests outage`: {s.rate:g} calls/s (open loop) over {s.keys} hot "
        f"keys, a database taking {s.db_ms:g} ms per query; each contender on a private "
        f"server that is SIGKILLed after {s.before:g} s and restarted empty "
        f"{s.during:g} s later, then {s.after:g} s more (its chart of this "
        "run below; its JSON in `report.json`).",
        setup=[
            "on: cachekit `@cache.cached` with its defaults (0.25 s per Redis operation, "
            "circuit breaker: 5 failures, 2 s cool-down; reads fail open through in-process "
            "single flight); off: hand-written cache-aside, Redis errors caught and turned "
            "into misses, same timeouts, no single flight, no breaker; peer: cashews "
            "`@cache` (errors suppressed, concurrent calls coalesced per process)",
            "one row per contender and phase; latency from each call's scheduled start; "
            "recovered after: from the restart to the last database query",
        ],
        extra_columns=["calls/s", "DB queries/s", "max ms", "recovered after s"],
        images=[IMAGE],
    )
    for r in runs:
        if r.error is not None:
            result.notes.append(f"{outage.LABELS[r.name]} failed: {r.error}")
            continue
        for phase, seconds in zip(outage.PHASES, phases, strict=True):
            f = outage.phase_figures(r, phase, s)
            arm = Arm("library", ROLES_BY_NAME[r.name], f"{outage.LABELS[r.name]} · {phase}")
            arm.requests, arm.seconds, arm.rounds = f["calls"], seconds, 1
            arm.errors.update(error_summary(e) for e in f["errors"])
            arm.db_queries = arm.loader_calls = f["queries"]  # one query per load
            arm.quantiles = f["latency_ms"]
            arm.extra = {"calls/s": f["calls_per_s"], "DB queries/s": f["queries_per_s"]}
            arm.extra["max ms"] = f["latency_ms"][100]
            if f["recovered_s"] is not None:
                arm.extra["recovered after s"] = f["recovered_s"]
            if phase == "during":
                arm.counters.update({k: v for k, v in r.stats.items() if v})  # the whole run
            result.arms.append(arm)
    result.raw["bench_outage"] = data
    summarize(result)
    result.seconds = time.monotonic() - began
    return result


def summarize(result: ScenarioResult) -> None:
    """Headline (database queries per second during the outage), verdict and notes."""
    during = {a.role: a for a in result.arms if a.label.endswith("· during")}
    after = {a.role: a for a in result.arms if a.label.endswith("· after")}
    head = Headline("DB queries/s while Redis is down", "lower", digits=0)
    for role, arm in during.items():
        head.values[("library", role)] = float(arm.extra.get("DB queries/s", math.nan))
    result.headline = head
    if not {"on", "off"} <= during.keys():
        result.verdict = "incomplete: a contender failed (see the notes)"
        return
    qps = {role: float(arm.extra.get("DB queries/s", math.nan)) for role, arm in during.items()}
    errs = {role: arm.error_count for role, arm in during.items()}
    text = (
        f"{number(qps['on'])} database queries/s while Redis was down vs {number(qps['off'])} "
        f"for hand-written cache-aside ({fold(qps['on'], qps['off'])})"
        + (
            f" and {number(qps['peer'])} for cashews"
            + (" (it coalesces per process too)" if qps["peer"] <= qps["on"] * 1.1 else "")
            if "peer" in qps
            else ""
        )
        + f"; errors {errs['on']} / {errs['off']}"
        + (f" / {errs['peer']}" if "peer" in errs else "")
    )
    result.verdict = text if qps["on"] < qps["off"] else "NOT better: " + text
    recovered = {r: float(a.extra.get("recovered after s", math.nan)) for r, a in after.items()}
    rivals = [v for r, v in recovered.items() if r != "on" and not math.isnan(v)]
    if "on" in recovered and rivals and recovered["on"] > max(rivals):
        others = ", ".join(f"{r} {v:.2f} s" for r, v in recovered.items() if r != "on")
        result.notes.append(
            f"cachekit took {recovered['on']:.2f} s after the restart to stop loading from "
            f"the database ({others}): its circuit breaker, opened while Redis was dead, "
            "tries Redis again only after its cool-down (2 s by default); until then every "
            "read is a load (coalesced per key)."
        )
