"""The shop's database: the product table, the engine, a query counter and the seed.

Every SQL statement the engine sends is counted (:class:`QueryCounter`, exported as
``demo_db_queries_total``) and, with ``DB_LATENCY_MS`` set, delayed: a
``before_cursor_execute`` listener awaits ``asyncio.sleep`` on the event loop through the
driver connection's ``run_async`` (SQLAlchemy's documented bridge from sync events to
asyncio drivers), so a slow database slows the request that queries it without blocking
any other request. Product reads, catalog pages, writes and the cart's own SQL all pay
it, as they would pay a real network round trip.

Usage::

    queries = QueryCounter()
    engine = make_engine("sqlite+aiosqlite:///shop.db", latency=0.005, queries=queries)
    await prepare(engine, seed=10_000)
    queries.count     # statements sent so far
"""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any, cast

from sqlalchemy import Integer, String, event, func, insert, select, text
from sqlalchemy.engine import AdaptedConnection, Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "MAX_ID",
    "Base",
    "Product",
    "QueryCounter",
    "all_product_ids",
    "id_of_sku",
    "make_engine",
    "prepare",
    "sku_of",
]

MAX_ID = 2**31 - 1  # the widest id an INTEGER column holds everywhere
_SKU = re.compile(r"SKU-(\d{6,10})")


class Base(DeclarativeBase):
    """The demo's declarative base."""


class Product(Base):
    """One product of the catalog; its SKU is derived from its id (``SKU-000042``)."""

    __tablename__ = "demo_products"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(String(1000), default="")
    price_cents: Mapped[int] = mapped_column(Integer)
    stock: Mapped[int] = mapped_column(Integer, default=0)

    @property
    def sku(self) -> str:
        """The product's stock-keeping unit, as the cart knows it."""
        return sku_of(self.id)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form of the product (what the cache stores)."""
        return {
            "id": self.id,
            "sku": self.sku,
            "name": self.name,
            "description": self.description,
            "price_cents": self.price_cents,
            "stock": self.stock,
        }


def sku_of(product_id: int) -> str:
    """``SKU-000042`` for product 42."""
    return f"SKU-{product_id:06d}"


def id_of_sku(sku: str) -> int | None:
    """The product id a SKU names, or ``None`` when it is not one of ours.

    Only the canonical spelling counts (``SKU-42`` is not ``SKU-000042``), so one product
    never takes two lines of a cart.
    """
    match = _SKU.fullmatch(sku)
    if match is None:
        return None
    product_id = int(match.group(1))
    return product_id if 0 < product_id <= MAX_ID and sku_of(product_id) == sku else None


class QueryCounter:
    """How many SQL statements an engine sent; thread-safe, read without I/O."""

    __slots__ = ("_count", "_lock")

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    def incr(self) -> None:
        """Count one statement."""
        with self._lock:
            self._count += 1

    @property
    def count(self) -> int:
        """Statements counted so far."""
        return self._count


def make_engine(url: str, *, latency: float, queries: QueryCounter) -> AsyncEngine:
    """An async engine on ``url`` that counts every statement and delays it by ``latency`` s.

    SQLite gets WAL mode and a busy timeout, so readers do not queue behind a writer.
    """
    sqlite = url.startswith("sqlite")
    options: dict[str, Any] = (
        {"connect_args": {"timeout": 30}} if sqlite else {"pool_size": 20, "max_overflow": 20}
    )
    engine = create_async_engine(url, **options)

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _count_and_delay(conn: Connection, *_: object) -> None:
        queries.incr()
        if latency > 0:
            driver = cast(AdaptedConnection, conn.connection.dbapi_connection)
            driver.run_async(lambda _raw: asyncio.sleep(latency))

    if sqlite:

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: object) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

    return engine


def _seed_row(n: int) -> dict[str, Any]:
    adjective = _ADJECTIVES[n % len(_ADJECTIVES)]
    material = _MATERIALS[(n // len(_ADJECTIVES)) % len(_MATERIALS)]
    thing = _THINGS[(n * 7) % len(_THINGS)]
    return {
        "id": n,
        "name": f"{adjective} {material} {thing}",
        "description": f"{'An' if adjective[0] in 'AEIOU' else 'A'} {adjective.lower()} "
        f"{thing.lower()} in {material.lower()}; item {n} of the demo catalog.",
        "price_cents": 199 + (n * 7919) % 19_800,
        "stock": (n * 31) % 120,
    }


_ADJECTIVES = ("Sturdy", "Compact", "Vintage", "Ergonomic", "Handmade", "Foldable", "Rustic")
_MATERIALS = ("Oak", "Copper", "Linen", "Steel", "Bamboo", "Ceramic", "Wool", "Glass", "Leather")
_THINGS = (
    "Kettle",
    "Lamp",
    "Backpack",
    "Mug",
    "Chair",
    "Notebook",
    "Teapot",
    "Blanket",
    "Planter",
    "Clock",
    "Cutting Board",
    "Bowl",
    "Desk Tray",
)


async def prepare(engine: AsyncEngine, *, seed: int) -> int:
    """Create the product table and seed ``seed`` products if it is empty; how many.

    Idempotent: a restart (or a second process racing this one) finds the rows and
    seeds nothing. The rows go in one executemany, with explicit ids so that product
    ``n`` is ``SKU-00000n`` on every run.
    """
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    try:
        async with engine.begin() as conn:
            present = await conn.scalar(select(func.count()).select_from(Product))
            if present or seed == 0:
                return 0
            await conn.execute(insert(Product), [_seed_row(n) for n in range(1, seed + 1)])
            if conn.dialect.name == "postgresql":
                # Explicit ids leave the id sequence at 1: move it past them for new rows.
                await conn.execute(
                    text(
                        "SELECT setval(pg_get_serial_sequence('demo_products', 'id'), "
                        "(SELECT max(id) FROM demo_products))"
                    )
                )
    except IntegrityError:
        return 0  # another process seeded the table first
    return seed


async def all_product_ids(engine: AsyncEngine) -> list[int]:
    """Every product id, for the Bloom filter."""
    async with engine.connect() as conn:
        return list((await conn.scalars(select(Product.id))).all())
