"""What a load-test report says: where it ran, percentiles, and its tables.

* the environment of a report: ``package_version``, ``server_version``, ``environment``,
  ``environment_line``;
* summaries: ``percentile``, ``error_summary``;
* contender tables (a list of rows, each a dict of column -> cell; a failed contender's
  row holds only ``contender`` and ``result``): ``text_table``, ``markdown_table``.
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Collection, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import redis.utils

from loadtests.harness.servers import redact

# --------------------------------------------------------------------------- environment


def package_version(name: str) -> str:
    """The installed version of distribution ``name``; ``-`` if it is not installed."""
    try:
        return version(name)
    except PackageNotFoundError:
        return "-"


def server_version(info: Mapping[str, Any]) -> str:
    """``<server name> <version>`` from the ``INFO server`` reply ``info``."""
    name = info.get("server_name", "redis")
    return f"{name} {info.get('valkey_version') or info.get('redis_version')}"


def environment(
    info: Mapping[str, Any],
    url: str,
    *,
    packages: Sequence[str],
    details: Mapping[str, str] | None = None,
    cpus: bool = True,
) -> dict[str, str]:
    """What a report says about where it ran, in a fixed order.

    ``info`` is the server's ``INFO server`` reply and ``url`` its URL (redacted here).
    ``details`` come right after the URL; then the CPU count (unless ``cpus`` is false),
    Python and the platform; then the version of each distribution in ``packages``:
    ``redis`` is labelled ``redis-py``, and ``hiredis`` reads ``off`` when redis-py
    does not use it.
    """
    env = {"server": server_version(info), "url": redact(url), **(details or {})}
    if cpus:
        env["cpus"] = str(os.cpu_count())
    env["python"] = platform.python_version()
    env["platform"] = platform.platform(terse=True)
    for name in packages:
        if name == "redis":
            env["redis-py"] = package_version(name)
        elif name == "hiredis":
            env[name] = package_version(name) if redis.utils.HIREDIS_AVAILABLE else "off"
        else:
            env[name] = package_version(name)
    return env


def environment_line(env: Mapping[str, str]) -> str:
    """The environment as one line for a benchmark's printout: ``key value | ...``."""
    return " | ".join(f"{k} {v}" for k, v in env.items())


# --------------------------------------------------------------------------- results


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def error_summary(error: str) -> str:
    """One line for a table: the error's first line and, for a traceback, its last."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()] or ["?"]
    return lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"


def table_columns(table: list[dict[str, str]]) -> list[str]:
    """The columns of the widest row; a failed contender's row only has ``result``."""
    widest: dict[str, str] = {}
    for row in table:
        if "result" not in row and len(row) > len(widest):
            widest = row
    return list(widest) or ["contender", "result"]


def text_table(table: list[dict[str, str]]) -> str:
    """A plain-text table of contender rows; a failed one prints as ``contender  result``."""
    columns = table_columns(table)
    widths = {c: max(len(c), *(len(r.get(c, "")) for r in table)) for c in columns}
    line = "  ".join(f"{c:<{widths[c]}}" for c in columns)
    lines = [line, "-" * len(line)]
    for r in table:
        if "result" in r:
            lines.append(f"{r['contender']:<{widths['contender']}}  {r['result']}")
        else:
            lines.append("  ".join(f"{r.get(c, ''):<{widths[c]}}" for c in columns).rstrip())
    return "\n".join(lines)


def markdown_table(table: list[dict[str, str]], text_columns: Collection[str]) -> str:
    """A Markdown table of contender rows; ``text_columns`` align left, the rest right."""
    columns = table_columns(table)
    align = " | ".join("---" if c in text_columns else "---:" for c in columns)
    lines = ["| " + " | ".join(columns) + " |", f"| {align} |"]
    for r in table:
        if "result" in r:
            cells = [r["contender"], r["result"], *([""] * (len(columns) - 2))][: len(columns)]
        else:
            cells = [r.get(c, "") for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
