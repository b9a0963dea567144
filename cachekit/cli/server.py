"""The Redis server a command talks to: its URL and key prefix resolved, one connection.

The URL is read by the library's own :func:`~cachekit.config.parse_url`, so it takes the
same options as ``Cache.from_url`` (``?prefix=shop&socket_timeout=1``). Operations run
on the library's sync backend (:class:`~cachekit.backends.redis.RedisBackend`), so
redis-py errors arrive as :class:`~cachekit.exceptions.BackendError`. Bloom filter
commands get a :class:`~cachekit.Cache` on the very same client from :meth:`Server.cache`.

Usage::

    with Server.open("redis://127.0.0.1:6379/0", prefix=None) as server:
        raw = server.run(Get(server.keyspace.value("product:5")))
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Final, Self, TypeVar

from cachekit.backends.ops import Op
from cachekit.backends.redis import RedisBackend, connect
from cachekit.cache import Cache
from cachekit.cli.output import Failure, redact
from cachekit.config import parse_url
from cachekit.contrib import default_cache, set_default_cache
from cachekit.keys import KeySpace

__all__ = ["CLI_DEADLINE", "CLI_TIMEOUTS", "DEFAULT_PREFIX", "DEFAULT_URL", "Server"]

T = TypeVar("T")

DEFAULT_URL: Final = "redis://127.0.0.1:6379/0"
DEFAULT_PREFIX: Final = "cachekit"  # Cache's default prefix (a test keeps them equal)

# An app's cache gives up after 250 ms; an operator's SCAN, BITCOUNT or Bloom bitmap
# download and merge may rightly take longer. The URL's own options still win.
CLI_TIMEOUTS: Final = {"socket_timeout": 10.0, "socket_connect_timeout": 2.0, "pool_timeout": 10.0}
CLI_DEADLINE: Final = 60.0  # the budget of one operation of Server.cache() (the guard's)


class Server:
    """One Redis server under one cachekit prefix, as given on the command line.

    **Attributes:** ``url`` (as given), ``keyspace`` (the prefix's
    :class:`~cachekit.keys.KeySpace`) and ``backend``.

    Usage::

        with Server.open(url, prefix="shop") as server:
            server.run(Ping())
    """

    def __init__(
        self, url: str, keyspace: KeySpace, backend: RedisBackend, deadline: float = CLI_DEADLINE
    ) -> None:
        self.url = url
        self.keyspace = keyspace
        self.backend = backend
        self.deadline = deadline

    @classmethod
    def open(cls, url: str, prefix: str | None) -> Server:
        """Parse ``url`` and build the connection pool (no I/O yet).

        ``prefix`` wins over the URL's ``?prefix=``, which wins over cachekit's default.
        Raises :class:`~cachekit.exceptions.ConfigurationError` for a bad URL or prefix.

        Usage::

            server = Server.open("redis://127.0.0.1:6379/0?prefix=shop", prefix=None)
        """
        target = parse_url(url)
        if target.scheme == "memory":
            raise Failure(
                "memory:// lives inside one process, so there is nothing to inspect from "
                "outside: give a redis://, rediss:// or unix:// URL",
                code=2,
            )
        keyspace = KeySpace(prefix or target.options.get("prefix", DEFAULT_PREFIX))
        try:
            backend, _ = connect(target.url, {**CLI_TIMEOUTS, **target.scoped("redis")})
        except ValueError as exc:  # redis-py's own URL parsing: a bad port, path, ...
            raise Failure(f"invalid Redis URL {redact(url)}: {exc}", code=2) from exc
        return cls(url, keyspace, backend, target.scoped("guard").get("deadline", CLI_DEADLINE))

    @property
    def prefix(self) -> str:
        """The cachekit prefix every key of this server's commands lives under.

        Usage::

            server.prefix       # 'shop'
        """
        return self.keyspace.prefix

    def run(self, op: Op[T]) -> T:
        """Perform ``op`` on the server; raises :class:`~cachekit.exceptions.BackendError`.

        Usage::

            server.run(Get("shop:{product:5}"))
        """
        return self.backend.run(op)

    @contextmanager
    def cache(self) -> Iterator[Cache]:
        """A :class:`~cachekit.Cache` on this server's client and prefix, closed afterwards.

        Its operations get :data:`CLI_DEADLINE` (or the URL's ``?deadline=``), not an app's
        250 ms. Closing it closes the shared client: use the server inside the block.

        Usage::

            with server.cache() as cache:
                cache.bloom("products").sync.info()
        """
        # Configuring a Cache makes it the process's default for integrations: put the
        # previous one back, so calling main() inside an app changes nothing there.
        previous = default_cache()
        cache = Cache(sync_client=self.backend.client, prefix=self.prefix, deadline=self.deadline)
        try:
            yield cache
        finally:
            cache.sync.close()
            set_default_cache(previous)

    def close(self) -> None:
        """Close the connection pool (``with Server.open(...)`` does it for you).

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
