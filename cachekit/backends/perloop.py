"""Storage's part in one client per event loop: clone an injected client, drop a dead one.

The async driver (:mod:`cachekit.drivers.drive`, :mod:`cachekit.drivers.loops`) keeps one
async backend per event loop. For a URL it simply connects again; for an injected
``redis.asyncio.Redis`` :func:`clone_client` builds a sibling with the same pool class,
bounds and connection settings. When a loop was closed without shutting its backend down,
:func:`abandon` closes the backend's sockets without that loop: a closed loop refuses the
callbacks that a transport's ``close()`` schedules, and a transport or stream left to the
collector warns (``ResourceWarning``), so each socket is closed directly and its transport
marked closed.

Usage::

    backend = AsyncRedisBackend(clone_client(injected))
    abandon(backend)      # its loop is closed: close its sockets quietly
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # redis is an optional dependency: memory:// needs none of this
    import redis.asyncio

__all__ = ["abandon", "client_of", "clonable", "clone_client"]


def client_of(backend: object) -> Any:
    """The redis-py client under ``backend`` and its wrappers (``None`` for memory://).

    Usage::

        client_of(AsyncGuardedBackend(AsyncRedisBackend(client), ...)) is client
    """
    seen = 0
    while backend is not None and seen < 16:  # wrappers: near cache, guard
        client = getattr(backend, "client", None)
        if client is not None:
            return client
        backend, seen = getattr(backend, "inner", None), seen + 1
    return None


def clonable(client: redis.asyncio.Redis) -> bool:
    """Whether :func:`clone_client` can build a sibling of ``client`` (a plain pool)."""
    from redis.asyncio.connection import BlockingConnectionPool, ConnectionPool

    pool = getattr(client, "connection_pool", None)
    return type(pool) in (ConnectionPool, BlockingConnectionPool)


def clone_client(client: redis.asyncio.Redis) -> redis.asyncio.Redis:
    """A new client like ``client``: same pool class, bounds and connection settings.

    Only plain pools (``ConnectionPool``, ``BlockingConnectionPool``) can be rebuilt from
    their settings; for any other pool (Sentinel's) the client itself is returned, shared.

    Usage::

        sibling = clone_client(redis.asyncio.Redis(socket_timeout=0.25))
    """
    import redis.asyncio
    from redis.asyncio.connection import BlockingConnectionPool

    if not clonable(client):
        return client
    pool: Any = client.connection_pool
    kind = type(pool)
    settings = dict(pool.connection_kwargs)
    settings.pop("himport_registry", None)  # each pool keeps its own
    if kind is BlockingConnectionPool:
        settings["timeout"] = pool.timeout
    sibling = kind(
        connection_class=pool.connection_class, max_connections=pool.max_connections, **settings
    )
    return redis.asyncio.Redis.from_pool(sibling)


def abandon(backend: object) -> None:
    """Close the sockets of ``backend``'s client, whose event loop is closed; never raises."""
    client = client_of(backend)
    if client is None:
        return
    for connection in _connections(client):
        with contextlib.suppress(Exception):
            _drop(connection)


def _connections(client: Any) -> Iterator[Any]:
    pool = getattr(client, "connection_pool", None)
    if pool is not None:  # redis.asyncio.Redis
        yield from list(getattr(pool, "_available_connections", ()))
        yield from list(getattr(pool, "_in_use_connections", ()))
        manager = getattr(pool, "sentinel_manager", None)
        for sentinel in getattr(manager, "sentinels", ()):
            yield from _connections(sentinel)
        return
    manager = getattr(client, "nodes_manager", None)  # redis.asyncio.RedisCluster
    if manager is not None:
        # The nodes found, and the startup nodes that discovery connected to first.
        nodes = {id(node): node for node in manager.nodes_cache.values()}
        nodes |= {id(node): node for node in manager.startup_nodes.values()}
        for node in nodes.values():
            yield from list(getattr(node, "_connections", ()))
        manager.default_node = None  # as aclose() leaves it: the client warns otherwise


def _drop(connection: Any) -> None:
    """Close a redis-py async connection of a closed loop, as quietly as it can be done."""
    writer = getattr(connection, "_writer", None)
    # The connection warns at collection while it holds a writer; the writer warns while
    # its transport is not closing; the transport warns while it holds its socket.
    connection._reader = connection._writer = None
    if writer is not None:
        _close_transport(writer.transport)


def _close_transport(transport: Any) -> None:
    with contextlib.suppress(Exception):
        transport.close()  # marks it closing; the closed loop refuses the rest
    ssl = getattr(transport, "_ssl_protocol", None)
    inner = getattr(ssl, "_transport", None)
    if inner is not None:  # TLS: the socket is the inner transport's
        _close_transport(inner)
    sock = getattr(transport, "_sock", None)
    if sock is not None:
        sock.close()
        transport._sock = None
