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
from cachekit.drivers.notify import Listener, TaskListener, ThreadListener, Waiters
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


def bind(
    settings: CacheSettings,
    *,
    url: str | None = None,
    options: Mapping[str, Any] | None = None,
    client: redis.asyncio.Redis | None = None,
    sync_client: redis.Redis | None = None,
) -> Binding:
    """Build a :class:`Binding` from a URL and its options, or from injected clients."""
    prefix, serializer = settings.prefix, settings.serializer
    waiters = Waiters()
    listener: Listener | None = None
    cluster: SyncClusterBackend | None = None  # Cluster notifies on sharded channels
    sync_backend: SyncBackend
    async_backend: AsyncBackend
    # Another event loop's async backend (None: async_backend is not bound to a loop).
    reconnect: Callable[[], AsyncBackend] | None = None
    guard = dict(settings.guard)
    if url is not None:
        target = parse_url(url, options)
        own = target.scoped("cache")
        prefix = own.get("prefix", prefix)
        if "serializer" in own:
            serializer = _SERIALIZERS[own["serializer"]]()
        if target.scheme == "memory":
            store = MemoryStore(clock=settings.clock)
            store.subscribers.append(waiters.on_message)
            sync_backend, async_backend = SyncMemoryBackend(store), AsyncMemoryBackend(store)
        elif target.scheme == "redis+cluster":
            from cachekit.backends.cluster import connect_cluster

            if settings.local is not None:  # its invalidation channel needs one server
                raise ConfigurationError(
                    "a near cache (local=) does not support redis+cluster:// yet: its "
                    "entries would miss other processes' invalidations"
                )
            redis_options = target.scoped("redis")
            cluster, async_backend = connect_cluster(target.url, redis_options)
            sync_backend = cluster
            reconnect = partial(_async_half, connect_cluster, target.url, redis_options)
            guard |= target.scoped("guard")
            # Each node's pool holds max_connections (+1 for the listener): whatever
            # nodes the admitted operations go to, none waits for a connection.
            guard["slots"] = redis_options.get("max_connections", REDIS_DEFAULTS["max_connections"])
        else:
            from cachekit.backends.redis import connect

            redis_options = target.scoped("redis")
            redis_sync, redis_async = connect(target.url, redis_options)
            sync_backend, async_backend = redis_sync, redis_async
            reconnect = partial(_async_half, connect, target.url, redis_options)
            sync_client = redis_sync.client
            guard |= target.scoped("guard")
            guard["slots"] = redis_options.get("max_connections", REDIS_DEFAULTS["max_connections"])
    elif client is None and sync_client is None:
        raise ConfigurationError("configure() takes a URL or clients, exactly one of them")
    elif options:
        raise ConfigurationError(f"options {sorted(options)} need a URL")
    else:
        from cachekit.backends.redis import AsyncRedisBackend, SyncRedisBackend

        sync_backend = SyncRedisBackend(sync_client) if sync_client else _NoSyncBackend()
        async_backend = AsyncRedisBackend(client) if client else _NoAsyncBackend()
        if client is not None and clonable(client):
            # Every further event loop gets a sibling of the injected client.
            reconnect = partial(_sibling, client)
        guard["slots"] = _pool_slots(sync_client or client)
    breaker = None
    budget: dict[str, Any] = {}
    if "slots" in guard:  # a Redis endpoint: guard both drivers with one shared breaker
        breaker = Breaker(
            failures=guard["breaker_failures"],
            cooldown=guard["breaker_cooldown"],
            clock=settings.clock,
            on_transition=settings.stats.incr,
            name=_endpoint(url, sync_client or client),
        )
        budget = {"deadline": guard["deadline"], "slots": guard["slots"]}
        sync_backend = SyncGuardedBackend(sync_backend, breaker, settings.stats, **budget)
    local = settings.local
    if local is not None and breaker is not None:  # memory:// is local already
        # Outermost, so a local hit costs neither the deadline nor the breaker.
        local.start(sync_client or client, prefix)
        sync_backend = SyncNearBackend(sync_backend, local)
    else:
        local = None

    def wrap(inner: AsyncBackend) -> AsyncBackend:
        # Each loop's backend gets a budget of its own (the same bounds) and the shared
        # breaker; the near cache in front is shared by all loops and both drivers.
        if breaker is not None:
            inner = AsyncGuardedBackend(inner, breaker, settings.stats, **budget)
        return AsyncNearBackend(inner, local) if local is not None else inner

    async_backend = wrap(async_backend)
    connect_async = None if reconnect is None else _composed(wrap, reconnect)
    ctx = Context(
        keyspace=KeySpace(prefix),
        serializer=serializer or JsonSerializer(),
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
    # One subscription per process serves both drivers: the sync client's if there is one.
    if cluster is not None:
        from cachekit.drivers.sharded_notify import ShardedListener

        listener = ShardedListener(
            cluster.connect, ctx.channel, waiters, settings.log, ctx.keyspace
        )
    elif sync_client is not None:
        sync_redis = sync_client
        listener = ThreadListener(lambda: sync_redis, ctx.channel, waiters, settings.log)
    elif client is not None:
        # On the running loop's client: the listener restarts on a new loop when its own
        # loop is gone.
        listener = TaskListener(lambda: client_of(aio.backend), ctx.channel, waiters, settings.log)
    shared = (waiters, listener, settings.stats, settings.log)
    aio = AsyncDriver(async_backend, *shared, connect=connect_async)
    binding = Binding(
        ctx, SyncDriver(sync_backend, *shared), aio, listener, waiters, breaker, local
    )
    for bloom in settings.blooms.values():
        binding.adopt(bloom)
    return binding


def _sibling(client: redis.asyncio.Redis) -> AsyncBackend:
    from cachekit.backends.redis import AsyncRedisBackend

    return AsyncRedisBackend(clone_client(client))


def _async_half(
    connect: Callable[[str, Mapping[str, Any]], tuple[SyncBackend, AsyncBackend]],
    url: str,
    options: Mapping[str, Any],
) -> AsyncBackend:
    """A new async backend for ``url`` (its sync twin is dropped unused: it holds nothing)."""
    return connect(url, options)[1]


def _composed(
    wrap: Callable[[AsyncBackend], AsyncBackend], make: Callable[[], AsyncBackend]
) -> Callable[[], AsyncBackend]:
    return lambda: wrap(make())


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
