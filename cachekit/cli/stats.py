"""``cachekit stats``: what the deployment holds for one prefix, without a running app.

One pass of ``SCAN MATCH <prefix>:* COUNT n`` on every primary (never ``KEYS``) counts
the keys per namespace and kind (:mod:`cachekit.cli.layout`); ``MEMORY USAGE`` of the
first few keys of each kind gives an average and an estimate; ``INFO`` of every primary
gives the server's essentials; and each Bloom filter's descriptor says its geometry and
generation. The hit and miss counts are the server's (every client of it, every prefix):
the per-cache counters of ``cache.stats()`` live in the app's processes, and
``/metrics`` exports them.

On a Redis Cluster the figures are summed over the primaries, and each primary gets its
own line (its ``INFO`` and how many of the prefix's keys its slots hold): a primary that
holds far more than its share, or serves far more hits, is the one to look at. Behind
Sentinel the report names the primary the Sentinels name now.

Usage::

    cachekit stats --url redis://127.0.0.1:6379/0 --prefix shop
    cachekit stats --url redis+cluster://10.0.0.1:7000,10.0.0.2:7000 --prefix shop
    cachekit stats --json | jq .keys.total
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Final

from cachekit.backends.base import SyncBackend
from cachekit.backends.ops import Get, GetMany
from cachekit.cli.blooms import bloom_keys, parse_descriptor
from cachekit.cli.layout import bloom_name, classify, raw_pattern
from cachekit.cli.ops import Info, MemoryUsage, ScanNames
from cachekit.cli.output import as_json, duration, number, redact, shown, size, table
from cachekit.cli.server import Server
from cachekit.flow.keys import KeySpace

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
    ``server`` sums the ``nodes`` (one per primary: one unless on Cluster).

    Usage::

        collect(server, count=1000, sample=100)["keys"]["namespaces"]["value"]
    """
    space = server.keyspace
    tally = _Tally(space, sample)
    nodes = []
    for address, node in server.primaries().items():
        facts = _server_facts(node.run(Info()), server.db)
        before = tally.total
        tally.scan(node, count)  # each primary holds the keys of its own slots
        nodes.append({"address": address, **facts, "prefix_keys": tally.total - before})
    namespaces: dict[str, dict[str, dict[str, int]]] = {}
    for (namespace, kind), n in sorted(tally.counts.items()):
        measured = _memory(server, tally.samples[namespace, kind])
        namespaces.setdefault(namespace, {})[kind] = {
            "keys": n,
            "sampled": len(measured),
            "sample_bytes": sum(measured),
            "estimated_bytes": round(sum(measured) / len(measured) * n) if measured else 0,
        }
    keys = {"total": tally.total, "scan_calls": tally.calls, "namespaces": namespaces}
    return {
        "url": redact(server.url),
        "prefix": space.prefix,
        "deployment": server.deployment,
        "server": _summed(nodes, server.db),
        "nodes": nodes,
        "keys": keys,
        "blooms": _blooms(server, sorted(tally.blooms)),
    }


class _Tally:
    """Keys counted per (namespace, kind) over one or more SCANs, with a sample of each."""

    def __init__(self, space: KeySpace, sample: int) -> None:
        self.space = space
        self.sample = sample
        self.counts: Counter[tuple[str, str]] = Counter()
        self.samples: dict[tuple[str, str], list[str]] = {}
        self.blooms: list[str] = []
        self.calls = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def scan(self, node: SyncBackend, count: int) -> None:
        pattern = raw_pattern(self.space.prefix + ":")
        cursor = 0
        while True:
            cursor, keys = node.run(ScanNames(cursor, pattern, count))
            self.calls += 1
            for key in keys:
                group = classify(self.space, key)
                self.counts[group] += 1
                picked = self.samples.setdefault(group, [])
                if len(picked) < self.sample:
                    picked.append(key)
                if group == ("bloom", "descriptor") and shown(key) == key:  # a name in UTF-8
                    self.blooms.append(key)
            if cursor == 0:
                return


def _memory(server: Server, keys: list[str]) -> list[int]:
    sizes: list[int] = []
    for start in range(0, len(keys), _PIPELINE):
        sizes += server.run(MemoryUsage(keys[start : start + _PIPELINE]))  # routed per key
    return [n for n in sizes if n]  # 0: expired between SCAN and MEMORY USAGE


def _server_facts(info: Mapping[str, Any], db: int) -> dict[str, Any]:
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


# Summed over the primaries; the rest are shared ("mixed" when they differ) or special.
_SUMMED: Final = (
    "connected_clients",
    "used_memory",
    "used_memory_peak",
    "keyspace_hits",
    "keyspace_misses",
    "evicted_keys",
    "expired_keys",
    "db_keys",
)
_SHARED: Final = ("software", "version", "redis_version", "maxmemory_policy")


def _summed(nodes: Sequence[Mapping[str, Any]], db: int) -> dict[str, Any]:
    """The facts of the whole deployment: its one server's, or the primaries' together."""
    total: dict[str, Any] = {name: sum(node[name] for node in nodes) for name in _SUMMED}
    for name in _SHARED:
        values = {node[name] for node in nodes}
        total[name] = values.pop() if len(values) == 1 else "mixed"
    hits, misses = total["keyspace_hits"], total["keyspace_misses"]
    limits = [node["maxmemory"] for node in nodes]
    return {
        **total,
        "uptime_seconds": min((node["uptime_seconds"] for node in nodes), default=0),
        "maxmemory": sum(limits) if limits and all(limits) else 0,  # 0: no limit somewhere
        "hit_ratio": hits / (hits + misses) if hits + misses else None,
        "db": db,
        "primaries": len(nodes),
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
    """The report for people: server lines, the primaries, a table of keys, Bloom filters.

    Usage::

        print(render(collect(server, count=1000, sample=100)))
    """
    s = report["server"]
    ratio = "-" if s["hit_ratio"] is None else f"{s['hit_ratio']:.1%}"
    limit = size(s["maxmemory"]) if s["maxmemory"] else "no maxmemory"
    nodes = report["nodes"]
    clients = f"clients connected: {number(s['connected_clients'])}"
    where = f"{s['software']} {s['version']} at {report['url']}"
    if report["deployment"] == "cluster":
        first = (
            f"cluster   {len(nodes)} primaries, {where}, youngest up "
            f"{duration(s['uptime_seconds'])}, {clients}"
        )
        scope = "all primaries, all clients"
    else:
        named = ", primary named by the Sentinels: " if report["deployment"] == "sentinel" else ""
        primary = nodes[0]["address"] if named else ""
        first = f"server    {where}{named}{primary}, up {duration(s['uptime_seconds'])}, {clients}"
        scope = "all clients"
    lines = [
        first,
        f"memory    {size(s['used_memory'])} used (peak {size(s['used_memory_peak'])}), "
        f"{limit}, policy {s['maxmemory_policy']}",
        f"keyspace  {number(s['keyspace_hits'])} hits, {number(s['keyspace_misses'])} misses "
        f"(hit ratio {ratio}, {scope}), {number(s['evicted_keys'])} evicted, "
        f"{number(s['expired_keys'])} expired",
        f"db {s['db']}      {number(s['db_keys'])} keys",
        "",
    ]
    if report["deployment"] == "cluster":
        lines += [_primaries(nodes, report["prefix"]), ""]
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


def _primaries(nodes: Sequence[Mapping[str, Any]], prefix: str) -> str:
    header = ["primary", "version", "up", "clients", "memory", "maxmemory", "hits", "misses"]
    header += ["hit ratio", "evicted", "db keys", f"keys under {prefix!r}"]
    rows = [
        [
            n["address"],
            n["version"],
            duration(n["uptime_seconds"]),
            n["connected_clients"],
            size(n["used_memory"]),
            size(n["maxmemory"]) if n["maxmemory"] else "-",
            n["keyspace_hits"],
            n["keyspace_misses"],
            "-" if n["hit_ratio"] is None else f"{n['hit_ratio']:.1%}",
            n["evicted_keys"],
            n["db_keys"],
            n["prefix_keys"],
        ]
        for n in nodes
    ]
    return table(header, rows)


def _average(c: Mapping[str, int]) -> int:
    return round(c["sample_bytes"] / c["sampled"]) if c["sampled"] else 0
