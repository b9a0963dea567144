"""``cachekit stats``: what the server holds for one prefix, without a running app.

One pass of ``SCAN MATCH <prefix>:* COUNT n`` (never ``KEYS``) counts the keys per
namespace and kind (:mod:`cachekit.cli.layout`); ``MEMORY USAGE`` of the first few keys
of each kind gives an average and an estimate; ``INFO`` gives the server's essentials;
and each Bloom filter's descriptor says its geometry and generation. The hit and miss
counts are the server's (every client of it, every prefix): the per-cache counters of
``cache.stats()`` live in the app's processes, and ``/metrics`` exports them.

Usage::

    cachekit stats --url redis://127.0.0.1:6379/0 --prefix shop
    cachekit stats --json | jq .keys.total
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from cachekit.backends.ops import Get, GetMany
from cachekit.cli.blooms import bloom_keys, parse_descriptor
from cachekit.cli.layout import bloom_name, classify, raw_pattern
from cachekit.cli.ops import Info, MemoryUsage, ScanNames
from cachekit.cli.output import as_json, duration, number, redact, shown, size, table
from cachekit.cli.server import Server

__all__ = ["collect", "render", "stats"]

_PIPELINE = 500  # MEMORY USAGE commands per round trip


def stats(server: Server, *, count: int, sample: int, as_json_output: bool) -> int:
    """Print the server's and the prefix's facts; always 0 (errors raise).

    Usage::

        stats(server, count=1000, sample=100, as_json_output=False)
    """
    report = collect(server, count=count, sample=sample)
    print(as_json(report) if as_json_output else render(report))
    return 0


def collect(server: Server, *, count: int, sample: int) -> dict[str, Any]:
    """The facts as plain data (the ``--json`` output).

    ``count`` is SCAN's COUNT hint; ``sample`` how many keys of each kind are measured.

    Usage::

        collect(server, count=1000, sample=100)["keys"]["namespaces"]["value"]
    """
    space = server.keyspace
    counts: Counter[tuple[str, str]] = Counter()
    samples: dict[tuple[str, str], list[str]] = {}
    blooms: list[str] = []
    cursor, calls = 0, 0
    while True:
        cursor, keys = server.run(ScanNames(cursor, raw_pattern(space.prefix + ":"), count))
        calls += 1
        for key in keys:
            group = classify(space, key)
            counts[group] += 1
            picked = samples.setdefault(group, [])
            if len(picked) < sample:
                picked.append(key)
            if group == ("bloom", "descriptor") and shown(key) == key:  # a name in UTF-8
                blooms.append(key)
        if cursor == 0:
            break
    namespaces: dict[str, dict[str, dict[str, int]]] = {}
    for (namespace, kind), n in sorted(counts.items()):
        measured = _memory(server, samples[namespace, kind])
        namespaces.setdefault(namespace, {})[kind] = {
            "keys": n,
            "sampled": len(measured),
            "sample_bytes": sum(measured),
            "estimated_bytes": round(sum(measured) / len(measured) * n) if measured else 0,
        }
    return {
        "url": redact(server.url),
        "prefix": space.prefix,
        "server": _server_facts(server.run(Info()), server.backend.client),
        "keys": {"total": sum(counts.values()), "scan_calls": calls, "namespaces": namespaces},
        "blooms": _blooms(server, sorted(blooms)),
    }


def _memory(server: Server, keys: list[str]) -> list[int]:
    sizes: list[int] = []
    for start in range(0, len(keys), _PIPELINE):
        sizes += server.run(MemoryUsage(keys[start : start + _PIPELINE]))
    return [n for n in sizes if n]  # 0: expired between SCAN and MEMORY USAGE


def _server_facts(info: Mapping[str, Any], client: Any) -> dict[str, Any]:
    db = int(client.connection_pool.connection_kwargs.get("db", 0))
    hits, misses = int(info.get("keyspace_hits", 0)), int(info.get("keyspace_misses", 0))
    keyspace = info.get(f"db{db}", {})
    return {
        "software": "valkey" if "valkey_version" in info else "redis",
        "version": str(info.get("valkey_version", info.get("redis_version", "?"))),
        "redis_version": str(info.get("redis_version", "?")),
        "uptime_seconds": int(info.get("uptime_in_seconds", 0)),
        "connected_clients": int(info.get("connected_clients", 0)),
        "used_memory": int(info.get("used_memory", 0)),
        "used_memory_peak": int(info.get("used_memory_peak", 0)),
        "maxmemory": int(info.get("maxmemory", 0)),
        "maxmemory_policy": str(info.get("maxmemory_policy", "?")),
        "keyspace_hits": hits,
        "keyspace_misses": misses,
        "hit_ratio": hits / (hits + misses) if hits + misses else None,
        "evicted_keys": int(info.get("evicted_keys", 0)),
        "expired_keys": int(info.get("expired_keys", 0)),
        "db": db,
        "db_keys": int(keyspace.get("keys", 0)) if isinstance(keyspace, Mapping) else 0,
    }


def _blooms(server: Server, descriptors: list[str]) -> list[dict[str, Any]]:
    if not descriptors:
        return []
    space = server.keyspace
    found = []
    for key, raw in zip(descriptors, server.run(GetMany(descriptors)), strict=True):
        name = bloom_name(space, key)
        described = None if raw is None or name is None else parse_descriptor(name, raw)
        if described is not None:
            found.append(described)
    report = []
    for d in found:
        keys = bloom_keys(space, d.name, d.geometry)
        live = keys.of(d.generation)
        counted = server.run(Get(keys.count(d.generation))) if live else None
        report.append(
            {
                "name": d.name,
                "state": "ready" if live else "missing",
                "capacity": d.geometry.capacity,
                "error_rate": d.geometry.error_rate,
                "bits": d.geometry.bits,
                "generation": d.generation,
                "rebuilding": d.rebuilding or None,
                "adds_counted": int(counted or 0),
                "memory_bytes": sum(server.run(MemoryUsage(live))) if live else 0,
            }
        )
    return report


def render(report: Mapping[str, Any]) -> str:
    """The report for people: server lines, a table of keys, a table of Bloom filters.

    Usage::

        print(render(collect(server, count=1000, sample=100)))
    """
    s = report["server"]
    ratio = "-" if s["hit_ratio"] is None else f"{s['hit_ratio']:.1%}"
    limit = size(s["maxmemory"]) if s["maxmemory"] else "no maxmemory"
    lines = [
        f"server    {s['software']} {s['version']} at {report['url']}, "
        f"up {duration(s['uptime_seconds'])}, clients connected: {number(s['connected_clients'])}",
        f"memory    {size(s['used_memory'])} used (peak {size(s['used_memory_peak'])}), "
        f"{limit}, policy {s['maxmemory_policy']}",
        f"keyspace  {number(s['keyspace_hits'])} hits, {number(s['keyspace_misses'])} misses "
        f"(hit ratio {ratio}, all clients), {number(s['evicted_keys'])} evicted, "
        f"{number(s['expired_keys'])} expired",
        f"db {s['db']}      {number(s['db_keys'])} keys",
        "",
    ]
    keys = report["keys"]
    lines.append(
        f"cachekit keys under prefix {report['prefix']!r}: {number(keys['total'])} "
        f"({keys['scan_calls']} SCAN calls)"
    )
    rows = [
        [ns, kind, c["keys"], c["sampled"], _average(c), size(c["estimated_bytes"])]
        for ns, kinds in keys["namespaces"].items()
        for kind, c in kinds.items()
    ]
    if rows:
        header = ["namespace", "kind", "keys", "sampled", "avg bytes", "est. memory"]
        lines.append(table(header, rows))
    lines += ["", f"Bloom filters: {len(report['blooms'])}"]
    if report["blooms"]:
        header = ["name", "state", "capacity", "error rate", "generation", "adds", "memory"]
        rows = [
            [
                b["name"],
                b["state"],
                b["capacity"],
                f"{b['error_rate']:g}",
                b["generation"],
                b["adds_counted"],
                size(b["memory_bytes"]),
            ]
            for b in report["blooms"]
        ]
        lines.append(table(header, rows))
    return "\n".join(lines)


def _average(c: Mapping[str, int]) -> int:
    return round(c["sample_bytes"] / c["sampled"]) if c["sampled"] else 0
