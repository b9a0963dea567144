"""The near cache's invalidation channel: one daemon thread, one dedicated Redis connection.

Preferred, where the server supports it: server-assisted client-side caching. The
connection speaks RESP3 (``HELLO 3``) and turns on ``CLIENT TRACKING ON BCAST PREFIX
<prefix>:``; from then on the server pushes an ``invalidate`` message with the keys written
under the prefix by any client, and a null payload (FLUSHALL, FLUSHDB) for everything. BCAST
costs the server no memory per key read, and the one connection serves both faces.

Fallback, where the server refuses ``HELLO 3`` or ``CLIENT TRACKING``: the connection
subscribes to ``<prefix>:__local__`` and every near cache of the fleet publishes the keys
of its writes there (:mod:`cachekit.near.backend`). Writes made without a near cache are
then seen only when local copies expire (``ttl``).

Liveness: an error or EOF on the connection flushes the local layer and makes it pass every
read through (:meth:`~cachekit.near.local.LocalCache.channel_down`); the thread reconnects with a
short capped backoff and serves again only once the channel is back. A connection that went
silent (a partition) is found by a PING after 1 s without traffic, which must be answered
within 1 s.

Why not redis-py's own client-side cache (``cache_config=CacheConfig()`` with
``protocol=3``): it is sync only (``redis.asyncio`` has none); it tracks each pooled
connection in default mode (no BCAST prefixes), so the server remembers every key read and
invalidations are read lazily, when that connection is next used; its entries have no TTL
bound; it caches only plain commands (not the EVALSHA reads cachekit also makes); and it
offers no hook to know that its invalidations stopped flowing, which is when a near cache
must stop serving.

Usage::

    channel = InvalidationChannel("redis://127.0.0.1:6379/0", "shop", local)
    channel.start()
    ...
    channel.stop()
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.connection
import redis.sentinel
import redis.utils
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from cachekit.backends.redis import PER_READ_TIMEOUT
from cachekit.exceptions import ConfigurationError
from cachekit.stats import LogOnce

__all__ = ["Channel", "Endpoint", "InvalidationChannel", "Sink", "Source", "node_target"]

Source = str | redis.Redis | redis.asyncio.Redis
ChannelMode = Literal["tracking", "pubsub"]

_POLL: Final = 0.1  # how often the thread looks whether it was stopped
_PING_AFTER: Final = 1.0  # seconds of silence before a PING checks the connection
_PING_WITHIN: Final = 1.0  # how long that PING may take
_IO_TIMEOUT: Final = 1.0  # connect, and read the rest of a reply that has begun
_BACKOFF_MIN: Final = 0.05
_BACKOFF_MAX: Final = 1.0
_JOIN: Final = 3.0  # longer than any one blocking step of the thread (_IO_TIMEOUT)
# What identifies the server and the account: copied from a client's pool, nothing else
# (its timeouts, retries and protocol are the channel's own).
_IDENTITY: Final = frozenset(
    {"host", "port", "path", "db", "username", "password", "credential_provider"}
)
_NOTHING: Final = object()
_CONNECTIONS: Final = ("Connection", "SSLConnection", "UnixDomainSocketConnection")

logger = logging.getLogger("cachekit")


class Sink(Protocol):
    """What the channel reports to (a :class:`~cachekit.near.local.LocalCache`)."""

    def channel_up(self, mode: ChannelMode) -> None:
        """The channel is established; invalidations flow from now on."""
        ...

    def channel_down(self) -> None:
        """The channel is lost; invalidations may be missed from now on."""
        ...

    def invalidate(self, keys: Iterable[str]) -> None:
        """These keys were written."""
        ...

    def flush(self) -> None:
        """Everything may have changed (FLUSHALL, FLUSHDB)."""
        ...


class Channel(Protocol):
    """What a :class:`~cachekit.near.local.LocalCache` holds: one channel, or a Cluster's many."""

    def start(self) -> None:
        """Start following invalidations (on a daemon thread)."""
        ...

    def stop(self) -> None:
        """Stop; the sink is told the channel is down."""
        ...

    def follows(self, node: str) -> bool:
        """Whether Cluster node ``node``'s invalidations are followed."""
        ...


class InvalidationChannel:
    """Keeps one invalidation connection alive on a daemon thread and feeds a :class:`Sink`.

    **Parameters:**

    * **source** - a Redis URL, or a client whose host, port, database and credentials to use.
    * **prefix** - the cache's key prefix: keys under ``<prefix>:`` are tracked.
    * **sink** - who is told of invalidations and of the channel's state.
    * **mode** - ``"auto"`` (tracking, else pub/sub), ``"tracking"`` or ``"pubsub"``.

    Usage::

        channel = InvalidationChannel(sync_client, "shop", local, mode="auto")
        channel.start()
    """

    def __init__(
        self, source: Source | Endpoint, prefix: str, sink: Sink, *, mode: str = "auto"
    ) -> None:
        # Checked now: a wrong source fails start().
        self._target = source if isinstance(source, Endpoint) else _target(source)
        self._prefix = prefix
        self._sink = sink
        self._mode = mode
        self._fallback = mode == "pubsub"
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._log = LogOnce(logger)

    @property
    def channel(self) -> str:
        """The pub/sub channel of the fallback mode."""
        return f"{self._prefix}:__local__"

    def follows(self, node: str) -> bool:
        """Always: one server, no Cluster nodes."""
        return True

    def start(self) -> None:
        """Start the thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="cachekit-near-invalidations", daemon=True
            )
            self._thread.start()

    def stop(self, *, wait: bool = True) -> None:
        """Stop the thread; it ends within a poll interval, and the sink is told.

        ``wait=False`` returns at once (the thread ends on its own).
        """
        self._stopped.set()
        thread = self._thread
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN)

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        backoff = _BACKOFF_MIN
        lost = False
        while not self._stopped.is_set():
            pool: redis.ConnectionPool | None = None
            try:
                pool, conn, mode = self._open()
                if self._stopped.is_set():  # stopped while connecting: never report "up"
                    break
                self._sink.channel_up(mode)
                if lost:
                    logger.info("cachekit: near cache invalidations are back (%s)", mode)
                lost, backoff = False, _BACKOFF_MIN
                self._listen(conn, mode)
            except Exception as exc:  # any failure: flush, reconnect later, never die
                self._sink.channel_down()
                if self._stopped.is_set():
                    break
                lost = True
                self._log.warning(
                    ("near-channel", type(exc)),
                    "cachekit: near cache invalidations lost (%s); reading from Redis only "
                    "until they are back",
                    exc,
                )
                self._stopped.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
            finally:
                if pool is not None:
                    with suppress(Exception):
                        pool.disconnect()
        self._sink.channel_down()

    def _open(self) -> tuple[redis.ConnectionPool, Any, ChannelMode]:
        """A connection on which invalidations now flow, and in which mode."""
        if not self._fallback:
            pool = self._target.pool(3)
            try:
                conn: Any = pool.get_connection()
                # redis-py has no public hook for the push messages of a connection; its
                # own client-side cache registers its handler on the parser just so.
                conn._parser.set_invalidation_push_handler(self._on_invalidate)
                conn.send_command("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", self._prefix + ":")
                conn.read_response()
                return pool, conn, "tracking"
            except ResponseError as exc:  # HELLO 3 or CLIENT TRACKING refused
                pool.disconnect()
                if self._mode == "tracking":
                    raise
                self._fallback = True
                logger.info("cachekit: no CLIENT TRACKING (%s); near cache uses pub/sub", exc)
            except BaseException:
                pool.disconnect()
                raise
        pool = self._target.pool(2)
        try:
            conn = pool.get_connection()
            conn.send_command("SUBSCRIBE", self.channel)
            conn.read_response()  # the subscribe confirmation: messages flow from here on
            return pool, conn, "pubsub"
        except BaseException:
            pool.disconnect()
            raise

    def _listen(self, conn: Any, mode: ChannelMode) -> None:
        """Read invalidations until stopped; raise when the connection fails or goes silent."""
        heard = time.monotonic()
        pinged: float | None = None
        while not self._stopped.is_set():
            reply = _read(conn)  # tracking: pushes reach _on_invalidate inside the read
            if reply is not _NOTHING:
                if mode == "pubsub":
                    self._on_message(reply)
                heard, pinged = time.monotonic(), None
                continue
            now = time.monotonic()
            if pinged is not None:
                if now - pinged > _PING_WITHIN:
                    raise TimeoutError(f"no reply to PING within {_PING_WITHIN:g} s")
            elif now - heard >= _PING_AFTER:
                conn.send_command("PING")
                pinged = now

    def _on_invalidate(self, message: Any) -> None:
        # [b"invalidate", [keys...]] or [b"invalidate", None] (everything).
        keys = message[1] if len(message) > 1 else None
        if keys is None:
            self._sink.flush()
        else:
            self._sink.invalidate(_text(key) for key in keys)

    def _on_message(self, reply: Any) -> None:
        # [b"message", channel, b"key\nkey..."]; subscribe confirmations and pongs aside.
        if isinstance(reply, list) and len(reply) == 3 and _text(reply[0]) == "message":
            self._sink.invalidate(_text(reply[2]).split("\n"))


def _read(conn: Any) -> Any:
    """The next reply or push within a poll interval, else ``_NOTHING``.

    Each blocking call gives up the GIL, and taking it back from a busy thread can cost a
    switch interval (5 ms). hiredis keeps a partial reply across a timeout, so one timed
    read waits for the next message; the pure-Python parser does not, so it polls first,
    as does redis-py before 8.0, which has no per-read timeout.
    """
    if redis.utils.HIREDIS_AVAILABLE and PER_READ_TIMEOUT:
        try:
            return conn.read_response(push_request=True, timeout=_POLL, disconnect_on_error=False)
        except RedisTimeoutError:
            return _NOTHING
    if conn.can_read(timeout=_POLL):
        return conn.read_response(push_request=True)
    return _NOTHING


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the channel connects: a pool of one connection with the channel's own settings.

    ``pool(protocol)`` builds it: RESP3 for tracking, RESP2 for pub/sub.
    """

    pool: Callable[[int], redis.ConnectionPool]


def node_target(host: str, port: int, identity: dict[str, Any]) -> Endpoint:
    """The :class:`Endpoint` of one server (a Cluster node): ``identity`` holds its
    ``username`` and ``password``.

    Usage::

        channel = InvalidationChannel(node_target("10.0.0.7", 7000, {}), "shop", sink)
    """
    return _plain(redis.connection.Connection, {**identity, "host": host, "port": port})


def _target(source: Source) -> Endpoint:
    """How to reach ``source``'s server, database and account, with the channel's own
    timeouts, retries and protocol; options that are not redis-py's (a cachekit URL's
    ``prefix=``, say) are left behind."""
    pool: Any = (
        redis.ConnectionPool.from_url(source)
        if isinstance(source, str)
        else getattr(source, "connection_pool", None)
    )
    if isinstance(pool, redis.sentinel.SentinelConnectionPool):
        return _sentinel(pool)
    if isinstance(pool, redis.asyncio.sentinel.SentinelConnectionPool):
        raise ConfigurationError(
            "a near cache behind Sentinel needs a sync master_for client (or a URL)"
        )
    # The first redis-py class in its ancestry decides: a subclass of a plain one
    # (cachekit's budgeted connection) connects the same way, and an async class has a
    # sync twin of its name.
    first = next(
        (
            c
            for c in getattr(pool, "connection_class", object).__mro__
            if c.__module__ == "redis" or c.__module__.startswith("redis.")
        ),
        None,
    )
    if first is not None and first.__name__ in _CONNECTIONS:
        return _plain(getattr(redis.connection, first.__name__), _identity(pool))
    raise ConfigurationError(
        "a near cache needs a Redis URL, or a sync client on a plain, TLS, unix-socket or "
        f"Sentinel-managed connection, not {type(source).__name__}"
    )


def _identity(pool: Any) -> dict[str, Any]:
    return {
        name: value
        for name, value in pool.connection_kwargs.items()
        if name in _IDENTITY or name.startswith("ssl_")
    }


def _settings(protocol: int) -> dict[str, Any]:
    """The channel's own connection settings: short timeouts, no hidden retries."""
    return {
        "protocol": protocol,
        "socket_timeout": _IO_TIMEOUT,
        "socket_connect_timeout": _IO_TIMEOUT,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
    }


def _plain(
    connection_class: type[redis.connection.AbstractConnection], kwargs: dict[str, Any]
) -> Endpoint:
    def pool(protocol: int) -> redis.ConnectionPool:
        return redis.ConnectionPool(
            connection_class=connection_class, **kwargs, **_settings(protocol)
        )

    return Endpoint(pool)


def _sentinel(source: Any) -> Endpoint:
    """The primary that ``source``'s Sentinels name, asked again at every (re)connect.

    The channel follows the primary exactly as the data connections do: when a failover
    demotes the old primary, the Sentinels have it drop its clients, and both reconnect to
    the new one. (Asking the Sentinels on a timer instead would move the channel first,
    while the data connections still read and write the old primary, not yet demoted, and
    its writes would go unseen.)"""
    manager, service = source.sentinel_manager, source.service_name
    kwargs = _identity(source)
    kwargs.pop("host", None), kwargs.pop("port", None)
    if issubclass(source.connection_class, redis.connection.SSLConnection):
        kwargs["ssl"] = True  # the pool picks its TLS twin of the Sentinel-managed class

    def pool(protocol: int) -> redis.ConnectionPool:
        sentinel_pool: Any = redis.sentinel.SentinelConnectionPool  # untyped in redis-py
        made: redis.ConnectionPool = sentinel_pool(
            service, manager, **kwargs, **_settings(protocol)
        )
        return made

    return Endpoint(pool)
