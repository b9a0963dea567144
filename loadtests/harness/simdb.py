"""The simulated database of the library-level scenarios: slow, finite, and counted.

A real database is not infinitely parallel: it has a connection pool, and a query holds
one connection for its duration. :class:`SimulatedDatabase` models exactly that and no
more: ``connections`` queries run at once, each takes ``latency_ms`` (an
``asyncio.sleep``, so the benchmark process spends no CPU on it), and the others queue for
a connection. Its capacity is therefore ``connections / latency`` queries per second;
offered more, its queue (and every caller's latency) grows, which is what an unprotected
cache does to a database under a spike.

Every query is counted, with the loop time it was asked for (before it waited for a
connection), so a scenario can draw the queries per second the cache let through, even
when they exceed what the database serves and queue.

Usage::

    db = SimulatedDatabase(latency_ms=5, connections=10)
    await db.query()                 # 5 ms, one connection
    await db.query(latency_ms=50)    # an expensive one
    async with db.connection():      # a transaction: hold a connection for the block
        ...
    db.queries, db.instants

The cart scenario and benchmark use a real SQL database instead (their transactions are
the point), through :func:`counted_engine`: every statement counted, each optionally
delayed like a remote server's round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from sqlalchemy import Engine, create_engine, event

__all__ = ["SimulatedDatabase", "counted_engine"]

T = TypeVar("T")


class SimulatedDatabase:
    """A pool of ``connections``; each query takes ``latency_ms`` and is counted.

    **Parameters:**

    * **latency_ms** - how long a query holds its connection (default for :meth:`query`).
    * **connections** - how many queries run at once; the rest wait for one.
    """

    def __init__(self, *, latency_ms: float, connections: int) -> None:
        if latency_ms < 0 or connections < 1:
            raise ValueError("latency_ms must be >= 0 and connections >= 1")
        self.latency = latency_ms / 1000
        self.connections = connections
        self._pool = asyncio.Semaphore(connections)
        self.queries = 0
        self.instants: list[float] = []  # loop time each query was asked for
        self.bypass = False  # warm-up: answer at once, uncounted (a bulk load job)

    @property
    def capacity(self) -> float:
        """Queries per second it can serve at the default latency."""
        return self.connections / self.latency if self.latency else float("inf")

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[None]:
        """Hold one connection (counted as one query) for the block: a transaction."""
        # Counted when asked for, before any wait for a connection: the series then shows
        # the load the cache let through, not the database's capacity to absorb it.
        self.queries += 1
        self.instants.append(asyncio.get_running_loop().time())
        async with self._pool:
            yield

    async def query(self, latency_ms: float | None = None) -> None:
        """One query: wait for a connection, hold it for the latency."""
        await self.run(lambda: None, latency_ms)

    async def run(self, body: Callable[[], T], latency_ms: float | None = None) -> T:
        """One query whose result is ``body()``, read halfway through the query's time.

        Reading halfway models a real query: its snapshot is taken after it started and
        before it returns, so a commit during the query may or may not be seen.
        """
        if self.bypass:
            return body()
        latency = self.latency if latency_ms is None else latency_ms / 1000
        async with self.connection():
            await asyncio.sleep(latency / 2)
            result = body()
            await asyncio.sleep(latency / 2)
            return result


def counted_engine(url: str, counter: list[int], *, latency: float = 0.0) -> Engine:
    """A sync SQLAlchemy engine on ``url`` that counts its statements in ``counter[0]``.

    Each statement first sleeps ``latency`` seconds (the sync engine runs in a worker
    thread, so the event loop keeps going). SQLite waits up to 30 s for a lock; a server
    database gets a pool of 16.
    """
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})
    else:
        engine = create_engine(url, pool_size=16, max_overflow=0)

    @event.listens_for(engine, "before_cursor_execute")
    def count(*_: object) -> None:
        counter[0] += 1
        if latency:
            time.sleep(latency)

    return engine
