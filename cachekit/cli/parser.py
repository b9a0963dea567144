"""The command line's grammar: argparse subcommands, each bound to the function it runs.

Every subcommand takes ``--url`` (default: ``$REDIS_URL``, else
``redis://127.0.0.1:6379/0``) and ``--prefix`` (default: the URL's ``?prefix=``, else
cachekit's default), and sets ``run(server, args) -> exit code``.

Usage::

    args = build_parser().parse_args(["get", "product:5", "--json"])
    args.run(server, args)
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from cachekit import __version__
from cachekit.cli.bigkeys import DEFAULT_FIELDS, DEFAULT_STRING_BYTES, Limits, bigkeys, unlink
from cachekit.cli.blooms import bloom_info, bloom_load
from cachekit.cli.entry import show_entry
from cachekit.cli.purge import purge
from cachekit.cli.server import DEFAULT_PREFIX, DEFAULT_URL, Server
from cachekit.cli.stats import stats

__all__ = ["build_parser"]

Run = Callable[[Server, argparse.Namespace], int]

_EPILOG = """\
exit status: 0 done; 1 no such key, not a cachekit entry, or no such Bloom filter;
2 a usage, URL or configuration error, or Redis could not be reached."""


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value <= 60:
        raise argparse.ArgumentTypeError(f"must be between 0 and 60 seconds, got {value}")
    return value


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    url = os.environ.get("REDIS_URL") or DEFAULT_URL
    common.add_argument(
        "--url",
        default=url,
        help=(
            "Redis URL as Cache.from_url takes it, options included: redis://, rediss://, "
            "unix://, redis+sentinel:// or redis+cluster:// "
            f"(default: $REDIS_URL, else {DEFAULT_URL})"
        ),
    )
    common.add_argument(
        "--prefix",
        default=None,
        help=f"cachekit key prefix (default: the URL's ?prefix=, else {DEFAULT_PREFIX!r})",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    """The ``cachekit`` parser; environment defaults are read when it is built.

    Usage::

        build_parser().print_help()
    """
    common = _common()
    parser = argparse.ArgumentParser(
        prog="cachekit",
        description="Inspect and maintain cachekit's data in Redis or Valkey.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cachekit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, run: Run) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=summary, description=summary, parents=[common])
        sub.set_defaults(run=run)
        return sub

    sub = command(
        "stats", "keys per namespace, memory, server facts (per primary), Bloom filters", _stats
    )
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub.add_argument("--count", type=_count(1), default=1000, help="SCAN COUNT hint (1000)")
    sub.add_argument(
        "--sample", type=_count(0), default=100, help="keys per kind measured for memory (100)"
    )

    sub = command("get", "show one entry: payload, null marker, ages, expiry, TTL", _get)
    sub.add_argument(
        "key", metavar="KEY", help="the logical key, as the key template renders it: product:5"
    )
    sub.add_argument("--raw", action="store_true", help="KEY is a Redis key: shop:{product:5}")
    sub.add_argument("--json", action="store_true", help="print JSON")

    sub = command(
        "purge", "unlink every key under a logical-key prefix (a dry run without --yes)", _purge
    )
    # dest differs from --prefix (the cachekit prefix), which would overwrite it.
    sub.add_argument(
        "key_prefix", metavar="PREFIX", help="logical-key prefix, literal (globs escaped)"
    )
    sub.add_argument("--raw", action="store_true", help="PREFIX is a Redis key prefix")
    sub.add_argument("--yes", action="store_true", help="really unlink (default: count only)")
    sub.add_argument("--batch", type=_count(1), default=500, help="keys per UNLINK (500)")

    sub = command(
        "bigkeys", "the largest entries per namespace, and those over the size limits", _bigkeys
    )
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub.add_argument("--count", type=_count(1), default=1000, help="SCAN COUNT hint (1000)")
    sub.add_argument(
        "--interval", type=_seconds, default=0.0, help="seconds to pause between SCAN calls (0)"
    )
    sub.add_argument("--top", type=_count(1), default=5, help="largest entries per namespace (5)")
    sub.add_argument(
        "--samples",
        type=_count(0),
        default=5,
        help="MEMORY USAGE SAMPLES: nested elements measured per key (5; 0 = all, slow)",
    )
    sub.add_argument(
        "--string-bytes",
        type=_count(1),
        default=DEFAULT_STRING_BYTES,
        help=f"a string over this many bytes is big ({DEFAULT_STRING_BYTES})",
    )
    sub.add_argument(
        "--fields",
        type=_count(1),
        default=DEFAULT_FIELDS,
        help=f"a hash, list, set or sorted set over this many elements is big ({DEFAULT_FIELDS})",
    )

    sub = command("unlink", "delete Redis keys with UNLINK, off the server's main thread", _unlink)
    sub.add_argument(
        "keys", metavar="KEY", nargs="+", help="a Redis key under the prefix: shop:cart:{user:42}"
    )

    bloom = commands.add_parser("bloom", help="Bloom filters: info, warm, rebuild")
    actions = bloom.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub = actions.add_parser("info", help="geometry, fill and size", parents=[common])
    sub.set_defaults(run=_bloom_info)
    sub.add_argument("name", metavar="NAME", help="the filter's name, as in cache.bloom(name)")
    sub.add_argument("--json", action="store_true", help="print JSON")
    for action, summary, run in (
        ("warm", "add ids (one per line) to the filter; creates it if missing", _bloom_warm),
        ("rebuild", "build a fresh filter from ids and swap it in atomically", _bloom_rebuild),
    ):
        sub = actions.add_parser(action, help=summary, description=summary, parents=[common])
        sub.set_defaults(run=run)
        sub.add_argument("name", metavar="NAME", help="the filter's name, as in cache.bloom(name)")
        sub.add_argument(
            "ids", metavar="IDS", nargs="?", default="-", help="file of ids (default: - for stdin)"
        )
        sub.add_argument("--batch", type=_count(1), default=10_000, help="ids per round trip")
        sub.add_argument("--capacity", type=_count(1), help="to create it: as the app declares")
        sub.add_argument("--error-rate", type=float, help="to create it: as the app declares")
    return parser


def _stats(server: Server, a: argparse.Namespace) -> int:
    return stats(server, count=a.count, sample=a.sample, as_json_output=a.json)


def _get(server: Server, a: argparse.Namespace) -> int:
    return show_entry(server, a.key, raw=a.raw, as_json_output=a.json)


def _purge(server: Server, a: argparse.Namespace) -> int:
    return purge(server, a.key_prefix, raw=a.raw, yes=a.yes, batch=a.batch)


def _bigkeys(server: Server, a: argparse.Namespace) -> int:
    return bigkeys(
        server,
        count=a.count,
        top=a.top,
        interval=a.interval,
        samples=a.samples,
        limits=Limits(string_bytes=a.string_bytes, fields=a.fields),
        as_json_output=a.json,
    )


def _unlink(server: Server, a: argparse.Namespace) -> int:
    return unlink(server, a.keys)


def _bloom_info(server: Server, a: argparse.Namespace) -> int:
    return bloom_info(server, a.name, as_json_output=a.json)


def _bloom_warm(server: Server, a: argparse.Namespace) -> int:
    return _load(server, a, rebuild=False)


def _bloom_rebuild(server: Server, a: argparse.Namespace) -> int:
    return _load(server, a, rebuild=True)


def _load(server: Server, a: argparse.Namespace, *, rebuild: bool) -> int:
    return bloom_load(
        server,
        a.name,
        a.ids,
        batch=a.batch,
        capacity=a.capacity,
        error_rate=a.error_rate,
        rebuild=rebuild,
    )
