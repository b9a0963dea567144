"""The near cache on Redis Cluster and behind Sentinel (issue 21), on real servers.

On this module's own Cluster (3 primaries, a replica each) and Sentinel group (a primary, a
replica, 3 Sentinels), started from the embedded server binary: a write anywhere drops
the local copy; a read answered by a node whose invalidations are not followed is not
kept; a write in one process is gone from another process's local layer within the same
bound as on one server (50 trials, p50 and max printed). Last, under load (two reader
threads, one writer whose writes count once a replica has them): a slot migration, a
Cluster primary killed, a Sentinel switchover (the old primary left running), a Sentinel
primary killed. No read may return a value older than one whose write was acknowledged
more than :data:`BOUND` before the read began, and no reader sees an error.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import multiprocessing
import random
import statistics
import threading
import time
from collections.abc import Callable
from functools import partial
from multiprocessing.connection import Connection
from typing import Any

import pytest
import redis
import redis.sentinel
from redis.cluster import ClusterNode, RedisCluster

from cachekit import Cache, LocalCache
from cachekit.backends.base import SyncBackend
from cachekit.backends.cluster import connect_cluster
from cachekit.backends.ops import Get, Op
from cachekit.config import parse_nodes
from cachekit.near.backend import ReadWithTtl, SyncNearBackend
from tests.near.test_local_cache import BOUND, TRIALS, envelope
from tests.support.servers import PrivateCluster, PrivateSentinel
from tests.support.waiting import holds_within

slow = pytest.mark.slow


# --------------------------------------------------------------------------- servers


@pytest.fixture(params=[pytest.param("cluster", marks=slow), pytest.param("sentinel", marks=slow)])
def url(request: pytest.FixtureRequest) -> str:
    topology: PrivateCluster | PrivateSentinel = request.getfixturevalue(f"private_{request.param}")
    return topology.url


def near_cache(url: str, prefix: str, **options: Any) -> tuple[Cache, LocalCache]:
    local = LocalCache(ttl=30)
    cache = Cache.from_url(url, prefix=prefix, local=local, **options)
    assert local.wait_ready(15)
    return cache, local


def test_a_write_through_any_primary_drops_the_local_copy(url: str) -> None:
    prefix = f"w{random.getrandbits(32):x}"
    reader, local = near_cache(url, prefix)
    writer = Cache.from_url(url, prefix=prefix)
    keys = [f"k{n}" for n in range(24)]  # every primary of the Cluster gets some
    try:
        for key in keys:
            writer.sync.set(key, "old", ttl=60)
        held = [f"{prefix}:{{{key}}}" for key in keys]
        assert holds_within(  # a late invalidation of the first write may drop a fresh copy
            lambda: (
                all(reader.sync.get(key) == "old" for key in keys)
                and all(local.lookup(full) is not None for full in held)
            )
        )
        hits = local.stats()["local_hits"]
        assert all(reader.sync.get(key) == "old" for key in keys)
        assert local.stats()["local_hits"] == hits + len(keys)  # all local now
        for key in keys:
            writer.sync.set(key, "new", ttl=60)
        assert holds_within(lambda: len(local) == 0, within=2.0)
        assert all(reader.sync.get(key) == "new" for key in keys)
    finally:
        reader.sync.close()
        writer.sync.close()


async def test_the_async_face_shares_the_layer(url: str) -> None:
    prefix = f"a{random.getrandbits(32):x}"
    reader, local = near_cache(url, prefix)
    writer = Cache.from_url(url, prefix=prefix)
    try:
        await writer.set("k", "old", ttl=60)
        for _ in range(1000):  # filled by the async face (a late invalidation may drop it)
            assert await reader.get("k") == "old"
            if local.lookup(f"{prefix}:{{k}}") is not None:
                break
            await asyncio.sleep(0.002)
        hits = local.stats()["local_hits"]
        assert reader.sync.get("k") == "old"
        assert await reader.get("k") == "old"
        assert local.stats()["local_hits"] == hits + 2
        await writer.set("k", "new", ttl=60)
        for _ in range(1000):
            if len(local) == 0:
                break
            await asyncio.sleep(0.002)
        assert await reader.get("k") == "new"
    finally:
        await reader.close()
        await writer.close()


class Foreign:
    """Says that every ReadWithTtl was answered by a node nobody follows."""

    def __init__(self, inner: SyncBackend) -> None:
        self.inner = inner

    def run(self, op: Op[Any]) -> Any:
        result = self.inner.run(op)
        if isinstance(op, ReadWithTtl):
            return (*result[:2], "f" * 40)
        return result

    def close(self) -> None:
        self.inner.close()


@slow
def test_a_read_from_a_node_not_followed_is_not_kept(private_cluster: PrivateCluster) -> None:
    url, prefix = private_cluster.url, f"f{random.getrandbits(32):x}"
    sync, _ = connect_cluster(url, {})
    local = LocalCache(ttl=30)
    local.start(url, prefix)
    followed, foreign = SyncNearBackend(sync, local), SyncNearBackend(Foreign(sync), local)
    key = f"{prefix}:{{a}}"
    try:
        assert local.wait_ready(15)
        node: Any = ClusterNode
        raw = RedisCluster(startup_nodes=[node("127.0.0.1", n.port) for n in private_cluster.nodes])
        raw.set(key, envelope(key, 1))
        raw.close()
        assert foreign.run(Get(key)) == envelope(key, 1)
        assert local.lookup(key) is None  # answered, not kept
        assert followed.run(Get(key)) == envelope(key, 1)
        assert local.lookup(key) == envelope(key, 1)  # the real node is followed
    finally:
        local.close()
        sync.close()


# --------------------------------------------------------------------------- two processes


def _reader(url: str, prefix: str, conn: Connection) -> None:
    """Process B: hold a key's old value locally, then report when the layer drops it."""
    sync, _ = connect_cluster(url, {})
    local = LocalCache(ttl=30)
    local.start(url, prefix)
    near = SyncNearBackend(sync, local)
    try:
        conn.send(("ready", local.wait_ready(15)))
        while (message := conn.recv())[0] == "arm":
            key, old = message[1], message[2]
            give_up = time.monotonic() + 5
            while near.run(Get(key)) != old or local.lookup(key) != old:
                if time.monotonic() > give_up:
                    conn.send(("armed", False))
                    return
            conn.send(("armed", True))
            give_up = time.monotonic() + 2
            while local.lookup(key) == old and time.monotonic() < give_up:
                pass
            conn.send(("seen", time.monotonic(), local.ready))
    finally:
        local.close()
        sync.close()


def one_key_per_primary(cluster: PrivateCluster, prefix: str) -> list[str]:
    """Keys under ``prefix`` whose slots are served by different primaries, one each."""
    found: dict[int, str] = {}
    for n in range(1000):
        key = f"{prefix}:{{fleet{n}}}"
        found.setdefault(cluster.primary_of(key).port, key)
        if len(found) == cluster.masters:
            return list(found.values())
    raise AssertionError("the keys did not spread over the primaries")


@slow
def test_a_write_in_one_process_is_gone_from_anothers_layer_within_the_bound_on_cluster(
    private_cluster: PrivateCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    url, prefix = private_cluster.url, f"x{random.getrandbits(32):x}"
    keys = one_key_per_primary(private_cluster, prefix)
    node: Any = ClusterNode
    writer = RedisCluster(startup_nodes=[node("127.0.0.1", n.port) for n in private_cluster.nodes])
    ours, theirs = multiprocessing.Pipe()
    process = multiprocessing.get_context("spawn").Process(
        target=_reader, args=(url, prefix, theirs), daemon=True
    )
    process.start()
    try:
        assert ours.poll(30)
        assert ours.recv() == ("ready", True)
        latencies = []
        values = {key: envelope(key, 0) for key in keys}
        for key, value in values.items():
            writer.set(key, value)
        for trial in range(1, TRIALS + 1):
            key = keys[trial % len(keys)]  # every primary's channel in turn
            ours.send(("arm", key, values[key]))
            assert ours.poll(10)
            assert ours.recv() == ("armed", True)
            values[key] = envelope(key, trial)
            writer.set(key, values[key])
            acknowledged = time.monotonic()  # CLOCK_MONOTONIC: one clock for both processes
            assert ours.poll(10)
            kind, seen, ready = ours.recv()
            assert (kind, ready) == ("seen", True)
            latencies.append(max(0.0, seen - acknowledged))
        ours.send(("stop",))
    finally:
        process.join(10)
        if process.is_alive():
            process.kill()
        writer.close()
    ms = sorted(latency * 1000 for latency in latencies)
    with capsys.disabled():
        print(
            f"\nnear cache invalidation on Cluster (3 primaries), {TRIALS} trials: p50 "
            f"{statistics.median(ms):.2f} ms, max {ms[-1]:.2f} ms"
        )
    assert max(latencies) < BOUND


# --------------------------------------------------------------------------- under load


class Writer:
    """Writes envelopes as cachekit would, acknowledged once a replica (if any) has them."""

    def __init__(self, url: str, prefix: str) -> None:
        self.prefix = prefix
        nodes = parse_nodes(url)
        client: Any
        self.cluster = url.startswith("redis+cluster")
        if self.cluster:
            node: Any = ClusterNode
            client = RedisCluster(startup_nodes=[node(h, p) for h, p in nodes.addresses])
        else:
            sentinel: Any = redis.sentinel.Sentinel(list(nodes.addresses), socket_timeout=2)
            self.sentinel = sentinel
            client = sentinel.master_for(nodes.service, socket_timeout=2)
        self.client = client

    def write(self, key: str, version: int) -> bool:
        full = f"{self.prefix}:{{{key}}}"
        client: Any = self.client  # redis-py's cluster client is untyped
        if self.cluster:  # WAIT must follow the SET on the key's node
            client = client.get_redis_connection(client.get_node_from_key(full))
        replicas = client.info("replication")["connected_slaves"]
        with client.pipeline(transaction=False) as pipe:
            pipe.set(full, envelope(full, version), ex=300)
            if replicas:  # else no failover can roll it back: acknowledged as it is
                pipe.execute_command("WAIT", 1, 1000)
            replies = pipe.execute()
        return not replicas or bool(int(replies[1]) >= 1)

    def settle(self, key: str) -> bool:
        """Write version 0 of ``key``; whether acknowledged (a topology still settling: no)."""
        try:
            return self.write(key, 0)
        except redis.RedisError:
            self.refresh()
            return False

    def refresh(self) -> None:
        """After an error: learn the Cluster's slots again (a Sentinel client reconnects)."""
        if self.cluster:
            with contextlib.suppress(Exception):
                self.client.nodes_manager.initialize()

    def close(self) -> None:
        self.client.close()
        for one in getattr(getattr(self, "sentinel", None), "sentinels", ()):
            one.close()


class Load:
    """Two reader threads (the near cache) and one writer (another client) on ``keys``.

    The writer sets ever higher versions, each acknowledged once a replica has it too
    (``WAIT 1``: a failover cannot roll it back); every acknowledged write is recorded with its
    time, every read with the time it began. :meth:`stale` lists the reads that returned
    a version older than one acknowledged more than :data:`BOUND` before they began.
    """

    def __init__(self, reader: Cache, writer: Writer, keys: list[str]) -> None:
        self.reader, self.writer, self.keys = reader, writer, keys
        self.acks: dict[str, list[tuple[float, int]]] = {key: [] for key in keys}
        self.reads: list[tuple[str, int | None, float]] = []
        self.errors: list[BaseException] = []
        self.refused_writes = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._read, args=(n,)) for n in range(2)]
        self.threads.append(threading.Thread(target=self._write))

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def _read(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop.is_set():
            key = rng.choice(self.keys)
            began = time.monotonic()
            try:
                value = self.reader.sync.get(key)
            except BaseException as exc:  # any error a caller would see
                self.errors.append(exc)
                continue
            self.reads.append((key, value, began))
            time.sleep(0.0005)  # leave the GIL to the channel threads now and then

    def _write(self) -> None:
        rng, version = random.Random(7), 0
        while not self.stop.is_set():
            key, version = rng.choice(self.keys), version + 1
            try:
                acknowledged = self.writer.write(key, version)
            except Exception:  # the key's primary is down: not acknowledged
                self.writer.refresh()
                acknowledged = False
            if not acknowledged:
                self.refused_writes += 1
                time.sleep(0.01)
                continue
            self.acks[key].append((time.monotonic(), version))
            time.sleep(0.002)

    def stale(self, since: float) -> list[tuple[str, int, int]]:
        """The stale reads, judged against the writes acknowledged from ``since`` on."""
        found = []
        for key, value, began in self.reads:
            acks = [ack for ack in self.acks[key] if ack[0] >= since]
            newest = bisect.bisect_left(acks, (began - BOUND, -1)) - 1
            # None is a miss (failed open), never a stale value.
            if newest >= 0 and value is not None and value < acks[newest][1]:
                found.append((key, value, acks[newest][1]))
        return found


def check(
    load: Load, local: LocalCache, hits_after_event: int, capsys: Any, what: str, since: float
) -> None:
    stale = load.stale(since)
    misses = sum(value is None for _, value, _ in load.reads)
    with capsys.disabled():
        print(
            f"\n{what}: {len(load.reads)} reads, {misses} failed open, {len(stale)} stale, "
            f"{len(load.errors)} errors, {load.refused_writes} writes refused, "
            f"{hits_after_event} local hits after it, stats {local.stats()}"
        )
    assert load.errors == []
    assert stale == []
    assert hits_after_event > 0  # the layer serves again after the change


@pytest.fixture
def keys() -> list[str]:
    return [f"v{n}" for n in range(40)]


def migrate(cluster: PrivateCluster, key: str) -> None:
    """Move ``key``'s slot (and its keys) to another primary, as ``redis-cli`` reshards."""
    source = cluster.primary_of(key)
    target = next(
        node
        for node in cluster.nodes
        if node.process is not None and node is not source and _is_primary(node.port)
    )
    clients = _client(source.port), _client(target.port)
    a: Any
    b: Any
    a, b = clients  # redis-py's execute_command is untyped
    try:
        a_id, b_id = (c.execute_command("CLUSTER", "MYID").decode() for c in (a, b))
        slot = a.execute_command("CLUSTER", "KEYSLOT", key)
        b.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", a_id)
        a.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", b_id)
        while moving := a.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            a.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *moving)
        for client in (b, a):
            client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", b_id)
    finally:
        a.close()
        b.close()


def _client(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=5)


def _replica_in_sync(port: int) -> bool:
    client = _client(port)
    try:
        info = client.info("replication")
        return bool(info["role"] == "slave" and info.get("master_link_status") == "up")
    finally:
        client.close()


def _is_primary(port: int) -> bool:
    client = _client(port)
    try:
        return bool(client.info("replication")["role"] == "master")
    finally:
        client.close()


def _during(
    url: str, keys: list[str], event: Callable[[str], float], capsys: Any, what: str
) -> None:
    prefix = f"l{random.getrandbits(32):x}"
    reader, local = near_cache(url, prefix)
    writer = Writer(url, prefix)
    try:
        for key in keys:
            assert holds_within(partial(writer.settle, key), within=30)
        with Load(reader, writer, keys) as load:
            time.sleep(1.0)
            since = event(prefix)  # when the writes the reads are judged by begin
            assert local.wait_ready(30)
            hits = local.stats()["local_hits"]
            # Serving again, once the breaker (opened by the failover) lets fills through.
            assert holds_within(lambda: local.stats()["local_hits"] > hits + 100, within=30)
            time.sleep(0.5)
        check(load, local, local.stats()["local_hits"] - hits, capsys, what, since)
    finally:
        reader.sync.close()
        writer.close()


@slow
def test_a_slot_migration_under_load_serves_nothing_stale(
    private_cluster: PrivateCluster, keys: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    def reshard(prefix: str) -> float:
        for key in keys[:6]:
            migrate(private_cluster, f"{prefix}:{{{key}}}")
        return 0.0  # every write counts

    _during(private_cluster.url, keys, reshard, capsys, "slot migration (6 slots)")


@slow
def test_a_cluster_failover_under_load_serves_nothing_stale(
    private_cluster: PrivateCluster, keys: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    def kill(prefix: str) -> float:
        private_cluster.kill_primary_of(f"{prefix}:{{{keys[0]}}}")
        private_cluster.wait_healthy()
        return 0.0  # every write counts (acknowledged by the replica too)

    _during(private_cluster.url, keys, kill, capsys, "Cluster primary killed")


@slow
def test_a_sentinel_switchover_under_load_serves_nothing_stale(
    keys: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # A group of its own: the old primary stays a primary until the Sentinels convert it,
    # seconds later, which is no state to leave to the next test.
    group = PrivateSentinel(sentinels=3).start()

    def switch(prefix: str) -> float:  # the old primary keeps running
        old = group.primary_port()
        sentinel = _client(group.sentinels[0].port)
        try:
            execute: Any = sentinel.execute_command
            execute("SENTINEL", "FAILOVER", group.service)
        finally:
            sentinel.close()
        group.wait_failover(old)
        # Until the Sentinels demote the old primary (seconds later) and it has synced from
        # the new one, clients still on it and clients on the new one see two histories:
        # no order to judge reads by. Its demotion closes its clients, the near cache's
        # channel too; once it has synced, there is one history again.
        demoted = next(s for s in (group.primary, group.replica) if s.port == old)
        assert holds_within(lambda: _replica_in_sync(demoted.port), within=30)
        return time.monotonic()

    try:
        _during(group.url, keys, switch, capsys, "Sentinel switchover")
    finally:
        group.stop()


@slow
def test_a_sentinel_failover_under_load_serves_nothing_stale(
    private_sentinel: PrivateSentinel, keys: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    def kill(prefix: str) -> float:
        old = private_sentinel.primary_port()
        private_sentinel.kill_primary()
        private_sentinel.wait_failover(old)
        return 0.0  # every write counts (acknowledged by the replica too)

    _during(private_sentinel.url, keys, kill, capsys, "Sentinel primary killed")
