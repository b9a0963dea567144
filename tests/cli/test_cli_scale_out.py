"""The ``cachekit`` command on Redis Cluster and behind Sentinel: every command, both URLs.

The Cluster (3 primaries, each with a replica) and the Sentinel group (a primary, its
replica, 3 Sentinels) are this module's own, started by the ``private_cluster`` and
``private_sentinel`` fixtures (slow). Keys are planted on many slots, so on Cluster every
command meets every primary: ``stats`` reports each primary and their sum, ``purge``
and ``bigkeys`` scan all of them, ``unlink`` and ``purge`` delete across slots. What the
CLI reports is checked against redis-py's own view of the same deployment.
"""

from __future__ import annotations

import io
import re
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import redis.sentinel
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

from cachekit import Cache
from cachekit.backends.memory import MemoryStore, SyncMemoryBackend
from cachekit.backends.ops import Set
from cachekit.cli import main
from cachekit.cli.ops import Unlink, UnlinkPerSlot
from cachekit.config import parse_nodes
from tests.cli.support import Cli, in_process
from tests.support.servers import PrivateCluster, PrivateSentinel, free_port

slow = pytest.mark.slow


@dataclass
class Deployment:
    """One of the module's topologies: its URL, its kind, and redis-py's client on it."""

    kind: str
    url: str
    client: Any  # a RedisCluster, or a Sentinel's master_for client
    topology: PrivateCluster | PrivateSentinel

    def primaries(self) -> set[str]:
        """``host:port`` of every primary, as redis-py (not cachekit) sees them."""
        if self.kind == "cluster":
            return {node.name for node in self.client.get_primaries()}
        assert isinstance(self.topology, PrivateSentinel)
        return {f"127.0.0.1:{self.topology.primary_port()}"}

    def owner(self, key: str) -> str:
        """The primary that holds ``key``."""
        if self.kind == "cluster":
            name: str = self.client.get_node_from_key(key).name
            return name
        return next(iter(self.primaries()))

    def keys(self, pattern: str) -> set[str]:
        """Every key matching ``pattern``, scanned by redis-py itself (all primaries)."""
        return {k.decode() for k in self.client.scan_iter(match=pattern, count=500)}


@pytest.fixture(params=[pytest.param("cluster", marks=slow), pytest.param("sentinel", marks=slow)])
def deployment(request: pytest.FixtureRequest) -> Iterator[Deployment]:
    topology: PrivateCluster | PrivateSentinel = request.getfixturevalue(f"private_{request.param}")
    nodes = parse_nodes(topology.url)
    if request.param == "cluster":
        node: Any = ClusterNode
        client: Any = RedisCluster(startup_nodes=[node(h, p) for h, p in nodes.addresses])
        yield Deployment("cluster", topology.url, client, topology)
        client.close()
        return
    sentinel_class: Any = redis.sentinel.Sentinel
    sentinel = sentinel_class(list(nodes.addresses), socket_timeout=2)
    client = sentinel.master_for(nodes.service, socket_timeout=2)
    yield Deployment("sentinel", topology.url, client, topology)
    client.close()
    for one in sentinel.sentinels:
        one.close()


@pytest.fixture
def prefix() -> str:
    """A prefix of this test's own (the topologies live as long as this module)."""
    return f"c{uuid.uuid4().hex[:10]}"


@pytest.fixture
def cli(deployment: Deployment, prefix: str, capsys: pytest.CaptureFixture[str]) -> Cli:
    """Runs ``cachekit ARGS --url <the deployment> --prefix <test prefix>`` in-process."""
    return in_process(deployment.url, prefix, capsys)


@pytest.fixture
def cache(deployment: Deployment, prefix: str) -> Iterator[Cache]:
    """An app's cache on the deployment, under the test prefix."""
    cache = Cache.from_url(deployment.url, prefix=prefix, jitter=0)
    yield cache
    cache.sync.close()


def spread(deployment: Deployment, keys: list[str]) -> Counter[str]:
    """How many of ``keys`` each primary holds; on Cluster, all three must hold some."""
    owners = Counter(deployment.owner(key) for key in keys)
    if deployment.kind == "cluster":
        assert len(owners) == 3, owners  # the test plants keys on every primary
    return owners


# --- stats -------------------------------------------------------------------------------


def test_stats_reports_every_primary_and_their_sum(
    cli: Cli, cache: Cache, deployment: Deployment, prefix: str
) -> None:
    cache.sync.set_many({f"product:{i}": {"id": i} for i in range(60)}, ttl=60)
    deployment.client.set(f"{prefix}:{{product:0}}:lease", b"token", px=60_000)
    cache.bloom("products", capacity=1_000, error_rate=0.01).sync.rebuild(range(10))
    planted = deployment.keys(f"{prefix}:*")
    owners = spread(deployment, sorted(planted))

    with cache.sync.lock("report", ttl=10):
        result = cli("stats", "--json")
        human = cli("stats")
    assert result.code == 0, result.err
    report = result.json()
    assert report["deployment"] == deployment.kind
    kinds = {
        ns: {kind: c["keys"] for kind, c in k.items()}
        for ns, k in report["keys"]["namespaces"].items()
    }
    assert kinds["value"] == {"value": 60, "lease": 1}
    assert kinds["lock"] == {"lock": 1, "fence": 1}
    assert kinds["bloom"]["descriptor"] == 1
    assert report["keys"]["total"] == len(planted) + 2  # the lock and its fence
    values = report["keys"]["namespaces"]["value"]["value"]
    assert values["sampled"] == 60  # MEMORY USAGE reached every key, on its own node
    assert values["sample_bytes"] > 0

    nodes = report["nodes"]
    assert {node["address"] for node in nodes} == deployment.primaries()
    owners[deployment.owner(f"{prefix}:lock:{{report}}")] += 2  # the lock and its fence
    for node in nodes:
        expected = owners[node["address"]]
        assert node["prefix_keys"] == expected, node["address"]
        assert node["used_memory"] > 0
        assert node["db_keys"] >= node["prefix_keys"]
    total = report["server"]
    assert total["primaries"] == len(nodes) == (3 if deployment.kind == "cluster" else 1)
    for name in ("used_memory", "connected_clients", "keyspace_hits", "db_keys"):
        assert total[name] == sum(node[name] for node in nodes), name
    assert total["uptime_seconds"] == min(node["uptime_seconds"] for node in nodes)
    [bloom] = report["blooms"]
    assert (bloom["name"], bloom["state"], bloom["adds_counted"]) == ("products", "ready", 10)
    if deployment.kind == "cluster":
        assert report["keys"]["scan_calls"] >= 3  # one SCAN pass per primary at least

    assert human.code == 0, human.err
    assert re.search(r"^value\s+value\s+60\s+60\s", human.out, re.MULTILINE)
    if deployment.kind == "cluster":
        assert human.out.startswith("cluster   3 primaries, ")
        for node in nodes:
            row = rf"^{re.escape(node['address'])}\s.*\s{node['prefix_keys']}$"
            assert re.search(row, human.out, re.MULTILINE), node["address"]
    else:
        [address] = deployment.primaries()
        assert f"primary named by the Sentinels: {address}," in human.out.splitlines()[0]


# --- get ---------------------------------------------------------------------------------


def test_get_finds_entries_on_every_primary(
    cli: Cli, cache: Cache, deployment: Deployment, prefix: str
) -> None:
    names = [f"product:{i}" for i in range(12)]
    cache.sync.set_many({name: {"name": name} for name in names}, ttl=60)
    spread(deployment, [f"{prefix}:{{{name}}}" for name in names])
    for name in names:
        result = cli("get", name, "--json")
        assert result.code == 0, result.err
        entry = result.json()
        assert (entry["redis_key"], entry["value"]) == (f"{prefix}:{{{name}}}", {"name": name})
        assert entry["fresh"] is True
        assert 50 < entry["physical_ttl"] <= 60
    raw = cli("get", "--raw", f"{prefix}:{{product:3}}")
    assert raw.code == 0, raw.err
    assert '"name": "product:3"' in raw.out
    missing = cli("get", "product:nope")
    assert missing.code == 1
    assert missing.err.startswith(f"cachekit: no entry at {prefix}:{{product:nope}}")


# --- bigkeys and unlink ------------------------------------------------------------------


def test_bigkeys_scans_every_primary_and_measures_each_key_on_its_node(
    cli: Cli, cache: Cache, deployment: Deployment, prefix: str
) -> None:
    cache.sync.set_many({f"small:{i}": i for i in range(30)}, ttl=60)
    cache.sync.set("report:2026", "x" * 50_000, ttl=60)
    carts = [f"{prefix}:cart:{{user:{i}}}" for i in range(6)]
    for i, cart in enumerate(carts):
        fields = 6_000 if i == 0 else 3
        deployment.client.hset(cart, mapping={f"sku{n}": 1 for n in range(fields)})
    planted = deployment.keys(f"{prefix}:*")
    spread(deployment, sorted(planted))

    result = cli("bigkeys", "--json", "--top", "2", "--count", "7")
    assert result.code == 0, result.err
    report = result.json()
    assert report["scanned"] == len(planted) == 37
    assert report["namespaces"]["value"]["keys"] == 31
    biggest = report["namespaces"]["value"]["largest"][0]
    assert (biggest["key"], biggest["type"]) == (f"{prefix}:{{report:2026}}", "string")
    assert biggest["length"] > 50_000
    assert biggest["bytes"] > 50_000  # MEMORY USAGE answered by the key's own primary
    cart_sizes = {
        entry["key"]: entry["length"] for entry in report["namespaces"]["cart"]["largest"]
    }
    assert cart_sizes[carts[0]] == 6_000
    assert report["namespaces"]["cart"]["keys"] == 6
    assert report["over"] == {"strings": 1, "aggregates": 1}
    assert {entry["key"] for entry in report["flagged"]} == {f"{prefix}:{{report:2026}}", carts[0]}

    human = cli("bigkeys", "--interval", "0.001")
    assert human.code == 0, human.err
    assert "1 strings over 10.0 KiB" in human.out


def test_unlink_deletes_keys_of_many_slots_in_one_command(
    cli: Cli, deployment: Deployment, prefix: str
) -> None:
    doomed = [f"{prefix}:cart:{{user:{i}}}" for i in range(9)]
    for key in doomed:
        deployment.client.hset(key, mapping={"a": 1})
    deployment.client.set(f"{prefix}:{{keep}}", b"1")
    spread(deployment, doomed)
    done = cli("unlink", *doomed, doomed[0], f"{prefix}:cart:{{absent}}")
    assert (done.code, done.out.strip()) == (0, "unlinked 9 of 10 key(s)")
    assert deployment.keys(f"{prefix}:*") == {f"{prefix}:{{keep}}"}
    assert cli("unlink", doomed[0]).code == 1  # nothing was there
    refused = cli("unlink", "elsewhere:{x}")
    assert refused.code == 2
    assert "not under the prefix" in refused.err


# --- purge -------------------------------------------------------------------------------


def test_purge_scans_every_primary_and_unlinks_per_slot_batch(
    cli: Cli, cache: Cache, deployment: Deployment, prefix: str
) -> None:
    cache.sync.set_many({f"bulk:{i}": i for i in range(1_500)}, ttl=60)
    for i in range(0, 1_500, 10):  # leases share their value's slot: unlinked with it
        deployment.client.set(f"{prefix}:{{bulk:{i}}}:lease", b"token", px=60_000)
    cache.sync.set_many({"keep:1": 1, "keep:2": 2}, ttl=60)
    with cache.sync.lock("bulk:1", ttl=10):  # another namespace: never matched
        spread(deployment, sorted(deployment.keys(f"{prefix}:{{bulk:*")))
        dry = cli("purge", "bulk:")
        assert dry.code == 0, dry.err
        assert "dry run: 1,650 keys" in dry.out
        assert len(deployment.keys(f"{prefix}:*")) == 1_654

        result = cli("purge", "bulk:", "--yes", "--batch", "200")
        assert result.code == 0, result.err
        match = re.search(r"unlinked ([\d,]+) keys .* in ([\d,]+) batch", result.out)
        assert match is not None, result.out
        assert match.group(1) == "1,650"  # UNLINK's own count: each key exactly once
        assert int(match.group(2).replace(",", "")) >= 9  # at most 200 keys a batch
        left = deployment.keys(f"{prefix}:*")
    assert left == {
        f"{prefix}:{{keep:1}}",
        f"{prefix}:{{keep:2}}",
        f"{prefix}:lock:{{bulk:1}}",
        f"{prefix}:lock:{{bulk:1}}:fence",
    }
    sessions = [f"{prefix}:session:{{s{i}}}" for i in range(9)]
    for session in sessions:
        deployment.client.hset(session, mapping={"user": 1})
    spread(deployment, sessions)
    raw = cli("purge", "--raw", f"{prefix}:session:", "--yes")
    assert raw.code == 0, raw.err
    assert "unlinked 9 Redis keys" in raw.out
    assert deployment.keys(f"{prefix}:*") == left - {f"{prefix}:lock:{{bulk:1}}"}  # released


# --- bloom -------------------------------------------------------------------------------


def contains(url: str, prefix: str, ids: list[str]) -> list[bool]:
    """What a freshly started app process would answer for ``ids``."""
    reader = Cache.from_url(url, prefix=prefix)
    try:
        bloom = reader.bloom("products", capacity=1_000, error_rate=0.001)
        return [bloom.sync.contains(i) for i in ids]
    finally:
        reader.sync.close()


def test_bloom_warm_info_and_rebuild(
    cli: Cli,
    deployment: Deployment,
    prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"{i}\n" for i in range(200)))
    built = cli(
        "bloom", "warm", "products", str(ids), "--capacity", "1000", "--error-rate", "0.001"
    )
    assert built.code == 0, built.err
    assert "built Bloom filter 'products' from 200 ids" in built.out
    assert all(contains(deployment.url, prefix, [str(i) for i in range(200)]))

    monkeypatch.setattr(sys, "stdin", io.StringIO("200\n201\n202\n"))
    warmed = cli("bloom", "warm", "products", "--batch", "2")
    assert warmed.code == 0, warmed.err
    assert "added 3 ids" in warmed.out

    info = cli("bloom", "info", "products", "--json")
    assert info.code == 0, info.err
    facts = info.json()
    assert (facts["capacity"], facts["error_rate"], facts["state"]) == (1_000, 0.001, "ready")
    assert facts["adds_counted"] == 203
    assert facts["estimated_items"] == pytest.approx(203, rel=0.05)  # BITCOUNT on its node
    assert facts["memory_bytes"] >= facts["size_bytes"]

    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(f"{i}\n" for i in range(100))))
    rebuilt = cli("bloom", "rebuild", "products")
    assert rebuilt.code == 0, rebuilt.err
    assert "rebuilt Bloom filter 'products' from 100 ids" in rebuilt.out
    assert all(contains(deployment.url, prefix, [str(i) for i in range(100)]))
    assert sum(contains(deployment.url, prefix, [str(i) for i in range(100, 203)])) <= 2
    after = cli("bloom", "info", "products", "--json").json()
    assert after["generation"] > facts["generation"]
    assert after["estimated_items"] == pytest.approx(100, rel=0.05)


# --- Sentinel failover -------------------------------------------------------------------


@slow
def test_after_a_failover_the_cli_follows_the_sentinels(
    capsys: pytest.CaptureFixture[str],
) -> None:
    group = PrivateSentinel(sentinels=3).start()  # its own: this test kills its primary
    try:
        cache = Cache.from_url(group.url, prefix="fo", jitter=0)
        try:
            cache.sync.set("product:1", {"id": 1}, ttl=300)
            replica = redis.Redis(port=group.replica.port)
            try:
                deadline = time.monotonic() + 30
                while replica.get("fo:{product:1}") is None:  # replicated before the kill
                    assert time.monotonic() < deadline, "the replica never got the value"
                    time.sleep(0.05)
            finally:
                replica.close()
        finally:
            cache.sync.close()
        old = group.primary_port()
        group.kill_primary()
        group.wait_failover(old)
        new = group.primary_port()

        # Sentinels agree on the new primary one by one: until the one asked first has, it
        # names none (MasterNotFoundError, exit 2 with one line), and a rerun succeeds.
        deadline = time.monotonic() + 30
        while main(["stats", "--json", "--url", group.url, "--prefix", "fo"]) != 0:
            assert "No master found" in capsys.readouterr().err
            assert time.monotonic() < deadline, "the Sentinels never agreed on the new primary"
            time.sleep(0.2)
        report = orjson.loads(capsys.readouterr().out)
        assert [node["address"] for node in report["nodes"]] == [f"127.0.0.1:{new}"]
        assert report["keys"]["total"] == 1
        assert main(["get", "product:1", "--json", "--url", group.url, "--prefix", "fo"]) == 0
        assert orjson.loads(capsys.readouterr().out)["value"] == {"id": 1}
    finally:
        group.stop()


# --- no server needed --------------------------------------------------------------------


def test_unlink_on_cluster_sends_one_unlink_per_slot() -> None:
    keys = ["p:{a}", "p:{a}:lease", "p:{b}", "p:{a}", "p:{c}", "p:{b}:lease"]
    op = Unlink(keys).for_cluster()
    assert isinstance(op, UnlinkPerSlot)
    commands = op.pipeline()
    assert sorted(len(command) - 1 for command in commands) == [1, 2, 2]  # c; b+lease; a+lease
    for name, *names in commands:
        assert name == "UNLINK"
        assert len({key_slot(key) for key in names}) == 1
    assert sorted(k for _, *names in commands for k in names) == sorted(
        {key.encode() for key in keys}
    )
    assert op.parse([2, 1, 0]) == 3


def test_unlink_per_slot_has_the_same_meaning_in_memory() -> None:
    backend = SyncMemoryBackend(MemoryStore())
    for key in ("p:{a}", "p:{a}:lease", "p:{b}"):
        backend.run(Set(key, b"1", 60))
    assert backend.run(UnlinkPerSlot(["p:{a}", "p:{a}:lease", "p:{a}", "p:{zzz}"])) == 2
    assert backend.run(Unlink(["p:{b}"])) == 1


@pytest.mark.parametrize(
    ("url", "what"),
    [
        # redis-py names it RedisClusterUnreachableError since 7, RedisClusterException before
        (
            "redis+cluster://127.0.0.1:{port},127.0.0.1:{other}",
            ("RedisClusterUnreachableError", "RedisClusterException"),
        ),
        ("redis+sentinel://127.0.0.1:{port},127.0.0.1:{other}/shop/0", ("MasterNotFoundError",)),
    ],
    ids=["cluster", "sentinel"],
)
@pytest.mark.parametrize(
    "command",
    [["stats"], ["get", "k"], ["purge", "k", "--yes"], ["bigkeys"], ["bloom", "info", "b"]],
    ids=lambda c: c[0],
)
def test_an_unreachable_deployment_exits_2_with_one_line(
    url: str, what: tuple[str, ...], command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    url = url.format(port=free_port(), other=free_port())
    assert main([*command, "--url", url]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(
        tuple(f"cachekit: cannot reach Redis at {url}: {w}" for w in what)
    )
    assert captured.err.count("\n") == 1
