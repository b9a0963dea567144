"""``python -m loadtests``: the one entry point of the load tests.

Usage::

    python -m loadtests [--quick] [--only NAME,...]    # the scenario suite -> results/REPORT.md
    python -m loadtests hitpath [options]              # the hit path vs a raw GET and peers
    python -m loadtests hitsteps [options]             # each step of a hit, I/O left out
    python -m loadtests near [options]                 # a near-cache hit vs a Redis GET
    python -m loadtests cart [options]                 # cart and sessions vs SQL alone
    python -m loadtests http [options]                 # the response cache under uvicorn + wrk
    python -m loadtests outage [options]               # a Redis kill under open-loop load
    python -m loadtests herd [options]                 # herds on one key across processes
    python -m loadtests penetration [options]          # absent ids against Bloom gates
    python -m loadtests consistency [options]          # write paths on SQL rows, 4 processes
    python -m loadtests fanout [options]               # what a fill costs with N listeners
    python -m loadtests scaleout [options]             # the near cache on a 3-primary Cluster
    python -m loadtests trackmodes [options]           # BCAST vs per-key tracking, 50-200 clients

``python -m loadtests <command> --help`` lists a command's options.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

BENCHMARKS = (
    "hitpath",
    "hitsteps",
    "near",
    "cart",
    "http",
    "outage",
    "herd",
    "penetration",
    "consistency",
    "fanout",
    "scaleout",
    "trackmodes",
)


def main(argv: Sequence[str] | None = None) -> None:
    """Run a benchmark (first argument its name) or else the scenario suite."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in BENCHMARKS:
        module = importlib.import_module(f"loadtests.benchmarks.{args[0]}")
        module.main(args[1:])
        return
    if args and args[0] == "suite":
        args = args[1:]
    from loadtests.suite import main as run_suite

    run_suite(args)


if __name__ == "__main__":
    main()
