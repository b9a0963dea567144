"""Render ``report.json`` as ``REPORT.md``, ``SUMMARY.md`` and PNG charts.

Everything is drawn from the JSON alone (never from live objects), so ``--only`` can
replace one scenario in an existing ``report.json`` and render the whole report again,
and anyone can re-render a report from its raw figures.

* ``SUMMARY.md`` - one row per scenario: its key metric with the protection on, off and
  for the peer (library level, then demo level), and the verdict. docs/benchmarks.md embeds it.
* ``REPORT.md`` - how the run was made, the summary, then a section per scenario: what it
  does, its parameters, a table of every arm (database queries, loader calls, p50 and p99
  latency, errors, and the scenario's own columns), its charts, verdict and notes.
* charts - per chart, one row per panel (a time series such as database queries per
  second) and one column per level; the arms are lines (on green, off red, peer blue).

Usage::

    render(json.loads(Path("loadtests/results/report.json").read_text()), out_dir)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: files only

import matplotlib.pyplot as plt
from matplotlib import ticker

from loadtests.harness.tables import markdown_table

__all__ = ["render", "summary_rows"]

COLORS = {"on": "#2a9d47", "off": "#d62828", "peer": "#1f6fb4"}
STYLES = {"on": "-", "off": "--", "peer": "-."}  # overlapping lines stay visible
ROLE_NAMES = {"on": "protection on", "off": "protection off", "peer": "peer (cashews)"}
LEVEL_TITLES = {"library": "library level", "demo": "demo app (HTTP)"}
BASE_COLUMNS = ("level", "arm")  # left-aligned in the tables


def _cell(headline: dict[str, Any] | None, role: str) -> str:
    if headline is None:
        return "-"
    values = headline["values"]
    digits = int(headline.get("digits", 0))
    parts = []
    for level in ("library", "demo"):
        value = values.get(f"{level}/{role}")
        if value is None:
            continue
        shown = f"{value:,.{digits}f}"
        parts.append(shown if level == "library" else f"{shown} (demo)")
    return " / ".join(parts) or "-"


def summary_rows(data: dict[str, Any]) -> list[dict[str, str]]:
    """The summary table's rows, one per scenario."""
    rows = []
    for sc in data["scenarios"]:
        if sc.get("error"):
            rows.append(
                {
                    "scenario": sc["name"],
                    "key metric": "-",
                    "protection on": "-",
                    "protection off": "-",
                    "peer (cashews)": "-",
                    "verdict": "FAILED (see its section)",
                }
            )
            continue
        head = sc.get("headline")
        rows.append(
            {
                "scenario": sc["title"].split(":")[0],
                "key metric": head["metric"] if head else "-",
                "protection on": _cell(head, "on"),
                "protection off": _cell(head, "off"),
                "peer (cashews)": _cell(head, "peer"),
                "verdict": sc.get("verdict") or "-",
            }
        )
    return rows


def summary_table(data: dict[str, Any]) -> str:
    return markdown_table(summary_rows(data), {"scenario", "key metric", "verdict"})


def _arm_row(arm: dict[str, Any], extra_columns: Sequence[str]) -> dict[str, str]:
    lat = arm["latency_ms"]
    errors = arm["errors"]
    cells = {
        "level": arm["level"],
        "arm": f"{arm['role']}: {arm['label']}",
        "requests": f"{arm['requests']:,}",
        "DB queries": f"{arm['db_queries']:,}",
        "loader calls": "-" if arm["loader_calls"] is None else f"{arm['loader_calls']:,}",
        "p50 ms": _ms(lat["p50"]),
        "p99 ms": _ms(lat["p99"]),
        "errors": ", ".join(
            f"{n:,} {name}" for name, n in sorted(errors.items(), key=lambda kv: -kv[1])[:3]
        )
        or "0",
    }
    for name in extra_columns:
        value = arm["extra"].get(name)
        if value is None:
            cells[name] = "-"
        elif isinstance(value, str):
            cells[name] = value
        elif isinstance(value, int):
            cells[name] = f"{value:,}"
        else:  # three significant digits or so, whatever the size
            digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
            cells[name] = f"{value:,.{digits}f}"
    return cells


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.1f}" if value < 1000 else f"{value:,.0f}"


def draw_chart(chart: dict[str, Any], arms: list[dict[str, Any]], out: Path) -> bool:
    """Draw ``chart`` from the arms' series into ``out / chart["file"]``; whether it did."""
    panels = chart["panels"]
    levels = [
        level
        for level in ("library", "demo")
        if any(a["level"] == level and a["series"] for a in arms)
    ]
    if not panels or not levels:
        return False
    fig, axes = plt.subplots(
        len(panels),
        len(levels),
        figsize=(6.2 * len(levels), 3.3 * len(panels) + 0.6),
        squeeze=False,
    )
    for row, panel in enumerate(panels):
        for col, level in enumerate(levels):
            ax = axes[row][col]
            drawn = False
            for arm in arms:
                series = arm["series"].get(panel["series"])
                if arm["level"] != level or not series:
                    continue
                width = series["bucket_s"]
                values = [math.nan if v is None else v for v in series["values"]]
                xs = [(i + 0.5) * width for i in range(len(values))]
                ax.plot(
                    xs,
                    values,
                    STYLES.get(arm["role"], "-"),
                    color=COLORS.get(arm["role"], "black"),
                    label=f"{arm['role']}: {arm['label']}",
                    linewidth=1.6,
                    drawstyle="steps-mid",  # bucketed data: a value holds for its bucket
                )
                drawn = True
            for start, end in panel["shade"]:
                ax.axvspan(start, end, color="0.85", zorder=0)
            for mark in panel["marks"]:
                ax.axvline(mark, color="0.45", linestyle=":", linewidth=1)
            if not panel["log"]:
                ax.set_ylim(bottom=0)  # counts and rates: zero is the floor
            if panel["log"]:
                ax.set_yscale("log")
                ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
                ax.yaxis.set_minor_formatter(ticker.NullFormatter())
            ax.set_xlabel("seconds into the round")
            ax.set_ylabel(panel["ylabel"])
            notes = [
                text
                for text, used in (
                    (panel["mark_label"], panel["marks"]),
                    (panel["shade_label"], panel["shade"]),
                )
                if text and used
            ]
            ax.set_title(" - ".join([LEVEL_TITLES[level], *notes]), fontsize=10)
            ax.grid(alpha=0.3)
            if drawn:
                ax.legend(fontsize=7, loc="best")
    fig.suptitle(chart["title"], fontsize=11)
    fig.tight_layout()
    fig.savefig(out / chart["file"], dpi=110)
    plt.close(fig)
    return True


def render(data: dict[str, Any], out: Path) -> list[str]:
    """Write ``REPORT.md``, ``SUMMARY.md`` and every chart into ``out``; the file names."""
    written = []
    images: dict[str, list[str]] = {}
    for sc in data["scenarios"]:
        names = [c["file"] for c in sc.get("charts", []) if draw_chart(c, sc["arms"], out)]
        names += [img for img in sc.get("images", []) if (out / img).exists()]
        images[sc["name"]] = names
        written += names
    (out / "SUMMARY.md").write_text(summary_table(data) + "\n")
    (out / "REPORT.md").write_text(report_markdown(data, images))
    return ["REPORT.md", "SUMMARY.md", "report.json", *written]


def report_markdown(data: dict[str, Any], images: dict[str, list[str]]) -> str:
    """The text of ``REPORT.md``."""
    env = data["environment"]
    # The header describes the last full run; "--only" runs are listed after it.
    full = data.get("full_run") or {
        **data["settings"],
        "at": data["generated"],
        "mode": data["mode"],
        "elapsed_s": data["elapsed_s"],
    }
    lines = [
        "# cachekit load tests",
        "",
        "Generated by `python -m loadtests` (do not edit: run it again). "
        f"Last full run: {full['at']}, {full['mode']} mode, {full.get('rounds', '?')} round(s) "
        f"of {full.get('seconds_per_arm', '?')} s per arm, {full['elapsed_s'] / 60:.1f} min.",
    ]
    if data.get("partial_runs"):
        runs = "; ".join(
            f"{', '.join(p['scenarios'])} at {p['at']} ({p['mode']})" for p in data["partial_runs"]
        )
        lines += ["", f"Re-run on their own since: {runs}."]
    lines += [
        "",
        "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()) + ".",
        "",
        "**Read the numbers as comparisons within this run, not as absolute figures.** "
        "The machine has 2 cores and was shared with other work while this ran, so "
        "latencies and rates move from run to run. Every arm of a scenario runs the same "
        "traffic in the same run, arms alternate in rotating order round by round, and the "
        "counts that matter most (database queries, loader calls, stale reads, lost cart "
        "changes) depend on the protection, not on the machine's speed.",
        "",
        "## Summary",
        "",
        "Key metric per scenario: library level first, then the demo app over HTTP "
        "(marked *demo*); *on* is cachekit with the protection, *off* the same traffic "
        "without it, *peer* cashews 7 where it has the feature.",
        "",
        summary_table(data),
        "",
        "## How the load is generated",
        "",
        "An open-loop generator (`loadtests/openloop.py`) starts requests at a fixed "
        "arrival rate, evenly spaced, whether or not earlier ones have finished, so a slow "
        "moment is met with the full load instead of hiding it. A request's latency runs "
        "from the moment it was *due*, so if the generator itself falls behind, that shows "
        "in the latencies rather than being left out. Requests time out after 5 s "
        "(an error). Library level: one event loop drives a decorated `async def` loader "
        "over a simulated database (`loadtests/simdb.py`): a pool of connections, each "
        "query holding one for a fixed latency, every query counted with its start time. "
        "Demo level: `httpx` against a freshly started `python -m demo_app` per arm "
        "(embedded Valkey, new SQLite file, `DB_LATENCY_MS`), whose `/metrics` gives "
        "`demo_db_queries_total` and `cachekit_loads_total`, sampled every 0.5 s for the "
        "charts. Tables sum (or pool) every round; charts show one round's time line, "
        "averaged bucket by bucket over the rounds.",
        "",
    ]
    for number, sc in enumerate(data["scenarios"], 1):
        lines += scenario_markdown(number, sc, images.get(sc["name"], []), full["at"])
    return "\n".join(lines).rstrip() + "\n"


def scenario_markdown(
    number: int, sc: dict[str, Any], images: list[str], full_at: str
) -> list[str]:
    """The section of one scenario; ``full_at`` is when the last full run was made."""
    lines = [f"## {number}. {sc['title']}", ""]
    if sc.get("error"):
        return [*lines, "The scenario failed:", "", "```", sc["error"], "```", ""]
    lines += [sc["summary"], ""]
    run = sc.get("run")
    if run and run["at"] != full_at:
        lines += [
            f"_This scenario was re-run on its own at {run['at']} ({run['mode']} mode, "
            f"{run['rounds']} round(s) of {run['seconds_per_arm']:g} s)._",
            "",
        ]
    if sc["setup"]:
        lines += [f"- {item}" for item in sc["setup"]] + [""]
    extra = sc.get("extra_columns", [])
    if sc["arms"]:
        rows = [_arm_row(arm, extra) for arm in sc["arms"]]
        lines += [markdown_table(rows, BASE_COLUMNS), ""]
    counted = [a for a in sc["arms"] if a.get("cachekit_counters")]
    if counted:
        lines += [
            "cachekit's own counters during the measured rounds: "
            + "; ".join(
                f"{a['level']} {a['role']}: "
                + ", ".join(f"{k} {v:,}" for k, v in a["cachekit_counters"].items())
                for a in counted
            ),
            "",
        ]
    for image in images:
        lines += [f"![{sc['name']}]({image})", ""]
    if sc.get("verdict"):
        lines += [f"**Verdict:** {sc['verdict']}", ""]
    for note in sc.get("notes", []):
        lines += [f"- {note}"]
    if sc.get("notes"):
        lines.append("")
    for arm in sc["arms"]:
        log = arm["extra"].get("demo log")
        if log:
            lines += [
                f"<details><summary>what the {arm['role']} shop logged</summary>",
                "",
                "```",
                str(log),
                "```",
                "",
                "</details>",
                "",
            ]
    lag = max((a.get("generator_start_lag_p99_ms", 0.0) for a in sc["arms"]), default=0.0)
    if lag > 20:
        lines += [
            f"_The load generator started requests up to {lag:.0f} ms late (p99 of an arm); "
            "those delays are included in the latencies._",
            "",
        ]
    return lines
