"""The near cache's invalidations on Redis Cluster: one channel per primary, and the topology.

Each primary gets its own :class:`~cachekit.near.channel.InvalidationChannel` (RESP3, ``CLIENT
TRACKING ON BCAST PREFIX <prefix>:``). The local layer serves only while the channel of
*every* primary of the current topology is up; a channel lost anywhere flushes it and
passes reads through until the topology is whole again, as on one server.

A topology thread asks one node for ``CLUSTER SLOTS`` every second (every 0.1 s while a
channel is down, and at once when one drops). What a change does, and why it is enough:

* **Another set of primaries** (a failover, a node added, one removed): the layer goes
  dark (flushed, pass-through), channels open to the new primaries and close on the
  old, and it serves again once all are up.
* **Slots moved between primaries already followed** (a migration): BCAST tracking
  reports every write under the prefix whatever its slot, and ``MIGRATE`` deletes the key
  on the source (an invalidation), so nothing can be missed; the layer is flushed anyway.
* **Before the poll notices** a new primary, a read it answers is not kept: the read script
  returns ``CLUSTER MYID`` and a value is installed only from a node whose channel is up
  (:meth:`ClusterChannel.follows`). A primary demoted while alive becomes a replica of
  the new one and keeps sending the invalidations of the writes it replicates.
* **A partition** that fails a primary over while this process still reaches the old one
  (which then replicates nothing) is seen at the next poll: copies from it may outlive a
  write on the new primary by up to a second.

Usage::

    channel = ClusterChannel("redis+cluster://10.0.0.1:7000", "shop", local)
    channel.start()
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import redis
import redis.connection
from redis.backoff import NoBackoff
from redis.retry import Retry

from cachekit.config import parse_nodes
from cachekit.exceptions import ConfigurationError
from cachekit.near.channel import ChannelMode, InvalidationChannel, Sink, node_target
from cachekit.stats import LogOnce

__all__ = ["ClusterChannel", "NodeChannel", "Topology", "topology"]

_EVERY: Final = 1.0  # seconds between topology polls while every channel is up
_EVERY_DARK: Final = 0.1  # ... while one is down (a failover is being followed)
_IO_TIMEOUT: Final = 1.0

logger = logging.getLogger("cachekit")

# node id -> (host, port) of every primary that serves a slot, and the slot ranges.
Topology = tuple[dict[str, tuple[str, int]], tuple[tuple[int, int, str], ...]]


def topology(reply: Any, asked: tuple[str, int]) -> Topology:
    """The primaries and slot ranges of a raw ``CLUSTER SLOTS`` reply from node ``asked``.

    Usage::

        primaries, ranges = topology(conn.read_response(), ("10.0.0.1", 7000))
    """
    primaries: dict[str, tuple[str, int]] = {}
    ranges = []
    for first, last, primary, *_replicas in reply:
        host, port, node = primary[0], primary[1], primary[2]
        host = host.decode() if isinstance(host, bytes) else str(host)
        node = node.decode() if isinstance(node, bytes) else str(node)
        primaries[node] = (host or asked[0], int(port))  # "": the node asked itself
        ranges.append((int(first), int(last), node))
    return primaries, tuple(sorted(ranges))


class NodeChannel(Protocol):
    """One primary's channel, as :class:`ClusterChannel` drives it."""

    def start(self) -> None:
        """Connect (on a thread of its own) and report to the sink it was given."""
        ...

    def stop(self, *, wait: bool = True) -> None:
        """Stop; ``wait=False`` returns at once."""
        ...


# (host, port), the sink to report to -> that primary's channel, not started.
NodeOpener = Callable[[tuple[str, int], Sink], NodeChannel]


@dataclass(eq=False)
class _Node:
    node_id: str
    address: tuple[str, int]
    channel: NodeChannel | None = None
    up: bool = False


@dataclass(eq=False)
class _NodeSink:
    """What one primary's channel reports, passed on as the whole Cluster's state."""

    owner: ClusterChannel
    node: _Node = field(repr=False)

    def channel_up(self, mode: ChannelMode) -> None:
        self.owner._node_up(self.node)

    def channel_down(self) -> None:
        self.owner._node_down(self.node)

    def invalidate(self, keys: Iterable[str]) -> None:
        self.owner._sink.invalidate(keys)

    def flush(self) -> None:
        self.owner._sink.flush()


class ClusterChannel:
    """Follows the invalidations of every primary of a Cluster, across topology changes.

    **Parameters:**

    * **url** - a ``redis+cluster://`` URL: its nodes are where discovery starts, its user
      and password the account.
    * **prefix** - the cache's key prefix: keys under ``<prefix>:`` are tracked.
    * **sink** - who is told of invalidations and of the whole channel's state.
    * **mode** - ``"auto"`` or ``"tracking"`` (every Cluster node tracks keys).
    * **open_node** - builds a primary's channel (default: an
      :class:`~cachekit.near.channel.InvalidationChannel` in tracking mode; tests pass fakes).

    Usage::

        channel = ClusterChannel("redis+cluster://10.0.0.1:7000", "shop", local)
        channel.start()
        channel.follows("07c37dfeb235213a872192d90877d0cd55635b91")   # that node is followed
    """

    def __init__(
        self,
        url: str,
        prefix: str,
        sink: Sink,
        *,
        mode: str = "auto",
        open_node: NodeOpener | None = None,
    ) -> None:
        if mode == "pubsub":
            raise ConfigurationError(
                "mode='pubsub' is not for Redis Cluster: every Cluster node tracks keys "
                "(use 'auto' or 'tracking')"
            )
        nodes = parse_nodes(url)  # checks the URL
        # Shuffled: a fleet's topology polls spread over the nodes, not all on the first.
        self._seeds = random.sample(nodes.addresses, len(nodes.addresses))
        self._identity = {"username": nodes.username, "password": nodes.password}
        self._prefix = prefix
        self._sink = sink
        self._lock = threading.Lock()
        self._nodes: dict[str, _Node] = {}
        self._ranges: tuple[tuple[int, int, str], ...] | None = None
        self._serving = False
        self._stopped = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._ask: Any = None  # the connection asked last (redis-py's is untyped)
        self._open_node = open_node or self._tracking
        self._log = LogOnce(logger)

    def start(self) -> None:
        """Start the topology thread (once); it opens the primaries' channels."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="cachekit-near-topology", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop every channel and the topology thread; the sink is told."""
        self._stopped.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(3.0)
        with self._lock:
            nodes, self._nodes = list(self._nodes.values()), {}
            self._serving = False
        for node in nodes:
            if node.channel is not None:
                node.channel.stop(wait=False)
        for node in nodes:
            if node.channel is not None:
                node.channel.stop()
        self._sink.channel_down()

    def follows(self, node: str) -> bool:
        """Whether primary ``node``'s invalidations are followed and the layer serves."""
        with self._lock:
            known = self._nodes.get(node)
            return self._serving and known is not None and known.up

    # ------------------------------------------------------------------ node reports

    def _node_up(self, node: _Node) -> None:
        with self._lock:
            if self._nodes.get(node.node_id) is not node:
                return  # a channel of a node no longer in the topology
            node.up = True
            if self._serving or not all(n.up for n in self._nodes.values()):
                return
            self._serving = True
            self._sink.channel_up("tracking")  # flushes first: serves afresh

    def _node_down(self, node: _Node) -> None:
        with self._lock:
            node.up = False
            if self._serving and self._nodes.get(node.node_id) is node:
                self._serving = False
                self._sink.channel_down()  # flush, pass through
        self._wake.set()  # a failover, perhaps: look at the topology now

    # ------------------------------------------------------------------ the topology thread

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self.follow(self._discover())
            except Exception as exc:  # no node answers: the channels report for themselves
                self._log.warning(
                    ("near-topology", type(exc)),
                    "cachekit: the Cluster topology could not be read (%s); near cache "
                    "channels follow the last one known",
                    exc,
                )
            with self._lock:
                whole = self._serving
            self._wake.wait(_EVERY if whole else _EVERY_DARK)
            self._wake.clear()
        if self._ask is not None:
            with suppress(Exception):
                self._ask.disconnect()

    def _discover(self) -> Topology:
        """``CLUSTER SLOTS`` from the node asked last, else a known primary, else a seed."""
        if self._ask is not None:
            try:
                return self._slots(self._ask)
            except Exception:
                with suppress(Exception):
                    self._ask.disconnect()
                self._ask = None
        with self._lock:
            known = [node.address for node in self._nodes.values()]
        random.shuffle(known)
        error: Exception | None = None
        for host, port in dict.fromkeys([*known, *self._seeds]):
            connection: Any = redis.connection.Connection
            conn = connection(
                host=host,
                port=port,
                **self._identity,
                socket_timeout=_IO_TIMEOUT,
                socket_connect_timeout=_IO_TIMEOUT,
                retry=Retry(NoBackoff(), 0),
            )
            try:
                found = self._slots(conn)
            except Exception as exc:
                error = exc
                with suppress(Exception):
                    conn.disconnect()
                continue
            self._ask = conn
            return found
        raise error if error is not None else ConfigurationError("no Cluster node to ask")

    @staticmethod
    def _slots(conn: Any) -> Topology:
        conn.send_command("CLUSTER", "SLOTS")
        return topology(conn.read_response(), (conn.host, conn.port))

    def _tracking(self, address: tuple[str, int], sink: Sink) -> NodeChannel:
        target = node_target(*address, self._identity)
        return InvalidationChannel(target, self._prefix, sink, mode="tracking")

    def follow(self, found: Topology) -> None:
        """Make the channels match ``found`` (what the topology thread read last).

        Usage::

            channel.follow(topology(reply, ("10.0.0.1", 7000)))
        """
        primaries, ranges = found
        starting: list[NodeChannel] = []
        stopping: list[NodeChannel] = []
        with self._lock:
            if ranges == self._ranges or self._stopped.is_set():
                return
            moved_only = self._ranges is not None and primaries == {
                node_id: node.address for node_id, node in self._nodes.items()
            }
            self._ranges = ranges
            if moved_only:  # followed already; flushed for good measure
                self._sink.flush()
                return
            if self._serving:
                self._serving = False
                self._sink.channel_down()
            for node_id, node in list(self._nodes.items()):
                if primaries.get(node_id) != node.address:
                    del self._nodes[node_id]
                    if node.channel is not None:
                        stopping.append(node.channel)
            for node_id, address in primaries.items():
                if node_id not in self._nodes:
                    node = _Node(node_id, address)
                    node.channel = self._open_node(address, _NodeSink(self, node))
                    self._nodes[node_id] = node
                    starting.append(node.channel)
        logger.info("cachekit: near cache follows %d Cluster primaries", len(primaries))
        for channel in stopping:
            channel.stop(wait=False)
        for channel in starting:
            channel.start()
