"""The SQLAlchemy integration: cache entries invalidated after commit, never before.

Runs on SQLite, and on PostgreSQL when ``DATABASE_URL`` points there, with the shared
Redis. Every test makes its own table (a random suffix) and drops it afterwards, so
concurrent runs on one database never meet; rows 1, 2 and 3 exist at the start.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import (
    Connection,
    Engine,
    String,
    bindparam,
    create_engine,
    delete,
    event,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    scoped_session,
    sessionmaker,
)

from cachekit import Cache
from cachekit.contrib import default_cache, set_default_cache
from cachekit.contrib.sqlalchemy import (
    Invalidation,
    RowView,
    ainvalidate_now,
    invalidate_now,
    invalidate_on_commit,
    invalidate_rows,
)
from cachekit.decorators import AsyncCachedFunction, SyncCachedFunction
from cachekit.exceptions import ConfigurationError
from cachekit.flow.effects import MISSING
from cachekit.sync import SyncCache
from tests.support.servers import PrivateServer

WAIT = 10.0
Row = dict[str, Any]

needs_tags = pytest.mark.skipif(
    not hasattr(Cache, "invalidate_tags"), reason="Cache.invalidate_tags is not there yet"
)


class ProductColumns:
    """The columns of the per-test ``Product`` class (a declarative mixin)."""

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    price: Mapped[int] = mapped_column(default=0)

    if TYPE_CHECKING:  # the declarative constructor, for type checkers

        def __init__(self, *, id: int = ..., name: str = ..., price: int = ...) -> None: ...


@dataclass
class Db:
    engine: Engine
    Product: type[ProductColumns]
    Session: sessionmaker[Session]
    table: str
    reads: int = 0
    hooks: list[Invalidation[Any]] = field(default_factory=list)

    def register(self, target: Any = None, **options: Any) -> Invalidation[Any]:
        """``invalidate_on_commit`` on this test's sessionmaker, removed at teardown."""
        options.setdefault("keys", lambda p: [f"product:{p.id}"])
        hook = invalidate_on_commit(
            self.Session if target is None else target, self.Product, **options
        )
        self.hooks.append(hook)
        return hook

    def name_of(self, pid: int) -> str | None:
        with self.Session() as session:
            product = session.get(self.Product, pid)
            return None if product is None else product.name


@pytest.fixture
def db(database_url: str) -> Iterator[Db]:
    suffix = uuid.uuid4().hex[:12]

    class Base(DeclarativeBase):
        pass

    class Product(ProductColumns, Base):
        __tablename__ = f"ck_product_{suffix}"

    engine = create_engine(database_url)
    if engine.dialect.name == "sqlite":
        # pysqlite begins transactions late and lets SAVEPOINT start one: use SQLAlchemy's
        # recipe, so begin_nested() is a real savepoint inside a real transaction.
        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection: Any, record: Any) -> None:
            dbapi_connection.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN")

    Base.metadata.create_all(engine)
    with engine.begin() as conn:  # ids 1, 2, 3 from the sequence, so later inserts get 4...
        for i in (1, 2, 3):
            conn.execute(insert(Product).values(name=f"p{i}", price=i))
    state = Db(engine, Product, sessionmaker(engine), Product.__tablename__)
    try:
        yield state
    finally:
        for hook in state.hooks:
            hook.remove()
        Base.metadata.drop_all(engine)
        engine.dispose()


@pytest.fixture
def cache(redis_cache: Cache) -> Iterator[Cache]:
    """The Redis cache, and no default cache left behind by a test."""
    previous = set_default_cache(None)
    yield redis_cache
    set_default_cache(previous)


def sync_loader(
    cache: Cache, db: Db, gate: Callable[[], None] | None = None, **options: Any
) -> SyncCachedFunction[[int], Row | None]:
    """The decorated read of one product (``product:{pid}``); ``gate`` runs after the read."""

    @cache.cached(ttl=60, key="product:{pid}", null_ttl=60, **options)
    def load(pid: int) -> Row | None:
        with db.Session() as session:  # closed before the gate: SQLite must let writers in
            product = session.get(db.Product, pid)
            row = None if product is None else {"id": product.id, "name": product.name}
        db.reads += 1
        if gate is not None:
            gate()
        return row

    return load


def stored(cache: Cache, key: str) -> bool:
    return cache.sync.get(key, MISSING) is not MISSING


def name(row: Row | None) -> str | None:
    return None if row is None else str(row["name"])


# ------------------------------------------------------------- 1. after commit only


def test_update_invalidates_after_commit_never_before(cache: Cache, db: Db) -> None:
    db.register(cache=cache)
    load = sync_loader(cache, db)
    assert name(load(1)) == "p1"

    with db.Session() as session:
        product = session.get(db.Product, 1)
        assert product is not None
        product.name = "new"
        session.flush()  # the UPDATE is sent: the cache must not move yet
        assert stored(cache, "product:1")
        assert name(load(1)) == "p1"  # what other transactions see, and it is cached
        session.flush()
        product.price = 100
        session.flush()  # a second flush in the same transaction
        assert stored(cache, "product:1")
        session.commit()

    assert not stored(cache, "product:1")
    assert name(load(1)) == "new"
    assert db.reads == 2


def test_insert_and_delete_invalidate_after_commit(cache: Cache, db: Db) -> None:
    db.register(cache=cache)
    load = sync_loader(cache, db)
    assert load(10) is None  # a null marker is cached
    assert stored(cache, "product:10")

    with db.Session() as session:
        session.add(db.Product(id=10, name="ten"))
        session.flush()
        assert stored(cache, "product:10")
        session.commit()
    assert name(load(10)) == "ten"

    assert name(load(2)) == "p2"
    with db.Session() as session:
        product = session.get(db.Product, 2)
        session.commit()  # product is now expired: its columns must be reloaded to delete it
        session.delete(product)
        session.flush()
        assert stored(cache, "product:2")
        session.commit()
    assert not stored(cache, "product:2")
    assert load(2) is None

    with db.Session.begin() as session:  # delete without loading: session.get then delete
        session.delete(session.get(db.Product, 10))
    assert load(10) is None


def test_an_update_without_changes_invalidates_nothing(cache: Cache, db: Db) -> None:
    db.register(cache=cache)
    cache.sync.set("product:1", "cached")
    with db.Session.begin() as session:
        product = session.get(db.Product, 1)
        assert product is not None
        product.name = "p1"  # the same value: no UPDATE
    assert stored(cache, "product:1")


def test_keys_of_the_old_values_are_invalidated_too(cache: Cache, db: Db) -> None:
    db.register(cache=cache, keys=lambda p: [f"product:{p.id}", f"by-name:{p.name}"])
    for key in ("product:1", "by-name:p1", "by-name:new"):
        cache.sync.set(key, "cached")
    with db.Session.begin() as session:
        product = session.get(db.Product, 1)
        assert product is not None
        product.name = "new"
    assert not any(stored(cache, key) for key in ("product:1", "by-name:p1", "by-name:new"))


def test_double_delete(cache: Cache, db: Db) -> None:
    db.register(cache=cache, double_delete=0.1)
    with db.Session.begin() as session:
        product = session.get(db.Product, 1)
        assert product is not None
        product.name = "new"
    cache.sync.set("product:1", "refilled from a lagging replica")
    deadline = time.monotonic() + WAIT
    while stored(cache, "product:1"):
        assert time.monotonic() < deadline, "the second delete never came"
        time.sleep(0.02)


def test_rollback_invalidates_nothing(cache: Cache, db: Db) -> None:
    db.register(cache=cache)
    load = sync_loader(cache, db)
    assert name(load(1)) == "p1"

    with db.Session() as session:
        product = session.get(db.Product, 1)
        assert product is not None
        product.name = "never"
        session.add(db.Product(id=11, name="never"))
        session.flush()
        session.rollback()
        session.commit()  # a new, empty transaction: still nothing to invalidate
    with db.Session() as session:
        product = session.get(db.Product, 1)
        assert product is not None
        product.name = "never"
        session.flush()
    # closed without commit: rolled back, nothing invalidated

    assert stored(cache, "product:1")
    assert name(load(1)) == "p1"
    assert db.name_of(1) == "p1"
    assert db.reads == 1


def test_a_failed_flush_invalidates_nothing(cache: Cache, db: Db) -> None:
    db.register(cache=cache)
    load = sync_loader(cache, db)
    assert name(load(1)) == "p1"
    with db.Session() as session:
        product = session.get(db.Product, 1)
        assert product is not None
        product.name = "never"
        session.flush()
        session.add(db.Product(id=2, name="duplicate"))  # primary key taken
        with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
            session.flush()
        session.rollback()
        session.commit()
    assert stored(cache, "product:1")


def test_savepoints(cache: Cache, db: Db) -> None:
    """A rolled-back savepoint discards only its own rows; a released one waits for the
    outer transaction, and goes with it when that rolls back."""
    db.register(cache=cache)
    load = sync_loader(cache, db)
    for pid in (1, 2, 3):
        load(pid)

    def rename(session: Session, pid: int, to: str) -> None:
        product = session.get(db.Product, pid)
        assert product is not None
        product.name = to
        session.flush()

    # outer commits, inner savepoint rolled back: 1 invalidated, 2 untouched (and unchanged)
    with db.Session() as session:
        rename(session, 1, "a")
        savepoint = session.begin_nested()
        rename(session, 2, "b")
        savepoint.rollback()
        session.commit()
    assert not stored(cache, "product:1")
    assert stored(cache, "product:2")
    assert (db.name_of(1), db.name_of(2)) == ("a", "p2")

    # savepoint released, outer rolled back: nothing
    with db.Session() as session:
        with session.begin_nested():
            rename(session, 3, "c")
        session.rollback()
    assert stored(cache, "product:3")

    # savepoint released (context manager), outer commits: invalidated
    with db.Session() as session:
        with session.begin_nested():
            rename(session, 3, "c")
        session.commit()
    assert not stored(cache, "product:3")

    # nested savepoints: the inner one released, the outer one rolled back: both discarded
    load(3)
    with db.Session() as session:
        rename(session, 1, "a2")
        outer = session.begin_nested()
        rename(session, 2, "b2")
        with session.begin_nested():
            rename(session, 3, "c2")
        outer.rollback()
        load(1)  # refill key 1 before the commit: the commit must still invalidate it
        session.commit()
    assert not stored(cache, "product:1")
    assert stored(cache, "product:2")
    assert stored(cache, "product:3")
    assert [name(load(pid)) for pid in (1, 2, 3)] == ["a2", "p2", "c"]


# --------------------------------------------------------------------- 2. the races


def test_a_load_that_read_the_old_row_is_not_cached(cache: Cache, db: Db) -> None:
    """Reader reads the old row, writer commits (and invalidates), reader writes back:
    refused, because the invalidation voided the reader's lease."""
    db.register(cache=cache)
    started, release = threading.Event(), threading.Event()

    def gate() -> None:
        if db.reads == 1:
            started.set()
            assert release.wait(WAIT)

    load = sync_loader(cache, db, gate)
    with ThreadPoolExecutor(1) as pool:
        reader = pool.submit(load, 1)
        assert started.wait(WAIT)  # the reader holds the old row and the lease
        with db.Session.begin() as session:
            product = session.get(db.Product, 1)
            assert product is not None
            product.name = "new"
        release.set()
        assert name(reader.result(WAIT)) == "p1"  # its own caller gets what it read

    assert cache.stats()["stale_sets_refused"] == 1
    assert not stored(cache, "product:1")
    assert name(load(1)) == "new"


def _refill_between_flush_and_commit(
    cache: Cache, db: Db, *, invalidate_before_commit: bool
) -> str | None:
    """Writer updates row 1; a reader refills the cache before the writer commits."""
    load = sync_loader(cache, db)
    assert name(load(1)) == "p1"
    with db.Session() as session:
        product = session.get(db.Product, 1)
        assert product is not None
        product.name = "new"
        session.flush()
        if invalidate_before_commit:
            cache.sync.invalidate("product:1")  # the mistake: before the commit
        assert name(load(1)) == "p1"  # a reader sees the committed (old) row and caches it
        session.commit()
    return name(load(1))


def test_invalidating_before_commit_leaves_the_old_value_cached(cache: Cache, db: Db) -> None:
    """The failure mode, without the integration: the refill after the early delete wins."""
    assert _refill_between_flush_and_commit(cache, db, invalidate_before_commit=True) == "p1"
    assert db.name_of(1) == "new"  # the database moved on; the cache did not


def test_invalidating_after_commit_does_not(cache: Cache, db: Db) -> None:
    db.register(cache=cache)
    assert _refill_between_flush_and_commit(cache, db, invalidate_before_commit=False) == "new"


# -------------------------------------------------------------------- 3. AsyncSession


@dataclass
class AsyncDb:
    maker: async_sessionmaker[AsyncSession]
    reads: int = 0


@pytest.fixture
async def adb(db: Db, async_database_url: str) -> AsyncIterator[AsyncDb]:
    pytest.importorskip("greenlet", reason="SQLAlchemy's asyncio needs sqlalchemy[asyncio]")
    engine = create_async_engine(async_database_url)
    try:
        yield AsyncDb(async_sessionmaker(engine, expire_on_commit=False))
    finally:
        await engine.dispose()


def async_loader(
    cache: Cache, db: Db, adb: AsyncDb, gate: Callable[[], Any] | None = None
) -> AsyncCachedFunction[[int], Row | None]:
    @cache.cached(ttl=60, key="product:{pid}", null_ttl=60)
    async def load(pid: int) -> Row | None:
        async with adb.maker() as session:
            product = await session.get(db.Product, pid)
            row = None if product is None else {"id": product.id, "name": product.name}
        adb.reads += 1
        if gate is not None:
            await gate()
        return row

    return load


@pytest.mark.parametrize("target", ["AsyncSession", "async_sessionmaker"])
async def test_async_session_invalidates_after_commit(
    cache: Cache, db: Db, adb: AsyncDb, target: str
) -> None:
    db.register(AsyncSession if target == "AsyncSession" else adb.maker, cache=cache)
    load = async_loader(cache, db, adb)
    assert name(await load(1)) == "p1"
    assert await load(20) is None

    async with adb.maker() as session:
        product = await session.get(db.Product, 1)
        assert product is not None
        product.name = "new"
        session.add(db.Product(id=20, name="twenty"))
        await session.flush()
        assert stored(cache, "product:1")
        assert stored(cache, "product:20")
        await session.commit()
    assert (name(await load(1)), name(await load(20))) == ("new", "twenty")

    async with adb.maker() as session:
        await session.delete(await session.get(db.Product, 20))
        await session.flush()
        await session.rollback()
    assert name(await load(20)) == "twenty"

    async with adb.maker.begin() as session:
        await session.delete(await session.get(db.Product, 20))
    assert await load(20) is None

    async with adb.maker.begin() as session:  # bulk, through the async session
        await session.execute(update(db.Product).where(db.Product.id == 1).values(name="bulk"))
    assert name(await load(1)) == "bulk"


async def test_async_load_that_read_the_old_row_is_not_cached(
    cache: Cache, db: Db, adb: AsyncDb
) -> None:
    db.register(AsyncSession, cache=cache)
    started, release = asyncio.Event(), asyncio.Event()

    async def gate() -> None:
        if adb.reads == 1:
            started.set()
            await release.wait()

    load = async_loader(cache, db, adb, gate)
    reader = asyncio.create_task(load(1))
    await asyncio.wait_for(started.wait(), WAIT)
    async with adb.maker.begin() as session:
        product = await session.get(db.Product, 1)
        assert product is not None
        product.name = "new"
    release.set()
    assert name(await asyncio.wait_for(reader, WAIT)) == "p1"
    assert cache.stats()["stale_sets_refused"] == 1
    assert name(await load(1)) == "new"


# ------------------------------------------------------------------ 4. bulk statements


def test_bulk_update_by_primary_key(cache: Cache, db: Db) -> None:
    db.register(cache=cache)
    load = sync_loader(cache, db)
    for pid in (1, 2, 3):
        load(pid)
    with db.Session() as session:
        session.execute(update(db.Product), [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}])
        assert stored(cache, "product:1")
        session.commit()
    assert [stored(cache, f"product:{pid}") for pid in (1, 2, 3)] == [False, False, True]
    assert [name(load(pid)) for pid in (1, 2)] == ["x", "y"]


def test_bulk_delete_and_update_by_primary_key_predicates(cache: Cache, db: Db) -> None:
    db.register(cache=cache)
    load = sync_loader(cache, db)
    for pid in (1, 2, 3):
        load(pid)
    with db.Session.begin() as session:
        session.execute(delete(db.Product).where(db.Product.id.in_([1, 2])))
    assert [stored(cache, f"product:{pid}") for pid in (1, 2, 3)] == [False, False, True]
    assert (load(1), load(2)) == (None, None)

    with db.Session.begin() as session:
        statement = update(db.Product).where(db.Product.id == 3, db.Product.price > 0)
        session.execute(statement.values(name="z"))
    assert name(load(3)) == "z"

    with db.Session.begin() as session:  # OR, and bound parameters given to execute()
        pinned = or_(db.Product.id == 3, db.Product.id == bindparam("other"))
        session.execute(update(db.Product).where(pinned).values(name="o"), {"other": 99})
    assert name(load(3)) == "o"

    with db.Session() as session:  # rolled back: nothing
        session.execute(update(db.Product).where(db.Product.id == 3).values(name="never"))
        session.rollback()
    assert stored(cache, "product:3")


def test_what_bulk_statements_cannot_show_is_given_with_invalidate_rows(
    cache: Cache, db: Db, caplog: pytest.LogCaptureFixture
) -> None:
    db.register(cache=cache)
    load = sync_loader(cache, db)
    for pid in (1, 2, 3):
        load(pid)
    log = caplog.at_level(logging.WARNING, "cachekit.contrib.sqlalchemy")
    with log, db.Session.begin() as session:
        session.execute(update(db.Product).where(db.Product.price >= 2).values(name="q"))
        session.execute(text(f"UPDATE {db.table} SET price = 7"))  # noqa: S608 (our own name)
    assert "does not pin the primary key" in caplog.text
    assert all(stored(cache, f"product:{pid}") for pid in (1, 2, 3))  # documented blind spot

    with db.Session() as session:
        invalidate_rows(session, db.Product, [2])  # no transaction yet: for the next one
        session.execute(update(db.Product).where(db.Product.price >= 2).values(name="r"))
        invalidate_rows(session, db.Product, [{"id": 3}])
        assert stored(cache, "product:2")
        session.commit()
    assert [stored(cache, f"product:{pid}") for pid in (1, 2, 3)] == [True, False, False]
    assert (name(load(2)), name(load(3))) == ("r", "r")

    with db.Session() as session:
        invalidate_rows(session, db.Product, [1])
        session.rollback()
    assert stored(cache, "product:1")
    invalidate_now(db.Product, [1])
    assert not stored(cache, "product:1")


async def test_ainvalidate_now(cache: Cache, db: Db) -> None:
    db.register(cache=cache)
    await cache.set("product:1", "x")
    await ainvalidate_now(db.Product, [db.Product(id=1, name="x")])
    assert not stored(cache, "product:1")


def test_keys_of_a_bulk_row_must_come_from_its_known_columns(cache: Cache, db: Db) -> None:
    db.register(cache=cache, keys=lambda p: [f"product:{p.id}", f"by-name:{p.name}"])
    with db.Session() as session:
        with pytest.raises(AttributeError, match=r"only id is known"):
            session.execute(delete(db.Product).where(db.Product.id == 1))
        session.execute(update(db.Product), [{"id": 1, "name": "has it"}])  # name is given
        session.commit()
    assert repr(RowView(db.Product, {"id": 1})).endswith("id=1>")


# ------------------------------------------------------------------------ 5. Bloom


@pytest.mark.parametrize("by", ["name", "object"])
def test_inserted_rows_are_added_to_the_bloom_filter(cache: Cache, db: Db, by: str) -> None:
    products = cache.bloom("products", capacity=1000, error_rate=0.01)
    products.sync.rebuild([1, 2, 3])
    db.register(cache=cache, bloom="products" if by == "name" else products)
    load = sync_loader(cache, db, bloom="products")
    assert load(50) is None  # turned away by the filter: no read
    assert db.reads == 0

    with db.Session() as session:
        session.add(db.Product(id=50, name="fifty"))
        session.flush()
        assert not products.sync.contains(50)  # not before the commit
        session.commit()
    assert products.sync.contains(50)
    assert name(load(50)) == "fifty"

    with db.Session() as session:  # a generated primary key
        product = db.Product(name="generated")
        session.add(product)
        session.flush()
        generated = product.id
        session.commit()
    assert products.sync.contains(generated)
    assert name(load(generated)) == "generated"

    with db.Session() as session:  # a rolled-back insert is not added
        session.add(db.Product(id=60, name="sixty"))
        session.flush()
        session.rollback()
    with db.Session.begin() as session:  # a bulk insert with its keys is
        session.execute(insert(db.Product), [{"id": 70, "name": "seventy"}])
    assert (products.sync.contains(60), products.sync.contains(70)) == (False, True)


def test_bloom_value_and_changed_values(cache: Cache, db: Db) -> None:
    names = cache.bloom("names", capacity=1000, error_rate=0.01)
    db.register(cache=cache, bloom="names", bloom_value=lambda p: p.name)
    with db.Session.begin() as session:
        session.add(db.Product(id=5, name="five"))
    with db.Session.begin() as session:
        product = session.get(db.Product, 1)
        assert product is not None
        product.name = "renamed"  # a changed bloom value is added too
    assert names.sync.contains("five")
    assert names.sync.contains("renamed")


# ------------------------------------------------------------------------- 6. tags


@needs_tags
def test_tags_are_invalidated_after_commit(cache: Cache, db: Db) -> None:
    db.register(cache=cache, tags=lambda p: ["catalog", f"price:{p.price}"])
    pages = 0

    @cache.cached(ttl=60, key="page:{n}", tags=["catalog"])
    def page(n: int) -> list[str]:
        nonlocal pages
        pages += 1
        with db.Session() as session:
            return list(session.scalars(select(db.Product.name).order_by(db.Product.id)))

    assert page(1) == ["p1", "p2", "p3"]
    with db.Session() as session:
        product = session.get(db.Product, 2)
        assert product is not None
        product.name = "two"
        session.flush()
        assert page(1) == ["p1", "p2", "p3"]  # not before the commit
        session.commit()
    assert page(1) == ["p1", "two", "p3"]
    assert pages == 2


# ------------------------------------------------------------------- failures, config


async def test_redis_down_never_breaks_the_commit(
    db: Db, private_redis: PrivateServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache = Cache.from_url(private_redis.url, prefix=prefix)
    try:
        cache.bloom("products", capacity=1000, error_rate=0.01)
        db.register(cache=cache, bloom="products")
        load = sync_loader(cache, db)
        assert name(load(1)) == "p1"
        private_redis.kill()
        with caplog.at_level(logging.WARNING, "cachekit"), db.Session.begin() as session:
            product = session.get(db.Product, 1)
            assert product is not None
            product.name = "new"
            session.add(db.Product(id=9, name="nine"))
        assert (db.name_of(1), db.name_of(9)) == ("new", "nine")  # committed
        assert "Bloom filter 'products'" in caplog.text
    finally:
        await cache.close()


def test_unexpected_errors_after_commit_are_logged(
    cache: Cache, db: Db, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    db.register(cache=cache)

    def broken(self: SyncCache, key: str, *, double_delete: float | None = None) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(SyncCache, "invalidate", broken)
    log = caplog.at_level(logging.ERROR, "cachekit.contrib.sqlalchemy")
    with log, db.Session.begin() as session:
        product = session.get(db.Product, 1)
        assert product is not None
        product.name = "new"
    assert db.name_of(1) == "new"
    assert "invalidating 'product:1' failed after a commit" in caplog.text


def test_default_cache(cache: Cache, db: Db) -> None:
    assert default_cache() is None
    db.register()  # cache=None: the default one, looked up at flush time
    with db.Session() as session:
        product = session.get(db.Product, 1)
        assert product is not None
        product.name = "new"
        with pytest.raises(ConfigurationError, match=r"set_default_cache"):
            session.flush()  # loud, before anything is committed
    assert db.name_of(1) == "p1"

    set_default_cache(cache)
    cache.sync.set("product:1", "old")
    with db.Session.begin() as session:
        product = session.get(db.Product, 1)
        assert product is not None
        product.name = "new"
    assert not stored(cache, "product:1")


def test_registration_checks(cache: Cache, db: Db) -> None:
    with pytest.raises(ConfigurationError, match="sessionmaker"):
        invalidate_on_commit(object(), db.Product, keys=lambda p: [])  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="not a mapped class"):
        invalidate_on_commit(db.Session, ProductColumns, keys=lambda p: [])
    with pytest.raises(ConfigurationError, match="keys=, tags= or bloom="):
        invalidate_on_commit(db.Session, db.Product)
    with pytest.raises(ConfigurationError, match="no invalidate_on_commit"):
        invalidate_now(db.Product, [1])
    scoped = db.register(scoped_session(db.Session), cache=cache)
    assert scoped.session_class is db.Session.class_
    hook = db.register(cache=cache, keys=lambda p: f"product:{p.id}")  # one string: one key
    assert hook.keys_for(db.Product(id=4, name="x")) == ["product:4"]
    assert hook.bloom_value_for(db.Product(id=4, name="x")) == 4


def test_other_sessionmakers_are_not_watched(cache: Cache, db: Db) -> None:
    db.register(cache=cache)
    other = sessionmaker(db.engine)
    cache.sync.set("product:1", "old")
    with other.begin() as session:
        product = session.get(db.Product, 1)
        assert product is not None
        product.name = "elsewhere"
    assert stored(cache, "product:1")
