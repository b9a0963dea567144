"""The :class:`Cache` object: configuration, the raw API on both faces, and ``cached``.

Every API that does I/O is async on :class:`Cache` and has a synchronous twin of the same
name on :attr:`Cache.sync`; both share one configuration, one key scheme and the same
data. A ``Cache()`` can be declared at import time (no I/O) and configured at startup.

Usage::

    cache = Cache.from_url("redis://127.0.0.1:6379/0?prefix=shop")
    await cache.set("greeting", "hello", ttl=60)
    assert cache.sync.get("greeting") == "hello"
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from cachekit.backends.breaker import DEFAULT_COOLDOWN, DEFAULT_FAILURES, Breaker
from cachekit.backends.guard import DEFAULT_DEADLINE
from cachekit.bloom.filter import Bloom
from cachekit.bloom.state import BloomState, Geometry
from cachekit.clock import SYSTEM_CLOCK, Clock
from cachekit.config import seconds_or_zero, spread, to_seconds
from cachekit.decorators import Decorator
from cachekit.defaults import set_default_cache
from cachekit.drivers.binding import Binding, CacheSettings, bind
from cachekit.exceptions import ConfigurationError, NotConfigured
from cachekit.flow.context import DEFAULT_MAX_VALUE_SIZE, OnLockTimeout, Policy
from cachekit.flow.keys import KeySpace
from cachekit.flow.raw import (
    delete,
    get,
    get_many,
    invalidate,
    invalidate_tags,
    set_many,
    set_value,
)
from cachekit.lock import Lock
from cachekit.near.local import LOCAL_COUNTERS, LocalCache
from cachekit.serializers import Serializer
from cachekit.stats import LogOnce, Stats
from cachekit.sync import SyncCache

if TYPE_CHECKING:
    import redis
    import redis.asyncio

__all__ = ["Cache"]

logger = logging.getLogger("cachekit")


_UNCONFIGURED = (
    "this Cache was used before it was configured: call cache.configure('redis://...') "
    "at startup (or build it with Cache.from_url(...) or Cache(client=..., sync_client=...))"
)


class Cache:
    """A cache on Redis, Valkey or memory, with async methods and a sync twin at ``.sync``.

    Usage::

        cache = Cache()                                   # at import: no I/O
        cache.configure("redis://127.0.0.1:6379/0")       # at startup

        cache = Cache(client=redis.asyncio.Redis(), sync_client=redis.Redis())

    **Parameters:**

    * **client** - *(optional)* a ``redis.asyncio.Redis`` for the async face.
    * **sync_client** - *(optional)* a ``redis.Redis`` for the sync face.
    * **prefix** - first segment of every key (default ``"cachekit"``).
    * **serializer** - how values become bytes (default :class:`JsonSerializer`).
    * **default_ttl** - seconds (or a ``timedelta``) when none is given (default 300).
    * **clock** - where time is read; a ``FakeClock`` in tests.
    * **rng** - the random source of jitter and early refresh; seeded in tests.
    * **jitter** - every TTL written is spread by this fraction, ± (default 0.1).
    * **double_delete** - seconds after an invalidation to delete the key once more, for
      replicas that lag (default 0: off).
    * **deadline** - seconds one Redis operation may take in all: pool wait, connect,
      reply and retry (default 0.25). Past it the operation fails and the caller is
      served without the cache (reads load from the source through single-flight).
    * **breaker_failures** / **breaker_cooldown** - the circuit breaker: after this many
      consecutive failures Redis is not called for the cool-down, then one probe decides
      (defaults 5 and 2 s). URL options of the same names win over these.
    * **max_value_size** - bytes (encoded) above which a decorated function's result is
      returned uncached and counted (``oversized_values``), and ``set`` raises
      :class:`~cachekit.exceptions.Uncacheable` (default 1 MiB): big values block Redis.
    * **local** - a :class:`~cachekit.near.local.LocalCache`: a bounded in-process layer in
      front of Redis, invalidated by the server (CLIENT TRACKING, else pub/sub); Redis
      standalone URLs and clients only.

    Injected clients are used as they are: give them short timeouts yourself (URLs get
    cachekit's defaults, see :data:`cachekit.config.REDIS_DEFAULTS`).
    """

    def __init__(
        self,
        *,
        client: redis.asyncio.Redis | None = None,
        sync_client: redis.Redis | None = None,
        prefix: str = "cachekit",
        serializer: Serializer | None = None,
        default_ttl: float | timedelta = 300,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        jitter: float = 0.1,
        double_delete: float = 0.0,
        deadline: float | timedelta = DEFAULT_DEADLINE,
        breaker_failures: int = DEFAULT_FAILURES,
        breaker_cooldown: float | timedelta = DEFAULT_COOLDOWN,
        max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
        local: LocalCache | None = None,
    ) -> None:
        KeySpace(prefix)  # validate now, not at first use
        if max_value_size <= 0:
            raise ConfigurationError("max_value_size must be a positive number of bytes")
        self._prefix = prefix
        self._stats = Stats()
        self._settings = CacheSettings(
            prefix=prefix,
            serializer=serializer,
            default_ttl=to_seconds(default_ttl, name="default_ttl") or 300.0,
            clock=clock,
            random=rng or random.Random(),
            jitter=spread(jitter),
            double_delete=seconds_or_zero(double_delete, "double_delete"),
            max_value_size=max_value_size,
            guard={
                "deadline": to_seconds(deadline, name="deadline"),
                "breaker_failures": breaker_failures,
                "breaker_cooldown": to_seconds(breaker_cooldown, name="breaker_cooldown"),
            },
            local=local,
            stats=self._stats,
            log=LogOnce(logger),
            blooms={},
        )
        self._blooms: dict[str, Bloom] = {}
        self._binding: Binding | None = None
        self._why_unbound = _UNCONFIGURED
        self.sync = SyncCache(self)
        if client is not None or sync_client is not None:
            self.configure(client=client, sync_client=sync_client)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Cache:
        """A configured cache for ``redis://``, ``rediss://``, ``unix://``, ``memory://``,
        ``redis+cluster://`` (Redis Cluster) or ``redis+sentinel://`` (a Sentinel-managed
        primary); the URL forms are listed in :mod:`cachekit.config`.

        ``options`` are those of :data:`cachekit.config.URL_OPTIONS` (they win over the
        query string) plus ``clock``, ``rng``, ``jitter``, ``default_ttl`` and a serializer.

        Usage::

            cache = Cache.from_url("redis://localhost:6379/0?socket_timeout=0.2&prefix=shop")
            cache = Cache.from_url("redis+cluster://10.0.0.1:7000,10.0.0.2:7000")
            cache = Cache.from_url("redis+sentinel://10.0.0.5:26379,10.0.0.6:26379/shop/0")
            cache = Cache.from_url("memory://")
        """
        names = (
            "clock",
            "default_ttl",
            "rng",
            "jitter",
            "double_delete",
            "max_value_size",
            "local",
        )
        # deadline and breaker_* are URL options too: from_url passes them with the URL.
        own = {k: options.pop(k) for k in names if k in options}
        if isinstance(options.get("serializer"), str | None):
            return cls(**own).configure(url, **options)
        return cls(serializer=options.pop("serializer"), **own).configure(url, **options)

    def configure(
        self,
        url: str | None = None,
        *,
        client: redis.asyncio.Redis | None = None,
        sync_client: redis.Redis | None = None,
        **options: Any,
    ) -> Self:
        """Bind the cache to a URL or to injected clients; once per cache.

        Usage::

            cache.configure(os.environ["REDIS_URL"])
        """
        if self._binding is not None:
            raise ConfigurationError("this Cache is already configured; close() it first")
        if url is not None and (client is not None or sync_client is not None):
            raise ConfigurationError("configure() takes a URL or clients, exactly one of them")
        self._binding = bind(
            self._settings, url=url, options=options, client=client, sync_client=sync_client
        )
        set_default_cache(self)  # integrations given no cache use the latest configured one
        return self

    def bound(self) -> Binding:
        """What cachekit's own faces run on: the context and drivers ``configure`` built.

        The one door through which the sync twin, the response cache, sessions and the
        cart reach the configured cache; raises :class:`NotConfigured` before
        :meth:`configure` and after :meth:`close`. Not needed by applications.

        Usage::

            envelope = cache.bound().sync.drive(read_envelope(ctx, key, serializer))
        """
        binding = self._binding
        if binding is None:
            raise NotConfigured(self._why_unbound)
        return binding

    @property
    def counters(self) -> Stats:
        """The live counters behind :meth:`stats`, for faces that count events of their own.

        Usage::

            cache.counters.incr("http_hits")
        """
        return self._stats

    @property
    def breaker(self) -> Breaker | None:
        """The circuit breaker of the configured Redis endpoint (``None`` for memory://).

        Usage::

            cache.breaker.state if cache.breaker else "closed"   # 'closed' | 'open' | ...
        """
        return self.bound().breaker

    @property
    def configured(self) -> bool:
        """Whether :meth:`configure` has bound this cache (and it is not closed)."""
        return self._binding is not None

    def stats(self) -> dict[str, int]:
        """Event counters since the cache was made; no I/O.

        Usage::

            s = cache.stats(); ratio = s["hits"] / max(1, s["hits"] + s["misses"])
        """
        counts = self._stats.snapshot()
        local = self._settings.local
        counts.update(local.stats() if local is not None else dict.fromkeys(LOCAL_COUNTERS, 0))
        return counts

    def cached(
        self,
        ttl: float | timedelta | None = None,
        *,
        key: str | None = None,
        null_ttl: float | timedelta = 0,
        stale: float | timedelta = 0,
        lock: bool = True,
        lock_ttl: float | timedelta = 5.0,
        lock_wait: float | timedelta = 5.0,
        on_lock_timeout: OnLockTimeout = "load",
        early: float = 0.0,
        jitter: float | None = None,
        bloom: str | None = None,
        bloom_key: str | None = None,
        bloom_reject: type[Exception] | None = None,
        tags: Sequence[str] = (),
        serializer: Serializer | None = None,
        max_value_size: int | None = None,
    ) -> Decorator:
        """Cache-aside decorator for ``def`` and ``async def`` functions.

        **Parameters:**

        * **ttl** - seconds (or ``timedelta``) a result stays fresh; default: the cache's.
        * **key** - a template such as ``"product:{product_id}"``; default: module,
          qualified name and the canonical JSON of every argument.
        * **null_ttl** - how long a ``None`` result is cached (``0``: never).
        * **stale** - seconds after ``ttl`` in which the old value is served at once while
          one background rebuild runs across the fleet (``0``: no logical expiry).
        * **lock** - on a cold miss, one caller across all processes loads and the others
          wait for its value (woken when it is written); ``False`` lets each process load.
        * **lock_ttl** - the loader's lease: a crashed loader holds the key at most this long.
        * **lock_wait** - how long a caller waits for another's load (default 5 s).
        * **on_lock_timeout** - then: ``"load"`` without caching, or ``"raise"``
          ``LockTimeout``. A stale value, when one was seen, is served first.
        * **early** - XFetch beta: refresh a fresh value early with a probability that
          grows as expiry nears, scaled by its load time (``1.0`` is the usual; 0: off).
        * **jitter** - spread of the TTLs written (values, null markers, stale windows),
          a fraction ±; default: the cache's (0.1).
        * **bloom** - a Bloom filter (see :meth:`bloom`) the call's identifier must pass:
          a certain miss returns ``None`` (or raises ``bloom_reject``) with no Redis GET
          and no load. The identifier is the first argument, or ``bloom_key`` (a template).
        * **tags** - templates like ``key`` (``["catalog", "shop:{shop_id}"]``):
          ``cache.invalidate_tags("catalog")`` makes every entry carrying the tag a miss,
          in O(1). A tagged read costs one pipelined round trip (value and tag versions).
        * **serializer** - this function's format; default: the cache's.
        * **max_value_size** - bytes above which a result is returned uncached; default:
          the cache's (1 MiB).

        The return annotation is the schema: a hit is decoded into it (dataclasses,
        NamedTuple, TypedDict, Enum, datetimes, UUID, Decimal, tuples, sets, msgspec
        Structs, attrs classes, Pydantic models, and containers of them), and a result
        that would not come back equal and of the same type is returned uncached
        (counted as ``uncacheable``, logged once with the fix). Without an annotation
        only JSON-native results are cached.

        Usage::

            @cache.cached(ttl=300, key="product:{product_id}", null_ttl=30, stale=60)
            async def get_product(product_id: int) -> dict[str, Any] | None: ...

            await get_product(5)
            await get_product.invalidate(product_id=5)
        """
        if on_lock_timeout not in ("load", "raise"):
            raise ConfigurationError("on_lock_timeout must be 'load' or 'raise'")
        if early < 0:
            raise ConfigurationError("early must be >= 0")
        policy = Policy(
            name="",
            ttl=to_seconds(ttl),
            null_ttl=seconds_or_zero(null_ttl, "null_ttl"),
            serializer=serializer,
            stale=seconds_or_zero(stale, "stale"),
            lock=lock,
            lock_ttl=to_seconds(lock_ttl, name="lock_ttl") or 5.0,
            lock_wait=seconds_or_zero(lock_wait, "lock_wait"),
            on_lock_timeout=on_lock_timeout,
            early=early,
            jitter=spread(jitter),
            bloom=bloom,
            bloom_reject=bloom_reject,
            tags=tuple(tags),
            max_value_size=max_value_size,
        )
        return Decorator(self.bound, key=key, policy=policy, bloom_key=bloom_key)

    async def get(self, key: str, default: Any = None, *, type: Any = None) -> Any:
        """The fresh value under ``key``, else ``default``; fails open (a miss).

        Pass ``default=MISSING`` to tell a cached ``None`` from a miss.
        """
        b = self.bound()
        return await b.aio.drive(get(b.ctx, key, default, type))

    async def get_many(self, keys: Iterable[str], *, type: Any = None) -> dict[str, Any]:
        """``{key: value}`` for the given keys that hold fresh values; fails open."""
        b = self.bound()
        return await b.aio.drive(get_many(b.ctx, keys, type))

    async def set(
        self,
        key: str,
        value: Any,
        ttl: float | timedelta | None = None,
        *,
        jitter: float | None = None,
        type: Any = None,
    ) -> None:
        """Store ``value`` under ``key`` for ``ttl`` (default: the cache's default TTL).

        Raises :class:`~cachekit.exceptions.SerializationError` or
        :class:`~cachekit.exceptions.BackendError`.
        """
        b = self.bound()
        await b.aio.drive(set_value(b.ctx, key, value, to_seconds(ttl), spread(jitter), type))

    async def set_many(
        self,
        values: Mapping[str, Any],
        ttl: float | timedelta | None = None,
        *,
        jitter: float | None = None,
        type: Any = None,
    ) -> None:
        """Store every item of ``values`` in one round trip."""
        b = self.bound()
        await b.aio.drive(set_many(b.ctx, values, to_seconds(ttl), spread(jitter), type))

    async def delete(self, key: str) -> bool:
        """Remove ``key``; whether it existed."""
        b = self.bound()
        return await b.aio.drive(delete(b.ctx, key))

    async def invalidate(self, key: str, *, double_delete: float | None = None) -> None:
        """Make ``key`` a miss everywhere and void any load in flight for it.

        The write-path call after a database commit: unlike :meth:`delete` it also voids
        the rebuild lease, so a load that began before the commit cannot write its old
        value back (counted as ``stale_sets_refused``), and it wakes the key's waiters.
        It never raises for Redis being down: the delete is retried in the background.
        ``double_delete`` seconds later it is repeated (default: the cache's setting).
        """
        b = self.bound()
        await b.aio.drive(invalidate(b.ctx, key, double_delete))

    def bloom(
        self,
        name: str,
        *,
        capacity: int | None = None,
        error_rate: float | None = None,
        on_missing: Callable[[str], None] | None = None,
        check_interval: float = 1.0,
    ) -> Bloom:
        """The Bloom filter ``name`` (declared once per cache; no I/O until used).

        **Parameters:**

        * **capacity**, **error_rate** - the geometry (default 1,000,000 and 0.001); every
          process must agree on them. Without them, an already declared filter is returned.
        * **on_missing** - called with the name when the filter is found missing in Redis
          (never built, or lost to a restart or flush): rebuild it from your database.
        * **check_interval** - seconds between checks that the shared filter is unchanged.

        Usage::

            products = cache.bloom("products", capacity=1_000_000, error_rate=0.001)
            await products.rebuild(product_ids)
        """
        existing = self._blooms.get(name)
        if existing is not None and capacity is None and error_rate is None:
            return existing  # a lookup: cache.bloom("products")
        geometry = Geometry.of(capacity or 1_000_000, error_rate or 0.001)
        if existing is not None:
            if existing.geometry != geometry:
                raise ConfigurationError(
                    f"Bloom filter {name!r} is already declared with {existing.geometry}"
                )
            return existing
        state = BloomState(name, geometry, on_missing=on_missing, check_interval=check_interval)
        bloom = self._blooms[name] = Bloom(self.bound, state)
        self._settings.blooms[name] = state
        if self._binding is not None:
            self._binding.adopt(state)
        return bloom

    async def invalidate_tags(self, *tags: str) -> None:
        """Make every entry carrying any of ``tags`` a miss, everywhere, in O(1).

        Never raises for Redis being down: the change is retried in the background.

        Usage::

            await cache.invalidate_tags("catalog")
        """
        b = self.bound()
        await b.aio.drive(invalidate_tags(b.ctx, tags))

    def lock(
        self, name: str, *, ttl: float = 10.0, wait: float = 5.0, fail_open: bool = False
    ) -> Lock:
        """A distributed lock named ``name`` (see :mod:`cachekit.lock`); no I/O until used.

        Usage::

            async with cache.lock("report:42", ttl=10, wait=5) as lock:
                lock.fencing_token
        """
        b = self.bound()
        return Lock(b.aio, b.ctx, name, ttl, wait, fail_open)

    async def close(self) -> None:
        """Close both faces' connections; the cache must be configured again to be used."""
        binding, self._binding = self._binding, None
        self._why_unbound = "this Cache was closed; configure() it again to use it"
        if binding is not None:
            await binding.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        if self._binding is None:
            return f"<Cache prefix={self._prefix!r} unconfigured>"
        return f"<Cache prefix={self._binding.ctx.keyspace.prefix!r} configured>"
