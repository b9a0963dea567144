"""The Redis (and Valkey) backend: redis-py clients, one pool per backend, errors translated.

:func:`connect` builds both backends from a URL with cachekit's time budget (short socket
and connect timeouts, no retry chain, a bounded pool whose wait is bounded too);
:class:`SyncRedisBackend` and :class:`AsyncRedisBackend` wrap clients you built yourself.
A ``redis+sentinel://`` URL gets the same backends over Sentinel-managed clients
(:mod:`.sentinel`); Redis Cluster has backends of its own (:mod:`.cluster`).
Every redis-py or socket error leaves this module as a
:class:`~cachekit.exceptions.BackendError` through :func:`translate_error`, the one place
that maps them.

Usage::

    sync_backend, async_backend = connect("redis://127.0.0.1:6379/0", {"socket_timeout": 0.2})
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, TypeVar

import redis
import redis.asyncio
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterDownError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from cachekit.backends.guard import DEADLINE, time_left
from cachekit.backends.held import AsyncHeldConnections, SyncHeldConnections, reply_options
from cachekit.backends.ops import Op
from cachekit.config import REDIS_DEFAULTS
from cachekit.exceptions import BackendError, BackendTimeout, BackendUnavailable, ConfigurationError

__all__ = [
    "REDIS_ERRORS",
    "AsyncRedisBackend",
    "SyncRedisBackend",
    "budgeted",
    "client_kwargs",
    "connect",
    "reply_options",
    "translate_error",
]

T = TypeVar("T")

# Most specific first: the first match wins. A Cluster that is down or failing over, or
# whose nodes cannot be reached, is unavailable (these are error replies or client
# errors in redis-py, but no answer to the operation).
_ERROR_MAP: tuple[tuple[tuple[type[BaseException], ...], type[BackendError]], ...] = (
    ((RedisTimeoutError, TimeoutError, asyncio.TimeoutError), BackendTimeout),
    (
        (RedisConnectionError, OSError, ClusterDownError, TryAgainError, RedisClusterException),
        BackendUnavailable,
    ),
    ((RedisError,), BackendError),
)
#: What :func:`translate_error` translates: everything redis-py or a socket raises.
REDIS_ERRORS = (RedisError, OSError, RedisClusterException)


def translate_error(exc: BaseException) -> BackendError:
    """The cachekit error for a redis-py or socket error (chain it with ``from exc``).

    Usage::

        except (RedisError, OSError) as exc:
            raise translate_error(exc) from exc
    """
    for sources, target in _ERROR_MAP:
        if isinstance(exc, sources):
            return target(f"{type(exc).__name__}: {exc}")
    return BackendError(f"{type(exc).__name__}: {exc}")


def _check_client(client: Any) -> None:
    kwargs = client.connection_pool.connection_kwargs
    if kwargs.get("decode_responses"):
        raise ConfigurationError(
            "the injected Redis client has decode_responses=True; cachekit stores bytes, "
            "so build the client with decode_responses=False (the default)"
        )


class SyncRedisBackend:
    """The synchronous backend over a ``redis.Redis`` client.

    With ``hold=True`` (the pool is this backend's alone, as :func:`connect` builds it)
    commands run on connections the backend keeps (:mod:`cachekit.backends.held`) instead
    of a pool checkout per command; an injected client's pool is shared, so it is not held.

    Usage::

        backend = SyncRedisBackend(redis.Redis(socket_timeout=0.25))
        backend.run(Get("p:{k}"))
    """

    __slots__ = ("_execute", "_held", "client")

    def __init__(self, client: redis.Redis, *, hold: bool = False) -> None:
        _check_client(client)
        self.client = client
        self._held = SyncHeldConnections(client) if hold else None
        self._execute: Callable[..., Any] = (
            self._held.execute if self._held is not None else client.execute_command
        )

    def report_handshakes(self, heard: Callable[[], None]) -> None:
        """Call ``heard`` whenever a held connection (re)connects (the guard: its breaker).

        Usage::

            backend.report_handshakes(breaker.heard)
        """
        if self._held is not None:
            self._held.heard = heard

    def run(self, op: Op[T]) -> T:
        """Send ``op`` and parse its reply."""
        execute = self._execute
        try:
            kind = op.kind
            if kind == "command":
                return op.parse(execute(*op.command()))
            if kind == "script":
                script = op.script
                assert script is not None
                keys, args = op.script_call()
                try:
                    reply = execute("EVALSHA", script.sha, len(keys), *keys, *args)
                except NoScriptError:
                    reply = execute("EVAL", script.source, len(keys), *keys, *args)
                return op.parse(reply)
            if self._held is not None:
                return op.parse(self._held.pipeline(op.pipeline()))
            with self.client.pipeline(transaction=False) as pipe:
                queue: Callable[..., Any] = pipe.execute_command
                for command in op.pipeline():
                    queue(*command, **reply_options(command))
                return op.parse(pipe.execute())
        except REDIS_ERRORS as exc:
            raise translate_error(exc) from exc

    def close(self) -> None:
        """Close the client and its pool."""
        if self._held is not None:
            self._held.release()
        self.client.close()

    def primaries(self) -> dict[str, SyncRedisBackend]:
        """This backend under its server's address: the one primary there is (no I/O).

        :class:`~cachekit.backends.cluster.SyncClusterBackend` and
        :class:`~cachekit.backends.sentinel.SyncSentinelBackend` answer for their own
        topologies, so tools that report per node (``cachekit stats``) ask any backend.

        Usage::

            SyncRedisBackend(redis.Redis(port=6380)).primaries()    # {'localhost:6380': ...}
        """
        kwargs = self.client.get_connection_kwargs()
        address = kwargs.get("path") or f"{kwargs.get('host', 'localhost')}:{kwargs.get('port')}"
        return {str(address): self}


class AsyncRedisBackend:
    """The asynchronous backend over a ``redis.asyncio.Redis`` client.

    ``hold=True``: as for :class:`SyncRedisBackend`.

    Usage::

        backend = AsyncRedisBackend(redis.asyncio.Redis(socket_timeout=0.25))
        await backend.run(Get("p:{k}"))
    """

    __slots__ = ("_execute", "_held", "client")

    def __init__(self, client: redis.asyncio.Redis, *, hold: bool = False) -> None:
        _check_client(client)
        self.client = client
        self._held = AsyncHeldConnections(client) if hold else None
        self._execute: Callable[..., Awaitable[Any]] = (
            self._held.execute if self._held is not None else client.execute_command
        )

    def report_handshakes(self, heard: Callable[[], None]) -> None:
        """As :meth:`SyncRedisBackend.report_handshakes`."""
        if self._held is not None:
            self._held.heard = heard

    async def run(self, op: Op[T]) -> T:
        """Send ``op`` and parse its reply."""
        execute = self._execute
        try:
            kind = op.kind
            if kind == "command":
                return op.parse(await execute(*op.command()))
            if kind == "script":
                script = op.script
                assert script is not None
                keys, args = op.script_call()
                try:
                    reply = await execute("EVALSHA", script.sha, len(keys), *keys, *args)
                except NoScriptError:
                    reply = await execute("EVAL", script.source, len(keys), *keys, *args)
                return op.parse(reply)
            if self._held is not None:
                return op.parse(await self._held.pipeline(op.pipeline()))
            async with self.client.pipeline(transaction=False) as pipe:
                for command in op.pipeline():
                    pipe.execute_command(*command, **reply_options(command))
                return op.parse(await pipe.execute())
        except REDIS_ERRORS as exc:
            raise translate_error(exc) from exc

    async def close(self) -> None:
        """Close the client and its pool."""
        if self._held is not None:
            await self._held.release()
        await self.client.aclose()


# Whether sync connections take read_response(timeout=...): redis-py 8.0 and newer.
PER_READ_TIMEOUT: Final = "timeout" in inspect.signature(redis.Connection.read_response).parameters

#: How far past its deadline a sync reply may be awaited, to spare the hit path two system
#: calls. A read that starts with at least ``socket_timeout - READ_SLACK`` of its budget
#: left (every read of a call that got its connection at once) keeps the socket's own
#: timeout, which ends it at most this long after the deadline; only a read that starts
#: later is given a timeout of its own (``settimeout`` twice: ~1.8 µs on the development
#: machine, ~2% of a loopback hit). Set it to ``0.0`` for replies cut exactly at the deadline.
READ_SLACK: float = 0.001


class _Budgeted:
    """Mixin for a sync connection class: a reply is awaited only until the deadline.

    The guard (:mod:`cachekit.backends.guard`) publishes the running operation's deadline,
    so a reply that started late in the budget is not granted a whole ``socket_timeout``
    more (within :data:`READ_SLACK`). redis-py 8 takes a per-read
    ``read_response(timeout=...)``; older releases get the same effect from the socket's
    own timeout, set for this one read. A read that times out disconnects, so no late
    reply is ever read by the next command.
    """

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        deadline = DEADLINE.get()  # time_left(), inline: this runs on every reply
        if deadline is None or "timeout" in kwargs:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        left = deadline - time.monotonic()
        own = self.socket_timeout  # type: ignore[attr-defined]
        if own is not None and left >= own - READ_SLACK:
            # The socket's own timeout ends this read by the deadline (+ READ_SLACK).
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        if PER_READ_TIMEOUT:
            kwargs["timeout"] = max(left, 0.001)
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        sock = self._sock  # type: ignore[attr-defined]
        if sock is None:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        before = sock.gettimeout()
        sock.settimeout(max(left, 0.001))
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        finally:
            if self._sock is sock:  # type: ignore[attr-defined]  # still connected
                sock.settimeout(before)


def budgeted(base: type[redis.Connection]) -> type[redis.Connection]:
    """``base`` (a sync connection class) with replies awaited only until the deadline.

    Usage::

        pool.connection_class = budgeted(pool.connection_class)
    """
    return type(f"Budgeted{base.__name__}", (_Budgeted, base), {})


class _AsyncBudgeted:
    """For an async connection class: under the guard, the deadline is the only timer.

    The async guard bounds every call by cancelling it at its deadline (one timer per event
    loop). redis-py would arm timers of its own per command as well: ``asyncio.wait_for``
    around every send (a task per send, and a cancellation landing as the send completes
    can be swallowed, CPython gh-86296) and an ``asyncio.timeout`` around every read; that
    is ~40 µs of CPU per command on the development machine (``python -m loadtests
    hitpath``). So while a guarded call runs (:data:`~cachekit.backends.guard.DEADLINE` is
    set in its context) the connection reports no socket timeout of its own, and redis-py
    sends and reads without those timers; anything else (connects, the pool's checks,
    unguarded calls) keeps the configured one. A read that starts past the deadline
    disconnects (the reply is never read by the next command) and fails at once. redis-py's
    own ``timeout=`` argument is not used: on the async backend it returns ``None`` and
    leaves the reply pending on the connection.
    """

    _own_socket_timeout: float | None = None

    @property
    def socket_timeout(self) -> float | None:
        return None if DEADLINE.get() is not None else self._own_socket_timeout

    @socket_timeout.setter
    def socket_timeout(self, value: float | None) -> None:
        self._own_socket_timeout = value

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        left = time_left()
        if left is not None and left <= 0:
            await self.disconnect(nowait=True)  # type: ignore[attr-defined]
            raise RedisTimeoutError("the operation's deadline passed before its reply")
        return await super().read_response(*args, **kwargs)  # type: ignore[misc]


def abudgeted(base: type[AbstractConnection]) -> type[AbstractConnection]:
    """``base`` (an async connection class) with replies awaited only until the deadline.

    Usage::

        pool.connection_class = abudgeted(pool.connection_class)
    """
    return type(f"Budgeted{base.__name__}", (_AsyncBudgeted, base), {})


def _budgeted(pool: redis.ConnectionPool) -> redis.ConnectionPool:
    pool.connection_class = budgeted(pool.connection_class)
    return pool


def client_kwargs(options: Mapping[str, Any]) -> dict[str, Any]:
    """redis-py keyword arguments for cachekit's ``options`` over its defaults.

    Usage::

        pool = redis.BlockingConnectionPool.from_url(url, **client_kwargs({"db": 2}))
    """
    settings = {**REDIS_DEFAULTS, **options}
    settings["timeout"] = settings.pop("pool_timeout")
    # The guard admits at most max_connections operations at once; the extra connection
    # is the notification listener's, so operations never queue inside redis-py's pool.
    settings["max_connections"] += 1
    if "ssl_cert_reqs" in settings and settings["ssl_cert_reqs"] == "none":
        settings["ssl_cert_reqs"] = None
    return settings


def connect(url: str, options: Mapping[str, Any]) -> tuple[SyncRedisBackend, AsyncRedisBackend]:
    """Both backends for ``url`` (``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://``).

    No I/O yet. ``options`` are the ``redis``-scoped options of
    :data:`cachekit.config.URL_OPTIONS`; anything not given takes
    :data:`cachekit.config.REDIS_DEFAULTS`. ``redis+cluster://`` needs
    :func:`cachekit.backends.cluster.connect_cluster` (``Cache.from_url`` picks it).
    """
    if url.startswith("redis+sentinel:"):
        from cachekit.backends.sentinel import connect_sentinel

        return connect_sentinel(url, options)
    if url.startswith("redis+cluster:"):
        raise ConfigurationError(
            "a redis+cluster:// URL needs cluster backends: use "
            "cachekit.backends.cluster.connect_cluster (Cache.from_url does)"
        )
    kwargs = client_kwargs(options)
    # One immediate retry, on a broken connection only: a pooled connection that died with
    # a restarted server is replaced at once, while a hung server (a timeout) is never
    # waited for twice and a refused connect costs microseconds.
    sync_pool = _budgeted(
        redis.BlockingConnectionPool.from_url(
            url, retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)), **kwargs
        )
    )
    async_pool = redis.asyncio.BlockingConnectionPool.from_url(
        url, retry=AsyncRetry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)), **kwargs
    )
    async_pool.connection_class = abudgeted(async_pool.connection_class)
    return (
        SyncRedisBackend(redis.Redis.from_pool(sync_pool), hold=True),
        AsyncRedisBackend(redis.asyncio.Redis.from_pool(async_pool), hold=True),
    )
