"""What ``Cache.configure`` builds: backends, the notification listener and both drivers.

Usage::

    binding = bind(settings, url="redis://127.0.0.1:6379/0", options={})
    value = binding.sync.drive(get(binding.ctx, "k", None))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from cachekit.backends.base import AsyncBackend, SyncBackend
from cachekit.backends.breaker import Breaker
from cachekit.backends.guard import AsyncGuardedBackend, SyncGuardedBackend
from cachekit.backends.memory import AsyncMemoryBackend, MemoryStore, SyncMemoryBackend
from cachekit.backends.ops import Op
from cachekit.backends.perloop import client_of, clonable, clone_client
from cachekit.clock import Clock
from cachekit.config import REDIS_DEFAULTS, parse_url
from cachekit.drivers.drive import AsyncDriver, SyncDriver
from cachekit.drivers.notify import Listener, Waiters
from cachekit.exceptions import ConfigurationError, NotConfigured
from cachekit.flow.context import Context
from cachekit.flow.keys import KeySpace
from cachekit.near.backend import AsyncNearBackend, SyncNearBackend
from cachekit.serializers import JsonSerializer, MsgpackSerializer, Serializer
from cachekit.stats import LogOnce, Stats

if TYPE_CHECKING:
    import random

    import redis
    import redis.asyncio

    from cachekit.backends.cluster import SyncClusterBackend
    from cachekit.bloom.state import BloomState
    from cachekit.near.local import LocalCache

__all__ = ["Binding", "CacheSettings", "bind"]

_SERIALIZERS: Mapping[str, type[JsonSerializer] | type[MsgpackSerializer]] = {
    "json": JsonSerializer,
    "msgpack": MsgpackSerializer,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheSettings:
    """What a :class:`~cachekit.Cache` brings to every configuration of it."""

    prefix: str
    serializer: Serializer | None
    default_ttl: float
    clock: Clock
    random: random.Random
    jitter: float
    double_delete: float
    max_value_size: int
    guard: Mapping[str, Any]  # deadline, breaker_failures, breaker_cooldown
    local: LocalCache | None
    stats: Stats
    log: LogOnce
    blooms: dict[str, BloomState]


@dataclass(frozen=True, slots=True)
class Binding:
    """The flow context and the two drivers of a configured cache."""

    ctx: Context
    sync: SyncDriver
    aio: AsyncDriver
    listener: Listener | None
    waiters: Waiters
    breaker: Breaker | None = None
    local: LocalCache | None = None

    def adopt(self, bloom: BloomState) -> None:
        """Have ``bloom``'s mirror follow this binding's notifications (and reload)."""
        bloom.generation, bloom.stale = None, True
        self.waiters.subscribe(f"bloom:{bloom.name}", bloom.on_message)

    def close_sync(self) -> None:
        """Stop listening, close the sync driver (finishing its rebuilds) and the async
        driver's clients as far as sync code can (see :meth:`AsyncDriver.close_sync`)."""
        if self.listener is not None:
            self.listener.stop()
        if self.local is not None:
            self.local.close()
        self.sync.close()
        self.aio.close_sync()

    async def close(self) -> None:
        """Close both drivers, waiting for the listener without blocking the loop."""
        if self.listener is not None:
            await self.listener.aclose()
        if self.local is not None:
            await self.local.aclose()
        self.sync.close()
        await self.aio.close()


class _NoSyncBackend:
    def run(self, op: Op[Any]) -> Any:
        raise NotConfigured("this Cache has no sync client: pass sync_client=redis.Redis(...)")

    def close(self) -> None:
        return None


class _NoAsyncBackend:
    async def run(self, op: Op[Any]) -> Any:
        raise NotConfigured("this Cache has no async client: pass client=redis.asyncio.Redis(...)")

    async def close(self) -> None:
        return None


@dataclass(slots=True, kw_only=True)
class _Storage:
    """What a URL or injected clients give: the raw backends and how to reach them again."""

    sync: SyncBackend
    aio: AsyncBackend
    prefix: str
    serializer: Serializer | None
    guard: dict[str, Any]  # the guard's settings; "slots" is set for a Redis endpoint
    reconnect: Callable[[], AsyncBackend] | None = None  # another event loop's backend
    cluster: SyncClusterBackend | None = None  # Cluster notifies on sharded channels
    sync_client: redis.Redis | None = None
    client: redis.asyncio.Redis | None = None
    # Where the near cache follows invalidations: a Cluster's URL (every primary), else
    # the sync client (one server, or the primary Sentinel names), else the async one.
    near_source: Any = None


def bind(
    settings: CacheSettings,
    *,
    url: str | None = None,
    options: Mapping[str, Any] | None = None,
    client: redis.asyncio.Redis | None = None,
    sync_client: redis.Redis | None = None,
) -> Binding:
    """Build a :class:`Binding` from a URL and its options, or from injected clients.

    Storage first (:func:`_from_url` / :func:`_from_clients`), then the layers in front of
    it (:func:`_front`: guard and breaker, near cache), the flows' :class:`Context`, the
    one notification listener (:func:`_listener`), and the two drivers over all of it.
    """
    waiters = Waiters()
    if url is not None:
        storage = _from_url(settings, url, options or {}, waiters)
    elif client is None and sync_client is None:
        raise ConfigurationError("configure() takes a URL or clients, exactly one of them")
    elif options:
        raise ConfigurationError(f"options {sorted(options)} need a URL")
    else:
        storage = _from_clients(settings, client, sync_client)
    breaker = _breaker(settings, storage, url)
    sync_backend, wrap, local = _front(settings, storage, breaker)
    ctx = _context(settings, storage)
    listener = _listener(storage, ctx, waiters, settings.log, lambda: client_of(aio.backend))
    shared = (waiters, listener, settings.stats, settings.log)
    reconnect = storage.reconnect
    aio = AsyncDriver(
        wrap(storage.aio),
        *shared,
        connect=None if reconnect is None else lambda: wrap(reconnect()),
    )
    binding = Binding(
        ctx, SyncDriver(sync_backend, *shared), aio, listener, waiters, breaker, local
    )
    for bloom in settings.blooms.values():
        binding.adopt(bloom)
    return binding


def _from_url(
    settings: CacheSettings, url: str, options: Mapping[str, Any], waiters: Waiters
) -> _Storage:
    """The backends a ``memory://``, ``redis://``, Sentinel or Cluster URL names (no I/O)."""
    target = parse_url(url, options)
    own = target.scoped("cache")
    prefix = own.get("prefix", settings.prefix)
    serializer = _SERIALIZERS[own["serializer"]]() if "serializer" in own else settings.serializer
    guard = dict(settings.guard)
    if target.scheme == "memory":
        store = MemoryStore(clock=settings.clock)
        store.subscribers.append(waiters.on_message)
        return _Storage(
            sync=SyncMemoryBackend(store),
            aio=AsyncMemoryBackend(store),
            prefix=prefix,
            serializer=serializer,
            guard=guard,
        )
    redis_options = target.scoped("redis")
    guard |= target.scoped("guard")
    # Each pool (each Cluster node's) holds max_connections (+1 for the listener):
    # whatever the admitted operations are, none waits for a connection.
    guard["slots"] = redis_options.get("max_connections", REDIS_DEFAULTS["max_connections"])
    if target.scheme == "redis+cluster":
        from cachekit.backends.cluster import connect_cluster

        cluster, async_cluster = connect_cluster(target.url, redis_options)
        return _Storage(
            sync=cluster,
            aio=async_cluster,
            prefix=prefix,
            serializer=serializer,
            guard=guard,
            reconnect=partial(_async_half, connect_cluster, target.url, redis_options),
            cluster=cluster,
            near_source=target.url,
        )
    from cachekit.backends.redis import connect

    redis_sync, redis_async = connect(target.url, redis_options)
    return _Storage(
        sync=redis_sync,
        aio=redis_async,
        prefix=prefix,
        serializer=serializer,
        guard=guard,
        reconnect=partial(_async_half, connect, target.url, redis_options),
        sync_client=redis_sync.client,
    )


def _from_clients(
    settings: CacheSettings,
    client: redis.asyncio.Redis | None,
    sync_client: redis.Redis | None,
) -> _Storage:
    """The backends over injected redis-py clients (either may be missing)."""
    import redis.asyncio.cluster
    import redis.cluster

    from cachekit.backends.redis import AsyncRedisBackend, SyncRedisBackend

    if isinstance(sync_client, redis.cluster.RedisCluster) or isinstance(
        client, redis.asyncio.cluster.RedisCluster
    ):
        raise ConfigurationError(
            "an injected RedisCluster client is not supported: configure the cache with "
            "the cluster's URL, e.g. Cache.from_url('redis+cluster://10.0.0.1:7000,"
            "10.0.0.2:7000'), which builds its own clients (per node pools, sharded "
            "notifications and the near cache's channels need them)"
        )

    guard = dict(settings.guard)
    guard["slots"] = _pool_slots(sync_client or client)
    return _Storage(
        sync=SyncRedisBackend(sync_client) if sync_client else _NoSyncBackend(),
        aio=AsyncRedisBackend(client) if client else _NoAsyncBackend(),
        prefix=settings.prefix,
        serializer=settings.serializer,
        guard=guard,
        # Every further event loop gets a sibling of the injected client.
        reconnect=partial(_sibling, client) if client is not None and clonable(client) else None,
        sync_client=sync_client,
        client=client,
    )


def _breaker(settings: CacheSettings, storage: _Storage, url: str | None) -> Breaker | None:
    """One circuit breaker for a Redis endpoint, shared by both drivers (none for memory)."""
    if "slots" not in storage.guard:
        return None
    return Breaker(
        failures=storage.guard["breaker_failures"],
        cooldown=storage.guard["breaker_cooldown"],
        clock=settings.clock,
        on_transition=settings.stats.incr,
        name=_endpoint(url, storage.sync_client or storage.client),
    )


def _front(
    settings: CacheSettings, storage: _Storage, breaker: Breaker | None
) -> tuple[SyncBackend, Callable[[AsyncBackend], AsyncBackend], LocalCache | None]:
    """What stands in front of storage: the guard (deadline and breaker), then the near cache.

    Returns the wrapped sync backend, the wrapping for each event loop's async backend, and
    the near cache when one is in use.
    """
    sync_backend = storage.sync
    budget: dict[str, Any] = {}
    if breaker is not None:
        budget = {"deadline": storage.guard["deadline"], "slots": storage.guard["slots"]}
        sync_backend = SyncGuardedBackend(sync_backend, breaker, settings.stats, **budget)
    local = settings.local
    if local is not None and breaker is not None:  # memory:// is local already
        # Outermost, so a local hit costs neither the deadline nor the breaker.
        local.start(storage.near_source or storage.sync_client or storage.client, storage.prefix)
        sync_backend = SyncNearBackend(sync_backend, local)
    else:
        local = None

    def wrap(inner: AsyncBackend) -> AsyncBackend:
        # Each loop's backend gets a budget of its own (the same bounds) and the shared
        # breaker; the near cache in front is shared by all loops and both drivers.
        if breaker is not None:
            inner = AsyncGuardedBackend(inner, breaker, settings.stats, **budget)
        return AsyncNearBackend(inner, local) if local is not None else inner

    return sync_backend, wrap, local


def _context(settings: CacheSettings, storage: _Storage) -> Context:
    """The inputs every flow of this binding reads."""
    return Context(
        keyspace=KeySpace(storage.prefix),
        serializer=storage.serializer or JsonSerializer(),
        default_ttl=settings.default_ttl,
        clock=settings.clock,
        random=settings.random,
        jitter=settings.jitter,
        double_delete=settings.double_delete,
        max_value_size=settings.max_value_size,
        blooms=settings.blooms,
        stats=settings.stats,
        log=settings.log,
    )


def _listener(
    storage: _Storage,
    ctx: Context,
    waiters: Waiters,
    log: LogOnce,
    running_client: Callable[[], Any],
) -> Listener | None:
    """One listener per process serves both drivers: the sync client's if there is one."""
    if storage.cluster is not None:
        from cachekit.drivers.sharded_notify import ShardedListener

        return ShardedListener(storage.cluster.connect, ctx.channel, waiters, log, ctx.keyspace)
    if (sync_client := storage.sync_client) is not None:
        from cachekit.drivers.sharded_notify import ServerListener

        return ServerListener(lambda: sync_client, ctx.channel, waiters, log)
    if storage.client is not None:
        from cachekit.drivers.task_notify import TaskListener

        # On the running loop's client: the listener restarts on a new loop when its own
        # loop is gone.
        return TaskListener(running_client, ctx.channel, waiters, log)
    return None  # memory://: the store calls the waiters itself


def _sibling(client: redis.asyncio.Redis) -> AsyncBackend:
    from cachekit.backends.redis import AsyncRedisBackend

    sibling = clone_client(client)
    # A sibling's pool is this backend's alone (a shared client, unclonable, is not held).
    return AsyncRedisBackend(sibling, hold=sibling is not client)


def _async_half(
    connect: Callable[[str, Mapping[str, Any]], tuple[SyncBackend, AsyncBackend]],
    url: str,
    options: Mapping[str, Any],
) -> AsyncBackend:
    """A new async backend for ``url`` (its sync twin is dropped unused: it holds nothing)."""
    return connect(url, options)[1]


def _pool_slots(client: redis.Redis | redis.asyncio.Redis | None) -> int:
    """Operations an injected client's pool can run at once, its listener's connection aside."""
    size = getattr(getattr(client, "connection_pool", None), "max_connections", 64)
    return max(1, min(int(size), 2**16) - 1)


def _endpoint(url: str | None, client: redis.Redis | redis.asyncio.Redis | None) -> str:
    """How logs name the endpoint: host and port, never a password."""
    if url is not None:
        parts = urlsplit(url)
        if "," in parts.netloc:  # Cluster or Sentinel: the addresses, no password
            return parts.netloc.rpartition("@")[2]
        return f"{parts.hostname or parts.path}:{parts.port or ''}".rstrip(":")
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
    return f"{kwargs.get('host', kwargs.get('path', 'redis'))}:{kwargs.get('port', '')}".rstrip(":")
