"""The Redis deployment a command talks to: its URL and key prefix resolved, one client.

The URL is read by the library's own :func:`~cachekit.config.parse_url`, so it takes the
same forms and options as ``Cache.from_url`` (``?prefix=shop&socket_timeout=1``): one
server (``redis://``, ``rediss://``, ``unix://``), a Sentinel-managed primary
(``redis+sentinel://``) or a Redis Cluster (``redis+cluster://``). Operations run on the
library's own sync backend for that form, so they are routed as the library routes them
(on Cluster: a keyed command to its slot's primary, ``SCAN`` over every primary, a
pipeline split per node) and redis-py errors arrive as
:class:`~cachekit.exceptions.BackendError`. :meth:`Server.primaries` gives a backend per
primary for what is asked of each node (``INFO``). Bloom filter commands get a
:class:`~cachekit.Cache` from :meth:`Server.cache`: on the very same client for one
server or Sentinel, on a second client of the same URL for Cluster.

Usage::

    with Server.open("redis://127.0.0.1:6379/0", prefix=None) as server:
        raw = server.run(Get(server.keyspace.value("product:5")))
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType
from typing import Final, Literal, Protocol, Self, TypeVar

from cachekit.backends.base import SyncBackend
from cachekit.backends.cluster import connect_cluster
from cachekit.backends.ops import Op
from cachekit.backends.redis import SyncRedisBackend, connect
from cachekit.cache import Cache
from cachekit.cli.output import Failure, redact
from cachekit.config import ParsedUrl, parse_url
from cachekit.contrib import default_cache, set_default_cache
from cachekit.flow.keys import KeySpace

__all__ = [
    "CLI_DEADLINE",
    "CLI_TIMEOUTS",
    "DEFAULT_PREFIX",
    "DEFAULT_URL",
    "Deployment",
    "Primaries",
    "Server",
]

T = TypeVar("T")

DEFAULT_URL: Final = "redis://127.0.0.1:6379/0"
DEFAULT_PREFIX: Final = "cachekit"  # Cache's default prefix (a test keeps them equal)

# An app's cache gives up after 250 ms; an operator's SCAN, BITCOUNT or Bloom bitmap
# download and merge may rightly take longer. The URL's own options still win.
CLI_TIMEOUTS: Final = {"socket_timeout": 10.0, "socket_connect_timeout": 2.0, "pool_timeout": 10.0}
CLI_DEADLINE: Final = 60.0  # the budget of one operation of Server.cache() (the guard's)

#: What the URL names: one server, a Sentinel-managed primary, or a Redis Cluster.
Deployment = Literal["server", "sentinel", "cluster"]

_DEPLOYMENTS: Final[Mapping[str, Deployment]] = {
    "redis+sentinel": "sentinel",
    "redis+cluster": "cluster",
}


class Primaries(SyncBackend, Protocol):
    """A sync backend that also names its primaries: every backend of a Redis URL.

    :class:`~cachekit.backends.redis.SyncRedisBackend` (one server, or Sentinel's primary)
    and :class:`~cachekit.backends.cluster.SyncClusterBackend` (every primary) both are.

    Usage::

        for address, node in backend.primaries().items():
            node.run(Info())
    """

    def primaries(self) -> Mapping[str, SyncRedisBackend]:
        """A backend on each primary, by ``host:port``."""
        ...


class Server:
    """One Redis deployment under one cachekit prefix, as given on the command line.

    **Attributes:** ``url`` (as given), ``keyspace`` (the prefix's
    :class:`~cachekit.flow.keys.KeySpace`), ``backend``, ``deployment`` (``'server'``,
    ``'sentinel'`` or ``'cluster'``) and ``db`` (the database number; 0 on Cluster).

    Usage::

        with Server.open(url, prefix="shop") as server:
            server.run(Ping())
    """

    def __init__(
        self,
        url: str,
        keyspace: KeySpace,
        backend: Primaries,
        deadline: float = CLI_DEADLINE,
        *,
        deployment: Deployment = "server",
        db: int = 0,
        target: ParsedUrl | None = None,
    ) -> None:
        self.url = url
        self.keyspace = keyspace
        self.backend = backend
        self.deadline = deadline
        self.deployment: Deployment = deployment
        self.db = db
        self._target = target or parse_url(url)

    @classmethod
    def open(cls, url: str, prefix: str | None) -> Server:
        """Parse ``url`` and build the client (no I/O yet).

        ``prefix`` wins over the URL's ``?prefix=``, which wins over cachekit's default.
        Raises :class:`~cachekit.exceptions.ConfigurationError` for a bad URL or prefix.

        Usage::

            server = Server.open("redis://127.0.0.1:6379/0?prefix=shop", prefix=None)
            server = Server.open("redis+cluster://10.0.0.1:7000,10.0.0.2:7000", prefix="shop")
        """
        target = parse_url(url)
        if target.scheme == "memory":
            raise Failure(
                "memory:// lives inside one process, so there is nothing to inspect from "
                "outside: give a redis://, rediss://, unix://, redis+sentinel:// or "
                "redis+cluster:// URL",
                code=2,
            )
        keyspace = KeySpace(prefix or target.options.get("prefix", DEFAULT_PREFIX))
        options = {**CLI_TIMEOUTS, **target.scoped("redis")}
        deployment = _DEPLOYMENTS.get(target.scheme, "server")
        backend: Primaries
        try:
            if deployment == "cluster":
                # The async face is built unconnected and never used: nothing to close.
                backend, _ = connect_cluster(target.url, options)
                db = 0
            else:
                redis_backend, _ = connect(target.url, options)
                backend = redis_backend
                db = int(redis_backend.client.get_connection_kwargs().get("db") or 0)
        except ValueError as exc:  # redis-py's own URL parsing: a bad port, path, ...
            raise Failure(f"invalid Redis URL {redact(url)}: {exc}", code=2) from exc
        deadline = target.scoped("guard").get("deadline", CLI_DEADLINE)
        return cls(url, keyspace, backend, deadline, deployment=deployment, db=db, target=target)

    @property
    def prefix(self) -> str:
        """The cachekit prefix every key of this server's commands lives under.

        Usage::

            server.prefix       # 'shop'
        """
        return self.keyspace.prefix

    def run(self, op: Op[T]) -> T:
        """Perform ``op``, routed as the deployment needs; raises ``BackendError``.

        Usage::

            server.run(Get("shop:{product:5}"))
        """
        return self.backend.run(op)

    def primaries(self) -> Mapping[str, SyncRedisBackend]:
        """A backend on each primary by ``host:port``: one, or every Cluster primary.

        For what is asked of a node rather than of a key (``INFO``). A Sentinel's answer
        costs one question to a Sentinel; a Cluster's is the topology its client knows.

        Usage::

            facts = {address: node.run(Info()) for address, node in server.primaries().items()}
        """
        return self.backend.primaries()

    @contextmanager
    def cache(self) -> Iterator[Cache]:
        """A :class:`~cachekit.Cache` on this deployment and prefix, closed afterwards.

        Its operations get :data:`CLI_DEADLINE` (or the URL's ``?deadline=``), not an app's
        250 ms. For one server or a Sentinel it runs on this server's client, and closing
        it closes that client: use the server inside the block. A Cache takes a Cluster
        by URL only, so on Cluster it has a client of its own, with the same options.

        Usage::

            with server.cache() as cache:
                cache.bloom("products").sync.info()
        """
        # Configuring a Cache makes it the process's default for integrations: put the
        # previous one back, so calling main() inside an app changes nothing there.
        previous = default_cache()
        if self.deployment == "cluster":
            target = self._target
            timeouts = {k: v for k, v in CLI_TIMEOUTS.items() if k not in target.options}
            cache = Cache.from_url(self.url, prefix=self.prefix, deadline=self.deadline, **timeouts)
        else:
            assert isinstance(self.backend, SyncRedisBackend)
            cache = Cache(
                sync_client=self.backend.client, prefix=self.prefix, deadline=self.deadline
            )
        try:
            yield cache
        finally:
            cache.sync.close()
            set_default_cache(previous)

    def close(self) -> None:
        """Close the client (``with Server.open(...)`` does it for you).

        Usage::

            server.close()
        """
        self.backend.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
