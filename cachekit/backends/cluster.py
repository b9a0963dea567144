"""Redis Cluster: both backends over redis-py's cluster clients, every operation slot-correct.

What Cluster changes, and where it is handled:

* **Scripts** run on the node of their first key and may touch only that slot. Every
  cachekit script's keys share one hash tag (:mod:`cachekit.flow.keys`), and a script that
  announces a change ``SPUBLISH``-es it on the key's shard channel
  (:meth:`~cachekit.backends.ops.Op.for_cluster`, :mod:`.shards`).
* **Multi-key commands** (``MGET``, ``UNLINK``, ``DEL``) whose keys may span slots become
  one command per key in a pipeline: one round trip per node, replies merged as the
  command would have.
* **SCAN** visits every primary in turn. The cursor a caller sees carries both the
  node (the first slot it serves) and that node's own cursor, so a scan is resumable
  like a standalone one and ends at 0.
* **Pipelines** of one-key commands (tags, generations, Bloom merges) are split per
  node by redis-py.
* A plain ``PUBLISH`` (:class:`~cachekit.backends.ops.Publish`) stays classic pub/sub,
  which Cluster delivers to the subscribers on every node.

The time budget is cachekit's here too: short socket timeouts, at most
``max_connections`` (+1 for the listener) per node, reads from primaries, and one
immediate retry after a topology refresh (redis-py's default is 3, each refreshing the
topology). The sync client connects in its constructor, so it is built at first use,
within that operation's budget: configuring a cache never does I/O.

Usage::

    sync_backend, async_backend = connect_cluster("redis+cluster://10.0.0.1:7000", {})
    sync_backend.run(Get("shop:{product:5}"))
"""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

import redis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import NoScriptError, SlotNotCoveredError
from redis.retry import Retry

from cachekit.backends.guard import time_left
from cachekit.backends.ops import Command, Op
from cachekit.backends.redis import (
    REDIS_ERRORS,
    SyncRedisBackend,
    budgeted,
    client_kwargs,
    reply_options,
    translate_error,
)
from cachekit.config import parse_nodes
from cachekit.exceptions import BackendTimeout, BackendUnavailable

__all__ = ["AsyncClusterBackend", "SyncClusterBackend", "connect_cluster"]

T = TypeVar("T")

SLOTS: Final = 16384


def _count(replies: list[Any]) -> int:
    return sum(int(reply) for reply in replies)


# Multi-key commands a backend splits by key: the one-key command, and how replies merge.
_SPLIT: Final[Mapping[str, tuple[str, Callable[[list[Any]], Any]]]] = {
    "MGET": ("GET", list),
    "UNLINK": ("UNLINK", _count),
    "DEL": ("DEL", _count),
}


_REDIS_PY: Final = os.path.dirname(redis.__file__) + os.sep


def _torn(exc: AttributeError | TypeError) -> BackendUnavailable:
    """The error for a command whose connection redis-py closed while it was in flight.

    Refreshing the topology after a node failed, redis-py's cluster clients close or
    recycle connections other threads and tasks are using (redis-py 8.1: the async one
    closes them all on CLUSTERDOWN); a command on one dies inside redis-py with an
    AttributeError or TypeError on the vanished socket. Anything else is a bug: re-raised.
    """
    frame = exc.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    if frame is None or not frame.tb_frame.f_code.co_filename.startswith(_REDIS_PY):
        raise exc
    return BackendUnavailable(f"connection closed under the command ({exc})")


class SyncClusterBackend:
    """The synchronous backend over a ``redis.cluster.RedisCluster``, built at first use.

    Usage::

        backend = SyncClusterBackend(lambda: RedisCluster(host="10.0.0.1", port=7000))
        backend.run(Get("shop:{product:5}"))
    """

    __slots__ = ("_client", "_factory", "_lock")

    def __init__(self, factory: Callable[[], RedisCluster]) -> None:
        self._factory = factory
        self._client: RedisCluster | None = None
        self._lock = threading.Lock()

    def connect(self) -> RedisCluster:
        """The client, discovering the cluster on first use (within the caller's budget).

        Raises :class:`~cachekit.exceptions.BackendError` when no node can be reached.
        """
        client = self._client
        if client is not None:
            return client
        left = time_left()
        if not self._lock.acquire(timeout=-1 if left is None else max(left, 0.0)):
            raise BackendTimeout("the cluster client is still being built")
        try:
            if self._client is None:
                try:
                    self._client = self._factory()
                except REDIS_ERRORS as exc:
                    raise translate_error(exc) from exc
            return self._client
        finally:
            self._lock.release()

    def run(self, op: Op[T]) -> T:
        """Send ``op``, split or routed as Cluster needs, and parse its reply."""
        client: Any = self.connect()  # redis-py's sync cluster client is untyped
        op = op.for_cluster()
        try:
            reply = self._send(client, op)
        except REDIS_ERRORS as exc:
            raise translate_error(exc) from exc
        except (AttributeError, TypeError) as exc:
            raise _torn(exc) from exc
        return op.parse(reply)

    def _send(self, client: Any, op: Op[Any]) -> Any:
        kind = op.kind
        if kind == "command":
            return self._command(client, op.command())
        if kind == "script":
            script = op.script
            assert script is not None
            keys, args = op.script_call()
            try:
                return client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            except NoScriptError:
                return client.execute_command("EVAL", script.source, len(keys), *keys, *args)
        with client.pipeline(transaction=False) as pipe:
            for command in op.pipeline():
                pipe.execute_command(*command, **reply_options(command))
            return pipe.execute()

    def _command(self, client: Any, command: Command) -> Any:
        name = command[0]
        if name == "SCAN":
            node, on_node, slot = scan_step(client.nodes_manager.slots_cache, command)
            reply = client.get_redis_connection(node).execute_command(*on_node)
            return scan_cursor(client.nodes_manager.slots_cache, slot, reply)
        split = _SPLIT.get(name)
        if split is None or len(command) <= 2:
            return client.execute_command(*command)
        single, merge = split
        with client.pipeline(transaction=False) as pipe:
            for key in command[1:]:
                pipe.execute_command(single, key)
            return merge(pipe.execute())

    def primaries(self) -> dict[str, SyncRedisBackend]:
        """A backend on each primary, by ``host:port``, for what is asked of a node.

        ``INFO``, ``DBSIZE`` and the like describe one node: a tool that reports per node
        (``cachekit stats``) runs them on each of these. They share this client's
        per-node pools, so they need no closing (closing this backend closes them), and
        they route nothing: a keyed command belongs on this backend, which follows the
        slots. Discovers the cluster on first use, as :meth:`run` does.

        Usage::

            infos = {node: b.run(Info()) for node, b in backend.primaries().items()}
        """
        client: Any = self.connect()  # redis-py's sync cluster client is untyped
        try:
            return {
                node.name: SyncRedisBackend(client.get_redis_connection(node))
                for node in client.get_primaries()
            }
        except REDIS_ERRORS as exc:
            raise translate_error(exc) from exc

    def close(self) -> None:
        """Close every node's connections."""
        if self._client is not None:
            self._client.close()


class AsyncClusterBackend:
    """The asynchronous backend over a ``redis.asyncio.cluster.RedisCluster``.

    Usage::

        backend = AsyncClusterBackend(redis.asyncio.cluster.RedisCluster(port=7000))
        await backend.run(Get("shop:{product:5}"))
    """

    __slots__ = ("client",)

    def __init__(self, client: AsyncRedisCluster) -> None:
        self.client = client

    async def run(self, op: Op[T]) -> T:
        """Send ``op``, split or routed as Cluster needs, and parse its reply."""
        op = op.for_cluster()
        try:
            # Discover the cluster under redis-py's lock before any command: commands that
            # race the first discovery use connections it then closes (redis-py 8.1).
            await self.client.initialize()
            reply = await self._send(op)
        except REDIS_ERRORS as exc:
            raise translate_error(exc) from exc
        except (AttributeError, TypeError) as exc:
            raise _torn(exc) from exc
        return op.parse(reply)

    async def _send(self, op: Op[Any]) -> Any:
        client = self.client
        execute: Callable[..., Awaitable[Any]] = client.execute_command
        kind = op.kind
        if kind == "command":
            return await self._command(op.command())
        if kind == "script":
            script = op.script
            assert script is not None
            keys, args = op.script_call()
            try:
                return await execute("EVALSHA", script.sha, len(keys), *keys, *args)
            except NoScriptError:
                return await execute("EVAL", script.source, len(keys), *keys, *args)
        async with client.pipeline(transaction=False) as pipe:
            for command in op.pipeline():
                pipe.execute_command(*command, **reply_options(command))
            return await pipe.execute()

    async def _command(self, command: Command) -> Any:
        client = self.client
        name = command[0]
        if name == "SCAN":
            node, on_node, slot = scan_step(client.nodes_manager.slots_cache, command)
            reply = await node.execute_command(*on_node)
            return scan_cursor(client.nodes_manager.slots_cache, slot, reply)
        split = _SPLIT.get(name)
        if split is None or len(command) <= 2:
            return await client.execute_command(*command)
        single, merge = split
        async with client.pipeline(transaction=False) as pipe:
            for key in command[1:]:
                pipe.execute_command(single, key)
            return merge(await pipe.execute())

    async def close(self) -> None:
        """Close every node's connections."""
        await self.client.aclose()


def scan_step(slots: Mapping[int, Sequence[Any]], command: Command) -> tuple[Any, Command, int]:
    """Where a Cluster-wide ``SCAN cursor ...`` continues: ``(node, its SCAN, slot)``.

    The cursor is ``node_cursor * 16384 + slot``: the node is the primary that serves
    ``slot`` (the first slot it served when its turn began), so cursor 0 starts at the
    primary of slot 0.

    Usage::

        node, command, slot = scan_step(client.nodes_manager.slots_cache, ("SCAN", 0))
        cursor, keys = scan_cursor(slots_cache, slot, node_client.execute_command(*command))
    """
    node_cursor, slot = divmod(int(command[1]), SLOTS)
    owners = slots.get(slot)
    if not owners:
        raise SlotNotCoveredError(f"slot {slot} is served by no node")
    return owners[0], ("SCAN", node_cursor, *command[2:]), slot


def scan_cursor(slots: Mapping[int, Sequence[Any]], slot: int, reply: Any) -> list[Any]:
    """The node's ``SCAN`` reply with the Cluster-wide cursor (0 after the last primary)."""
    node_cursor, keys = reply
    if int(node_cursor):
        return [int(node_cursor) * SLOTS + slot, keys]
    later = (first for first in _first_slots(slots) if first > slot)
    return [next(later, 0), keys]


def _first_slots(slots: Mapping[int, Sequence[Any]]) -> list[int]:
    """The first slot each primary serves, in slot order: the order SCAN visits them."""
    seen: set[str] = set()
    firsts = []
    for slot in range(SLOTS):
        owners = slots.get(slot)
        if owners and owners[0].name not in seen:
            seen.add(owners[0].name)
            firsts.append(slot)
    return firsts


def connect_cluster(
    url: str, options: Mapping[str, Any]
) -> tuple[SyncClusterBackend, AsyncClusterBackend]:
    """Both backends for a ``redis+cluster://`` URL (its nodes are where discovery starts).

    No I/O yet. ``options`` are the ``redis``-scoped options of
    :data:`cachekit.config.URL_OPTIONS` (``max_connections`` is per node).

    Usage::

        sync_backend, async_backend = connect_cluster(
            "redis+cluster://10.0.0.1:7000,10.0.0.2:7000", {"socket_timeout": 0.2}
        )
    """
    nodes = parse_nodes(url)
    settings = client_kwargs(options)
    settings.pop("db", None)  # Cluster has db 0 only (the URL was checked)
    settings |= {"username": nodes.username, "password": nodes.password}
    pool_timeout = settings.pop("timeout")
    settings["require_full_coverage"] = False  # serve the slots that are up
    (first_host, first_port), *others = nodes.addresses
    first = f"[{first_host}]" if ":" in first_host else first_host

    def build() -> RedisCluster:
        node: Any = ClusterNode  # untyped in redis-py
        # Given a URL, redis-py builds every node's pool from connection_pool_class: a
        # blocking one, bounded per node, whose connections bound replies by the deadline.
        # (Its sync cluster client has no health checks: health_check_interval is left out.)
        return RedisCluster(
            url=f"redis://{first}:{first_port}",
            startup_nodes=[node(host, port) for host, port in others],
            retry=Retry(NoBackoff(), 1),
            connection_pool_class=redis.BlockingConnectionPool,
            connection_class=budgeted(redis.Connection),
            timeout=pool_timeout,
            **{k: v for k, v in settings.items() if k != "health_check_interval"},
        )

    # The async client has no pool to wait on: a node refuses work beyond max_connections
    # at once, and the guard never asks for more.
    async_client = AsyncRedisCluster(
        startup_nodes=[AsyncClusterNode(host, port) for host, port in nodes.addresses],
        retry=AsyncRetry(NoBackoff(), 1),
        **settings,
    )
    return SyncClusterBackend(build), AsyncClusterBackend(async_client)
