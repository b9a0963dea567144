"""``cachekit purge PREFIX``: remove cache entries by prefix, in batches, only with ``--yes``.

What ``PREFIX`` means follows the key layout (:mod:`cachekit.flow.keys`): a value lives at
``<prefix>:{<logical key>}``, its logical key inside the Cluster hash tag, so

* ``purge product:`` removes every value whose **logical key** starts with ``product:``
  (``shop:{product:5}``), each with the keys derived from it inside the same tag (its
  rebuild lease ``shop:{product:5}:lease``, which voids a load in flight: its fill is
  refused). Locks, tags, sessions, carts, Bloom filters and stored responses live in
  their own namespaces and are never matched; ``purge ""`` removes every cached value.
* ``purge --raw PREFIX`` removes every Redis key that starts with ``PREFIX`` as it is,
  whatever its namespace (``--raw shop:session:`` for all sessions).

``PREFIX`` is always literal: glob characters (``* ? [ ] \\``) are escaped. Keys are found
with ``SCAN MATCH ... COUNT n`` and removed with one ``UNLINK`` of at most ``--batch``
keys per round trip (never ``KEYS``, never one command for everything); ``UNLINK`` frees
the memory off the server's main thread. Without ``--yes`` nothing is deleted: the
matching keys are counted instead.

On Redis Cluster the scan visits every primary in turn (the cluster backend's resumable
scan) and each batch is unlinked with one ``UNLINK`` per slot
(:class:`~cachekit.cli.ops.UnlinkPerSlot`: Cluster refuses one command across slots),
pipelined in one round trip per node; a batch comes from one ``SCAN`` call, so usually
from one node. A value and its lease share a hash tag, so they go in one ``UNLINK``.

Usage::

    cachekit purge product:                  # dry run: how many would go
    cachekit purge product: --yes --batch 1000
"""

from __future__ import annotations

from cachekit.cli.layout import logical_pattern, raw_pattern
from cachekit.cli.ops import ScanNames, Unlink
from cachekit.cli.output import Failure, shown
from cachekit.cli.server import Server

__all__ = ["count_matching", "purge", "unlink_matching"]


def purge(server: Server, prefix: str, *, raw: bool, yes: bool, batch: int) -> int:
    """Unlink the keys under ``prefix`` (see the module docstring), or count them.

    Usage::

        purge(server, "product:", raw=False, yes=True, batch=500)
    """
    if raw and not prefix:
        raise Failure("--raw needs a key prefix: an empty one matches the whole database", code=2)
    pattern = raw_pattern(prefix) if raw else logical_pattern(server.keyspace, prefix)
    what = "Redis keys" if raw else "keys of values"
    if not yes:
        n = count_matching(server, pattern, batch)
        print(f"dry run: {n:,} {what} match {shown(pattern)}; nothing was deleted.")
        print("Pass --yes to unlink them.")
        return 0
    unlinked, batches = unlink_matching(server, pattern, batch)
    print(f"unlinked {unlinked:,} {what} matching {shown(pattern)} in {batches:,} batch(es)")
    return 0


def count_matching(server: Server, pattern: str, count: int) -> int:
    """How many distinct keys match ``pattern`` (SCAN may return a key twice).

    Usage::

        count_matching(server, logical_pattern(server.keyspace, "product:"), 500)
    """
    seen: set[str] = set()
    cursor = 0
    while True:
        cursor, keys = server.run(ScanNames(cursor, pattern, count))
        seen.update(keys)
        if cursor == 0:
            return len(seen)


def unlink_matching(server: Server, pattern: str, batch: int) -> tuple[int, int]:
    """``(keys unlinked, UNLINK commands sent)`` for every key matching ``pattern``.

    Unlinking while scanning is safe: SCAN still returns every key that exists for the
    whole scan. A key returned twice, or gone meanwhile, is not counted: the count is
    UNLINK's own.

    Usage::

        unlinked, commands = unlink_matching(server, raw_pattern("shop:session:"), 500)
    """
    pending: list[str] = []
    cursor, unlinked, batches = 0, 0, 0
    while True:
        cursor, keys = server.run(ScanNames(cursor, pattern, batch))
        pending += keys
        while len(pending) >= batch or (cursor == 0 and pending):
            chunk, pending = pending[:batch], pending[batch:]
            unlinked += server.run(Unlink(chunk))
            batches += 1
        if cursor == 0:
            return unlinked, batches
