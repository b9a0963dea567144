"""The near cache: a bounded in-process layer in front of Redis for hot keys.

A :class:`LocalCache` keeps ``key -> (envelope bytes, local expiry)`` in an LRU of at most
``max_entries`` entries, shared by a cache's sync and async faces (a lock held for
microseconds, never across an ``await``). :class:`~cachekit.near.backend.SyncNearBackend`
answers a ``Get`` from it and fills it; everything else goes to Redis. Its rules:

* **Never older than Redis says.** A local copy lives ``min(ttl, the key's PTTL)``, the
  PTTL read in the same round trip as the value and counted from when that read was
  *sent*, so a copy never outlives its key.
* **Invalidated by the server.** One background thread (:mod:`cachekit.near.channel`) holds a
  RESP3 connection with ``CLIENT TRACKING ON BCAST PREFIX <prefix>:``; every write to a key
  under the prefix, by any client, drops the local copy. Servers without tracking: pub/sub
  messages that every near cache of the fleet publishes after its writes. On Cluster, one
  such connection per primary, following the topology (:mod:`cachekit.near.cluster`);
  behind Sentinel, on the primary the Sentinels name.
* **No channel, no local answers.** Until the channel is up, and from the moment it drops
  until it is back, every read goes to Redis (pure pass-through), and the layer is flushed
  on the drop and again when the channel returns.
* **No stale fills.** A fill takes a token before it reads; an invalidation (or a flush)
  that arrives while the read is in flight voids the token, and the older value read is
  not installed.
* **Read your writes.** This process's writes drop the keys they touch, before they are
  sent and again when they are answered.

Only values that are cachekit envelopes under the cache's prefix are kept (no Bloom bitmaps,
no lock tokens), and a miss is never kept.

Usage::

    from cachekit import Cache
    from cachekit.near.local import LocalCache

    cache = Cache.from_url("redis://127.0.0.1:6379/0", local=LocalCache(max_entries=10_000, ttl=5))
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Final, Literal

from cachekit.clock import SYSTEM_CLOCK, Clock
from cachekit.config import to_seconds
from cachekit.exceptions import BackendError, ConfigurationError
from cachekit.flow.envelope import MAGIC
from cachekit.stats import LogOnce

if TYPE_CHECKING:
    import redis
    import redis.asyncio

    from cachekit.near.channel import Channel

__all__ = ["FILL_PATIENCE", "LOCAL_COUNTERS", "LocalCache", "Mode"]

FILL_PATIENCE = 1.0
"""Seconds a fill in flight keeps other readers of its key from filling: its read is
presumed lost after that (a failed read gives its token back at once)."""

Mode = Literal["auto", "tracking", "pubsub"]
LOCAL_COUNTERS: Final = (
    "local_hits",
    "local_misses",
    "local_evictions",
    "local_invalidations",
    "local_flushes",
)
_MODES: Final = ("auto", "tracking", "pubsub")
logger = logging.getLogger("cachekit")


class LocalCache:
    """A bounded, thread-safe LRU of envelopes in front of Redis, kept honest by the server.

    **Parameters:**

    * **max_entries** - the most entries kept; the least recently used one goes first.
    * **ttl** - the longest a local copy lives (seconds or a timedelta); a key with a
      shorter Redis TTL gives its copy that shorter life.
    * **mode** - how invalidations arrive: ``"auto"`` (CLIENT TRACKING where the server
      supports it, else pub/sub), ``"tracking"`` or ``"pubsub"`` (forced). Every process
      of a fleet must end up in the same mode: in pub/sub mode, only writes made through a
      near cache are announced.
    * **clock** - where local expiry reads the (monotonic) time; a ``FakeClock`` in tests.

    Usage::

        local = LocalCache(max_entries=10_000, ttl=5)
        cache = Cache.from_url("redis://127.0.0.1:6379/0", local=local)
        local.stats()   # {'local_hits': ..., 'local_misses': ..., ...}
    """

    __slots__ = (
        "_channel",
        "_clock",
        "_counts",
        "_entries",
        "_fills",
        "_lock",
        "_log",
        "_prefix",
        "_ready",
        "_ready_event",
        "_resolved",
        "_scope",
        "_tokens",
        "max_entries",
        "mode",
        "ttl",
    )

    def __init__(
        self,
        max_entries: int = 10_000,
        ttl: float | timedelta = 5.0,
        *,
        mode: Mode = "auto",
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if max_entries < 1:
            raise ConfigurationError(f"max_entries must be at least 1, got {max_entries!r}")
        if mode not in _MODES:
            raise ConfigurationError(f"mode must be one of {_MODES}, got {mode!r}")
        self.max_entries = max_entries
        self.ttl = to_seconds(ttl, name="ttl")
        self.mode: Mode = mode
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        # key -> (token, monotonic time the fill's read was sent) for fills in flight.
        self._fills: dict[str, tuple[int, float]] = {}
        self._tokens = itertools.count(1)
        self._counts = dict.fromkeys(LOCAL_COUNTERS, 0)
        self._ready = False
        self._ready_event = threading.Event()
        self._scope: str | None = None  # "<prefix>:" once started: only keys under it
        self._prefix: str | None = None
        self._resolved: Literal["tracking", "pubsub"] | None = None
        self._channel: Channel | None = None
        self._log = LogOnce(logger)

    # ------------------------------------------------------------------ life cycle

    def start(self, source: str | redis.Redis | redis.asyncio.Redis | None, prefix: str) -> None:
        """Cache keys under ``<prefix>:`` and start the invalidation channel to ``source``.

        ``source`` is a Redis URL or a client (its host, port, database and credentials
        are used for one dedicated connection); a ``redis+cluster://`` URL follows every
        primary of that Cluster (:mod:`cachekit.near.cluster`), and a Sentinel-managed
        client the primary its Sentinels name. ``None`` starts no channel: whoever
        started the cache then reports the channel through :meth:`channel_up`,
        :meth:`channel_down` and :meth:`invalidate` (tests do).

        Usage::

            local.start("redis://127.0.0.1:6379/0", "shop")
        """
        if not prefix:
            raise ConfigurationError("a near cache needs a non-empty key prefix")
        channel: Channel | None = None
        if isinstance(source, str) and source.startswith("redis+cluster:"):
            from cachekit.near.cluster import ClusterChannel

            channel = ClusterChannel(source, prefix, self, mode=self.mode)  # checks source
        elif source is not None:
            from cachekit.near.channel import InvalidationChannel

            channel = InvalidationChannel(source, prefix, self, mode=self.mode)  # checks source
        with self._lock:
            if self._scope is not None:
                raise ConfigurationError(
                    "this LocalCache is already started; use one LocalCache per Cache"
                )
            self._prefix, self._scope = prefix, prefix + ":"
        if channel is not None:
            self._channel = channel
            channel.start()

    def close(self) -> None:
        """Stop the channel and drop everything; reads pass through until started again."""
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.stop()
        with self._lock:
            self._scope = self._prefix = None
            self._resolved = None
            self._go_dark()

    async def aclose(self) -> None:
        """:meth:`close` without blocking the event loop (the channel thread is joined)."""
        await asyncio.to_thread(self.close)

    @property
    def ready(self) -> bool:
        """Whether the invalidation channel is up, so that local copies are served."""
        return self._ready

    def wait_ready(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for the channel; whether it is up."""
        return self._ready_event.wait(timeout)

    @property
    def active_mode(self) -> Literal["tracking", "pubsub"] | None:
        """How invalidations arrive now that the channel was established (``None``: not yet)."""
        return self._resolved

    @property
    def publish_channel(self) -> str | None:
        """Where this process announces its writes: the pub/sub channel, or ``None``.

        Announced unless the server is known to track keys itself: in ``"auto"`` mode
        before the first connection, writes are announced too, in case it does not.
        """
        prefix = self._prefix
        if prefix is None or self.mode == "tracking" or self._resolved == "tracking":
            return None
        return f"{prefix}:__local__"

    def follows(self, node: str | None) -> bool:
        """Whether a value read from Cluster node ``node`` may be kept: that node's
        invalidations have been followed since the layer last went dark (``None``: not a
        Cluster, always). A node the topology has not shown yet (a new primary, a promoted
        replica) is not followed until its channel is up.
        """
        channel = self._channel
        return node is None or channel is None or channel.follows(node)

    def stats(self) -> dict[str, int]:
        """The counters of :data:`LOCAL_COUNTERS`, no I/O.

        * ``local_hits`` / ``local_misses`` - reads answered here / sent on to Redis;
        * ``local_evictions`` - entries dropped to stay within ``max_entries``;
        * ``local_invalidations`` - local copies (or fills in flight) dropped because
          their key was written, here or anywhere;
        * ``local_flushes`` - times the whole layer was dropped (channel lost, FLUSHALL).
        """
        with self._lock:
            return dict(self._counts)

    def __len__(self) -> int:
        return len(self._entries)

    # ------------------------------------------------------------------ the read path

    def cacheable(self, key: str) -> bool:
        """Whether ``key`` is one this layer may keep (under the started prefix)."""
        scope = self._scope
        return scope is not None and key.startswith(scope)

    def lookup(self, key: str) -> bytes | None:
        """The fresh local copy of ``key``, or ``None`` (counted as a hit or a miss)."""
        if not self.cacheable(key):
            return None
        with self._lock:
            entry = self._entries.get(key) if self._ready else None
            if entry is not None:
                if entry[1] > self._clock.monotonic():
                    self._entries.move_to_end(key)
                    self._counts["local_hits"] += 1
                    return entry[0]
                del self._entries[key]
            self._counts["local_misses"] += 1
            return None

    def begin(self, key: str) -> int:
        """Take a fill token for ``key`` *before* reading it from Redis; 0: do not fill.

        An invalidation of the key or a flush voids the token, so :meth:`install` refuses
        the value that read brings back. One fill per key at a time: while one is in
        flight (for less than :data:`FILL_PATIENCE`), other readers read through without
        filling. (A later fill used to void the earlier one, and a hot key read without a
        pause was never kept: every read's fill was voided by the next read's.)
        """
        if not self.cacheable(key):
            return 0
        with self._lock:
            if not self._ready:
                return 0
            now = self._clock.monotonic()
            fill = self._fills.get(key)
            if fill is not None and now - fill[1] < FILL_PATIENCE:
                return 0
            token = next(self._tokens)
            self._fills[key] = (token, now)
            return token

    def install(self, key: str, token: int, value: bytes | None, remaining: float | None) -> bool:
        """Keep ``value``, read with ``token``, if nothing voided the token; whether kept.

        ``remaining`` is the key's Redis TTL in seconds when it was read (``math.inf``:
        none; ``None``: absent). The copy lives ``min(ttl, remaining)`` from when the read
        was sent.
        """
        with self._lock:
            fill = self._fills.get(key)
            if fill is None or fill[0] != token:
                return False
            del self._fills[key]
            if value is None or remaining is None or not value.startswith(MAGIC):
                return False
            expires = fill[1] + min(self.ttl, remaining)
            if expires <= self._clock.monotonic():
                return False
            self._entries[key] = (value, expires)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
                self._counts["local_evictions"] += 1
            return True

    def abort(self, key: str, token: int) -> None:
        """Give up the fill of ``key`` taken with ``token`` (its read failed)."""
        with self._lock:
            fill = self._fills.get(key)
            if fill is not None and fill[0] == token:
                del self._fills[key]

    # ------------------------------------------------------------------ invalidation

    def invalidate(self, keys: Iterable[str]) -> None:
        """Drop the local copies of ``keys`` and void their fills in flight."""
        with self._lock:
            dropped = 0
            for key in keys:
                dropped += (self._entries.pop(key, None) is not None) + (
                    self._fills.pop(key, None) is not None
                )
            self._counts["local_invalidations"] += dropped

    def flush(self) -> None:
        """Drop every local copy and void every fill in flight (counted)."""
        with self._lock:
            self._entries.clear()
            self._fills.clear()
            self._counts["local_flushes"] += 1

    def channel_up(self, mode: Literal["tracking", "pubsub"]) -> None:
        """The invalidation channel is (re)established in ``mode``: start serving afresh.

        Anything kept from before is dropped first: invalidations sent while the channel
        was down were never seen.
        """
        with self._lock:
            self._entries.clear()
            self._fills.clear()
            self._resolved = mode
            self._ready = True
        self._ready_event.set()

    def channel_down(self) -> None:
        """The invalidation channel dropped: flush everything and pass every read through."""
        with self._lock:
            self._go_dark()

    def publish_failed(self, exc: BackendError) -> None:
        """Log (once per error type) a write announcement that could not be sent."""
        self._log.warning(
            ("near-publish", type(exc)),
            "cachekit: a write was not announced to other near caches (%s); their copies "
            "expire within the local ttl",
            exc,
        )

    def _go_dark(self) -> None:
        # Lock held. A flush is counted once per loss, not per failed reconnect.
        if self._ready or self._entries:
            self._counts["local_flushes"] += 1
        self._ready = False
        self._ready_event.clear()
        self._entries.clear()
        self._fills.clear()
