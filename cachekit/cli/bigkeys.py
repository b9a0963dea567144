"""``cachekit bigkeys``: find the entries that are big enough to block the server.

A big key hurts twice: reading or writing it holds Redis's single thread for as long as
the bytes take to copy, and deleting it with ``DEL`` frees them on that thread too. The
usual culprits in cachekit's data are large decorated values, carts and sessions that
grew without bound, and Bloom filter bitmaps. This command finds them the way
``redis-cli --bigkeys -i`` does, without a running app and without ``KEYS``:

* one pass of ``SCAN MATCH <prefix>:* COUNT n``, pausing ``--interval`` seconds between
  calls so a busy production server is not hogged;
* for each batch, one pipeline of ``TYPE``, then one of ``MEMORY USAGE ... SAMPLES s``
  and the key's length (``STRLEN`` bytes of a string, ``HLEN`` fields of a hash, the
  element count of a list, set or sorted set);
* the ``--top`` largest entries of each namespace (:mod:`cachekit.cli.layout`), and every
  string over ``--string-bytes`` (10 KB) and hash, list, set or sorted set over
  ``--fields`` (5,000) elements, the thresholds at which a single command starts to cost
  milliseconds.

``cachekit unlink KEY`` deletes one entry it found with ``UNLINK``, which frees the memory
off the server's main thread.

On Redis Cluster the scan visits every primary in turn, and the pipelines are split by
the cluster backend per node: ``TYPE``, ``MEMORY USAGE`` and the lengths are answered by
each key's own primary (a batch from one ``SCAN`` call is one node's: one round trip).
``unlink`` takes keys of any slots (one ``UNLINK`` per slot).

Usage::

    cachekit bigkeys --prefix shop --interval 0.01
    cachekit bigkeys --json | jq '.flagged[].key'
    cachekit unlink 'shop:cart:{user:42}'
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cachekit.cli.layout import classify, raw_pattern
from cachekit.cli.ops import KeyFacts, KeyTypes, ScanNames, Unlink
from cachekit.cli.output import Failure, as_json, number, shown, size, table
from cachekit.cli.server import Server

__all__ = [
    "DEFAULT_FIELDS",
    "DEFAULT_STRING_BYTES",
    "Limits",
    "bigkeys",
    "collect",
    "render",
    "unlink",
]

DEFAULT_STRING_BYTES: Final = 10 * 1024  # redis' own "big string" rule of thumb
DEFAULT_FIELDS: Final = 5_000  # fields of a hash, elements of a list, set or sorted set
_FLAGGED_SHOWN: Final = 50  # entries over a threshold listed (all are counted)


@dataclass(frozen=True, slots=True)
class Limits:
    """What counts as big: bytes of a string, elements of an aggregate.

    Usage::

        Limits(string_bytes=10 * 1024, fields=5_000)
    """

    string_bytes: int = DEFAULT_STRING_BYTES
    fields: int = DEFAULT_FIELDS

    def over(self, kind: str, length: int) -> bool:
        """Whether a key of Redis type ``kind`` and this ``length`` is over its limit.

        Usage::

            Limits().over("hash", 12_000)     # True
        """
        if kind == "string":
            return length > self.string_bytes
        return kind in ("hash", "list", "set", "zset") and length > self.fields


def bigkeys(
    server: Server,
    *,
    count: int,
    top: int,
    interval: float,
    samples: int,
    limits: Limits,
    as_json_output: bool,
) -> int:
    """Print the largest entries per namespace and those over the limits; always 0.

    Usage::

        bigkeys(server, count=1000, top=5, interval=0.0, samples=5,
                limits=Limits(), as_json_output=False)
    """
    report = collect(
        server, count=count, top=top, interval=interval, samples=samples, limits=limits
    )
    print(as_json(report) if as_json_output else render(report))
    return 0


def collect(
    server: Server, *, count: int, top: int, interval: float, samples: int, limits: Limits
) -> dict[str, Any]:
    """The findings as plain data (the ``--json`` output).

    Usage::

        found = collect(server, count=1000, top=5, interval=0.0, samples=5, limits=Limits())
        found["namespaces"]["cart"]["largest"][0]["bytes"]
    """
    space = server.keyspace
    started = time.perf_counter()
    seen: set[str] = set()
    keys_in: dict[str, int] = {}
    bytes_in: dict[str, int] = {}
    largest: dict[str, list[tuple[int, str, dict[str, Any]]]] = {}
    flagged: list[tuple[int, str, dict[str, Any]]] = []
    over = {"strings": 0, "aggregates": 0}
    cursor, calls = 0, 0
    while True:
        cursor, names = server.run(ScanNames(cursor, raw_pattern(space.prefix + ":"), count))
        calls += 1
        fresh = [name for name in dict.fromkeys(names) if name not in seen]
        seen.update(fresh)
        if fresh:
            kinds = server.run(KeyTypes(fresh))
            facts = server.run(KeyFacts(fresh, kinds, samples))
            for name, kind, (used, length) in zip(fresh, kinds, facts, strict=True):
                if kind == "none":  # expired between SCAN and TYPE
                    continue
                namespace, role = classify(space, name)
                entry = {"key": name, "kind": role, "type": kind, "bytes": used, "length": length}
                keys_in[namespace] = keys_in.get(namespace, 0) + 1
                bytes_in[namespace] = bytes_in.get(namespace, 0) + used
                _keep(largest.setdefault(namespace, []), top, (used, name, entry))
                if limits.over(kind, length):
                    over["strings" if kind == "string" else "aggregates"] += 1
                    _keep(flagged, _FLAGGED_SHOWN, (used, name, entry))
        if cursor == 0:
            break
        if interval > 0:
            time.sleep(interval)  # the pacing of redis-cli -i: leave the server room
    return {
        "prefix": space.prefix,
        "scanned": len(seen),
        "scan_calls": calls,
        "seconds": round(time.perf_counter() - started, 3),
        "limits": {"string_bytes": limits.string_bytes, "fields": limits.fields},
        "namespaces": {
            ns: {"keys": keys_in[ns], "bytes": bytes_in[ns], "largest": _ranked(largest[ns])}
            for ns in sorted(keys_in)
        },
        "over": over,
        "flagged": _ranked(flagged),
    }


def _keep(heap: list[tuple[int, str, dict[str, Any]]], n: int, item: Any) -> None:
    # A min-heap of the n largest seen so far: memory stays O(n) on any keyspace.
    if n <= 0:
        return
    if len(heap) < n:
        heapq.heappush(heap, item)
    elif item[:2] > heap[0][:2]:
        heapq.heapreplace(heap, item)


def _ranked(heap: Sequence[tuple[int, str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [entry for _, _, entry in sorted(heap, key=lambda item: (-item[0], item[1]))]


def render(report: Mapping[str, Any]) -> str:
    """The findings for people: one table per question, and how to delete a key.

    Usage::

        print(render(collect(server, count=1000, top=5, interval=0.0, samples=5,
                             limits=Limits())))
    """
    limits = report["limits"]
    lines = [
        f"scanned {number(report['scanned'])} keys under prefix {report['prefix']!r} in "
        f"{number(report['scan_calls'])} SCAN calls ({report['seconds']:.2f} s)",
        "",
    ]
    namespaces = report["namespaces"]
    if not namespaces:
        return "\n".join([*lines, "nothing under this prefix"])
    header = ["namespace", "keys", "memory", "largest key", "its memory"]
    rows = []
    for ns, found in namespaces.items():
        top = found["largest"][0] if found["largest"] else None
        rows.append(
            [
                ns,
                found["keys"],
                size(found["bytes"]),
                shown(top["key"]) if top else "-",
                size(top["bytes"]) if top else "-",
            ]
        )
    lines += [table(header, rows), "", "largest entries per namespace"]
    entries = [entry for found in namespaces.values() for entry in found["largest"]]
    lines += [_entries(entries), ""]
    over = report["over"]
    lines.append(
        f"over the limits: {number(over['strings'])} strings over "
        f"{size(limits['string_bytes'])}, {number(over['aggregates'])} hashes, lists, sets or "
        f"sorted sets over {number(limits['fields'])} elements"
    )
    if report["flagged"]:
        lines.append(_entries(report["flagged"]))
        lines.append("")
        lines.append("delete one without blocking the server: cachekit unlink KEY")
    return "\n".join(lines)


def _entries(entries: Sequence[Mapping[str, Any]]) -> str:
    header = ["key", "namespace kind", "type", "memory", "length"]
    rows = [[shown(e["key"]), e["kind"], e["type"], size(e["bytes"]), _length(e)] for e in entries]
    return table(header, rows)


def _length(entry: Mapping[str, Any]) -> str:
    unit = {"string": "bytes", "hash": "fields"}.get(entry["type"], "elements")
    return f"{number(entry['length'])} {unit}"


def unlink(server: Server, keys: Sequence[str]) -> int:
    """``UNLINK`` the Redis keys named (they must be under the prefix); 1 if none existed.

    Usage::

        unlink(server, ["shop:cart:{user:42}"])
    """
    head = server.keyspace.prefix + ":"
    foreign = [key for key in keys if not key.startswith(head)]
    if foreign:
        raise Failure(
            f"{shown(foreign[0])} is not under the prefix {server.keyspace.prefix!r}: "
            "pass --prefix to name the cache it belongs to",
            code=2,
        )
    removed = server.run(Unlink(list(dict.fromkeys(keys))))
    print(f"unlinked {removed:,} of {len(set(keys)):,} key(s)")
    return 0 if removed else 1
