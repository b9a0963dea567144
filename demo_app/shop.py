"""The shop's resources and their lifecycle: built without I/O, started and stopped once.

:meth:`Shop.build` declares everything (the cache, the engine, the catalog's cached
functions, the cart store, the metrics registry, the dashboard sampler) without touching
a server. :meth:`Shop.start`, run by the app's lifespan, starts the embedded Valkey
server when there is no ``REDIS_URL``, configures the cache, creates and seeds the
tables, rebuilds the ``products`` Bloom filter from every product id and starts the
sampler. :meth:`Shop.stop` undoes all of it, in reverse order; it also cleans up after
a start that failed half-way.

Usage::

    shop = Shop.build(Settings.from_env())
    await shop.start()
    ...
    await shop.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from cachekit import Cache
from cachekit.sessions import CartStore
from demo_app.catalog import Catalog
from demo_app.dashboard import Sampler
from demo_app.db import QueryCounter, all_product_ids, make_engine, prepare
from demo_app.embedded import EmbeddedValkey
from demo_app.metrics import build_registry
from demo_app.settings import Settings, async_database_url

__all__ = ["Shop"]


@dataclass(eq=False)
class Shop:
    """Everything one app instance owns; see the module docstring for the lifecycle."""

    settings: Settings
    cache: Cache
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    catalog: Catalog
    carts: CartStore
    queries: QueryCounter
    registry: CollectorRegistry
    sampler: Sampler
    temp_dir: Path | None = None
    embedded: EmbeddedValkey | None = None
    seeded: int = 0
    _tasks: list[asyncio.Task[None]] = field(default_factory=list, init=False, repr=False)

    @classmethod
    def build(cls, settings: Settings) -> Shop:
        """Declare every resource; no server is contacted."""
        temp_dir = None
        url = settings.database_url
        if url is None:  # a fresh SQLite file in a directory start() makes and stop() removes
            temp_dir = Path(tempfile.gettempdir()) / f"cachekit-demo-{uuid.uuid4().hex}"
            url = f"sqlite+aiosqlite:///{temp_dir / 'shop.db'}"
        queries = QueryCounter()
        engine = make_engine(
            async_database_url(url), latency=settings.db_latency_ms / 1000, queries=queries
        )
        # A Session class of this app's own: invalidate_on_commit listens on it, so two
        # apps in one process (tests) never invalidate each other's caches.
        session_class = cast(type[Session], type("ShopSession", (Session,), {}))
        sessions = async_sessionmaker(
            engine, expire_on_commit=False, sync_session_class=session_class
        )
        cache = Cache(prefix=settings.prefix)
        return cls(
            settings=settings,
            cache=cache,
            engine=engine,
            sessions=sessions,
            catalog=Catalog(cache, sessions, settings),
            carts=CartStore(cache, engine),
            queries=queries,
            registry=build_registry(cache, queries),
            sampler=Sampler(cache, queries, interval=settings.sample_interval),
            temp_dir=temp_dir,
        )

    async def start(self) -> None:
        """Servers, schema, seed, Bloom filter, sampler; on failure, undo what was done."""
        try:
            if self.temp_dir is not None:
                self.temp_dir.mkdir(mode=0o700)
            redis_url = self.settings.redis_url
            if redis_url is None:
                self.embedded = EmbeddedValkey()
                redis_url = await self.embedded.start()
            self.cache.configure(redis_url)
            self.catalog.watch()
            self.seeded = await prepare(self.engine, seed=self.settings.seed_products)
            await self.carts.create_schema()
            # rebuild, not warm: a filter left in Redis by an earlier run may hold ids
            # deleted since; the new generation is swapped in atomically.
            await self.catalog.bloom.rebuild(await all_product_ids(self.engine))
            self._tasks.append(asyncio.create_task(self.sampler.run()))
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop the sampler, close the cache, dispose of the engine, stop Valkey."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self.catalog.close()
        await self.cache.close()
        await self.engine.dispose()
        if self.embedded is not None:
            await self.embedded.stop()
            self.embedded = None
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None
