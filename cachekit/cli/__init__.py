"""The ``cachekit`` command: inspect and maintain cachekit's data in Redis or Valkey.

It takes the URLs ``Cache.from_url`` takes: one server (``redis://``, ``rediss://``,
``unix://``), a Sentinel-managed primary (``redis+sentinel://``) or a Redis Cluster
(``redis+cluster://``), where every command covers every primary.

Subcommands (``cachekit COMMAND --help`` for each):

* ``stats`` - keys per namespace and kind, memory, server facts (per primary and summed
  on Cluster), Bloom filters;
* ``get KEY`` - one entry decoded: payload, null marker, ages, logical expiry, TTL;
* ``bloom info|warm|rebuild NAME`` - a shared Bloom filter;
* ``purge PREFIX`` - unlink values by logical-key prefix, in batches, only with ``--yes``;
* ``bigkeys`` - the largest entries per namespace, and those over the size limits;
* ``unlink KEY...`` - delete named keys with ``UNLINK``.

Every command takes ``--url`` and ``--prefix`` and talks to Redis through the library's
own backend, key layout and envelope decoder. Errors are one line on stderr: exit status
1 for "no such entry or filter", 2 for usage, configuration and connection errors.

Usage::

    $ cachekit get product:5 --url redis://127.0.0.1:6379/0 --prefix shop
    $ cachekit stats --url redis+cluster://10.0.0.1:7000,10.0.0.2:7000 --prefix shop
    $ cachekit purge product: --url redis+sentinel://s1:26379,s2:26379/shop/0
    >>> from cachekit.cli import main
    >>> main(["purge", "product:", "--prefix", "shop"])      # a dry run
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from cachekit.cli.output import Failure, redact
from cachekit.cli.parser import build_parser
from cachekit.cli.server import Server
from cachekit.exceptions import BackendError, BackendUnavailable, ConfigurationError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cachekit`` command with ``argv`` (default: ``sys.argv[1:]``); the exit status.

    Never raises for the errors a user can cause: they are printed on stderr as one line.

    Usage::

        status = main(["stats", "--json"])
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error argparse explained
        return exc.code if isinstance(exc.code, int) else 2
    try:
        with Server.open(args.url, args.prefix) as server:
            status: int = args.run(server, args)
            return status
    except Failure as exc:
        return _fail(str(exc), exc.code)
    except BackendUnavailable as exc:
        return _fail(f"cannot reach Redis at {redact(args.url)}: {exc}", 2)
    except BackendError as exc:
        return _fail(f"Redis at {redact(args.url)} answered with an error: {exc}", 2)
    except ConfigurationError as exc:
        return _fail(str(exc), 2)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:
        # The reader went away (`cachekit stats | head`): silence the final flush too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _fail(message: str, status: int) -> int:
    print(f"cachekit: {message}", file=sys.stderr)
    return status
