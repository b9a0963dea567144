"""Sentinel: the Redis backends over a primary that Sentinel processes name and replace.

A ``redis+sentinel://`` URL names the Sentinels and the service they monitor; both backends
are ordinary :class:`~cachekit.backends.redis.SyncRedisBackend` s over redis-py's
``master_for`` clients, whose connections ask the Sentinels for the primary's address
whenever they (re)connect. So after a failover the next connection reaches the new
primary, and one left on a demoted primary is dropped at its first ``READONLY`` reply.

The budget is cachekit's, for the Sentinels too: redis-py's Sentinel clients would
otherwise retry a dead Sentinel with its default 10-step backoff before asking the next.

Usage::

    sync_backend, async_backend = connect_sentinel(
        "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/shop/0", {"socket_timeout": 0.2}
    )
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis.asyncio.sentinel
import redis.sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

from cachekit.backends.redis import (
    REDIS_ERRORS,
    AsyncRedisBackend,
    SyncRedisBackend,
    abudgeted,
    budgeted,
    client_kwargs,
    translate_error,
)
from cachekit.config import parse_nodes

__all__ = ["AsyncSentinelBackend", "SyncSentinelBackend", "connect_sentinel"]


class SyncSentinelBackend(SyncRedisBackend):
    """The sync backend over a ``master_for`` client; closing it closes the Sentinel links too.

    Usage::

        backend = SyncSentinelBackend(Sentinel([("10.0.0.1", 26379)]).master_for("shop"))
    """

    __slots__ = ()

    def close(self) -> None:
        super().close()
        pool: Any = self.client.connection_pool  # a SentinelConnectionPool
        for sentinel in pool.sentinel_manager.sentinels:
            sentinel.close()

    def primaries(self) -> dict[str, SyncRedisBackend]:
        """This backend under the address of the primary the Sentinels name now.

        Asks the Sentinels (one round trip to the first that answers). The backend itself
        is the value: its connections follow a failover, the address is a snapshot.

        Usage::

            backend.primaries()       # {'10.0.0.7:6379': backend}
        """
        pool: Any = self.client.connection_pool
        try:
            host, port = pool.get_master_address()
        except REDIS_ERRORS as exc:  # MasterNotFoundError: no Sentinel knows a primary
            raise translate_error(exc) from exc
        return {f"{host}:{port}": self}


class AsyncSentinelBackend(AsyncRedisBackend):
    """The async backend over a ``master_for`` client; closing it closes the Sentinel links too.

    Usage::

        backend = AsyncSentinelBackend(Sentinel([("10.0.0.1", 26379)]).master_for("shop"))
    """

    __slots__ = ()

    async def close(self) -> None:
        await super().close()
        pool: Any = self.client.connection_pool  # a SentinelConnectionPool
        for sentinel in pool.sentinel_manager.sentinels:
            await sentinel.aclose()


def connect_sentinel(
    url: str, options: Mapping[str, Any]
) -> tuple[SyncRedisBackend, AsyncRedisBackend]:
    """Both backends on the primary a ``redis+sentinel://`` URL's Sentinels name; no I/O yet.

    ``options`` are the ``redis``-scoped URL options; ``sentinel_username`` and
    ``sentinel_password`` authenticate to the Sentinels, the URL's user and password to
    the data servers.

    Usage::

        sync_backend, async_backend = connect_sentinel(
            "redis+sentinel://:secret@10.0.0.1:26379/shop/0?sentinel_password=s3", {}
        )
    """
    sentinel_class: Any = redis.sentinel.Sentinel
    async_sentinel_class: Any = redis.asyncio.sentinel.Sentinel
    nodes = parse_nodes(url)
    assert nodes.service is not None  # parse_nodes insists on it for Sentinel URLs
    data = client_kwargs(options)
    # master_for's pool hands out connections without waiting for one; the guard admits
    # no more operations than the pool holds, so nobody would wait anyway.
    data.pop("timeout")
    sentinel_auth = {
        name.removeprefix("sentinel_"): data.pop(name)
        for name in ("sentinel_username", "sentinel_password")
        if name in data
    }
    data.setdefault("db", nodes.db)
    data |= {"username": nodes.username, "password": nodes.password}
    to_sentinels = {
        "socket_timeout": data["socket_timeout"],
        "socket_connect_timeout": data["socket_connect_timeout"],
        **sentinel_auth,
    }
    addresses = list(nodes.addresses)
    sync_sentinel: Any = sentinel_class(  # untyped in redis-py
        addresses, sentinel_kwargs={**to_sentinels, "retry": Retry(NoBackoff(), 0)}
    )
    # One immediate retry on a broken connection, as for one server: the reconnect asks
    # the Sentinels again, which is how a failover is followed.
    client = sync_sentinel.master_for(
        nodes.service,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        **data,
    )
    pool = client.connection_pool
    pool.connection_class = budgeted(pool.connection_class)
    async_sentinel: Any = async_sentinel_class(
        addresses, sentinel_kwargs={**to_sentinels, "retry": AsyncRetry(NoBackoff(), 0)}
    )
    async_client = async_sentinel.master_for(
        nodes.service,
        retry=AsyncRetry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        **data,
    )
    async_pool = async_client.connection_pool
    async_pool.connection_class = abudgeted(async_pool.connection_class)
    return SyncSentinelBackend(client), AsyncSentinelBackend(async_client)
