"""The catalog: cached product reads with every protection, catalog pages, and writes.

Reads (cache-aside, :meth:`cachekit.Cache.cached`):

* :attr:`Catalog.product` - one product, with all four protections: the ``products``
  Bloom filter turns away ids that exist nowhere before Redis or the database is asked
  (penetration), a ``None`` result is cached for ``null_ttl`` (penetration by ids the
  filter lets through), a cold miss takes the lease lock so one caller in the whole fleet
  loads while the others wait (breakdown), TTLs are jittered ±10 % (avalanche), and a
  product past its TTL is served stale for ``stale`` seconds while one rebuild runs.
  ``DEMO_PROTECTIONS`` turns them off for comparison (``none``: a plain TTL cache; the
  in-process single flight, which cachekit always has, stays).
* :attr:`Catalog.page` - one page of the catalog, tagged ``catalog``.

Writes commit through an ``AsyncSession`` and never touch the cache themselves:
``invalidate_on_commit`` deletes ``product:<id>``, invalidates the ``catalog`` tag and
adds new ids to the Bloom filter after each commit (never before, never on rollback).

Usage::

    catalog = Catalog(cache, sessions, settings)
    await catalog.product(42)                     # {'id': 42, 'sku': 'SKU-000042', ...}
    await catalog.update(42, {"price_cents": 999})
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cachekit import AsyncCachedFunction, Bloom, Cache
from cachekit.contrib.sqlalchemy import Invalidation, invalidate_on_commit
from demo_app.db import MAX_ID, Product
from demo_app.errors import InvalidInput, parse_object
from demo_app.settings import Settings

__all__ = ["MAX_PAGE", "Catalog", "parse_page", "parse_product"]

MAX_PAGE = 100_000  # beyond it a page number is refused: each one would be a cache entry
_LIMITS = {  # field: (least, most) - characters for text, value for numbers
    "name": (1, 200),
    "description": (0, 1000),
    "price_cents": (0, 10_000_000),
    "stock": (0, 1_000_000),
}
_FIELDS = set(_LIMITS)


class Catalog:
    """Product reads through the cache, and writes that invalidate after commit.

    **Parameters:**

    * **cache** - the shop's cache (configured later, at startup).
    * **sessions** - an ``async_sessionmaker`` whose sessions the invalidation watches.
    * **settings** - TTLs, page size and the Bloom filter's geometry.
    """

    product: AsyncCachedFunction[[int], dict[str, Any] | None]
    page: AsyncCachedFunction[[int], dict[str, Any]]

    def __init__(
        self, cache: Cache, sessions: async_sessionmaker[AsyncSession], settings: Settings
    ) -> None:
        self.sessions = sessions
        self.page_size = settings.page_size
        self.bloom: Bloom = cache.bloom(
            "products", capacity=settings.bloom_capacity, error_rate=settings.bloom_error_rate
        )

        on = settings.protections  # DEMO_PROTECTIONS=none: a plain TTL cache, for comparison

        @cache.cached(
            ttl=settings.product_ttl,
            key="product:{product_id}",
            jitter=0.1 if "jitter" in on else 0.0,
            stale=settings.product_stale if "stale" in on else 0,
            null_ttl=settings.product_null_ttl if "null" in on else 0,
            lock="lock" in on,
            bloom="products" if "bloom" in on else None,
        )
        async def product(product_id: int) -> dict[str, Any] | None:
            async with sessions() as session:
                row = await session.get(Product, product_id)
                return None if row is None else row.as_dict()

        @cache.cached(ttl=settings.listing_ttl, key="catalog:page:{number}", tags=["catalog"])
        async def page(number: int) -> dict[str, Any]:
            size = self.page_size
            async with sessions() as session:
                total = await session.scalar(select(func.count()).select_from(Product)) or 0
                query = select(Product).order_by(Product.id).limit(size)
                rows = await session.scalars(query.offset((number - 1) * size))
                items = [row.as_dict() for row in rows]
            return {
                "page": number,
                "per_page": size,
                "total": total,
                "pages": max(1, math.ceil(total / size)),
                "items": items,
            }

        self.product = product
        self.page = page
        self.cache = cache
        self.invalidation: Invalidation[Product] | None = None

    def watch(self) -> None:
        """Invalidate after every commit of a product write (at startup)."""
        if self.invalidation is None:
            self.invalidation = invalidate_on_commit(
                self.sessions,
                Product,
                keys=lambda p: [self.product.key(p.id)],
                tags=lambda p: ["catalog"],
                bloom="products",
                bloom_value=lambda p: p.id,
                cache=self.cache,
            )

    async def create(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Insert a product; its JSON form. Readable at once: its id joins the filter."""
        row = Product(**fields)
        async with self.sessions.begin() as session:
            session.add(row)
        return row.as_dict()

    async def update(self, product_id: int, fields: dict[str, Any]) -> dict[str, Any] | None:
        """Change some fields of a product; its new JSON form, or ``None`` if there is none."""
        if not 0 < product_id <= MAX_ID:
            return None
        async with self.sessions.begin() as session:
            row = await session.get(Product, product_id)
            if row is None:
                return None
            for name, value in fields.items():
                setattr(row, name, value)
        return row.as_dict()

    async def delete(self, product_id: int) -> bool:
        """Delete a product; whether there was one."""
        if not 0 < product_id <= MAX_ID:
            return False
        async with self.sessions.begin() as session:
            row = await session.get(Product, product_id)
            if row is None:
                return False
            await session.delete(row)
        return True

    def close(self) -> None:
        """Stop watching commits (the app is shutting down)."""
        if self.invalidation is not None:
            self.invalidation.remove()
            self.invalidation = None


def parse_product(body: bytes, *, partial: bool) -> dict[str, Any]:
    """Product fields from a JSON body; all of ``name`` and ``price_cents`` unless ``partial``.

    ``name``: 1-200 printable characters; ``description``: up to 1000; ``price_cents`` and
    ``stock``: whole numbers from 0. Raises :class:`InvalidInput`.
    """
    data = parse_object(body, allowed=_FIELDS)
    if partial and not data:
        raise InvalidInput(f"give at least one of {sorted(_FIELDS)}")
    if not partial:
        missing = {"name", "price_cents"} - set(data)
        if missing:
            raise InvalidInput(f"missing fields {sorted(missing)}")
    fields: dict[str, Any] = {}
    for name, value in data.items():
        least, most = _LIMITS[name]
        if name in ("name", "description"):
            fields[name] = _text(name, value, least, most)
        else:
            fields[name] = _whole(name, value, most)
    return fields


def _text(name: str, value: object, least: int, most: int) -> str:
    if type(value) is not str:
        raise InvalidInput(f"{name} must be a string")
    value = value.strip()
    if not least <= len(value) <= most or not value.isprintable():
        raise InvalidInput(f"{name} must be {least} to {most} printable characters")
    return value


def _whole(name: str, value: object, most: int) -> int:
    if type(value) is not int or not 0 <= value <= most:  # True is not a price
        raise InvalidInput(f"{name} must be a whole number from 0 to {most}")
    return value


def parse_page(raw: str | None) -> int:
    """The page number of a ``?page=`` parameter (default 1). Raises :class:`InvalidInput`."""
    if raw is None:
        return 1
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 6) or not 1 <= int(raw) <= MAX_PAGE:
        raise InvalidInput(f"page must be a whole number from 1 to {MAX_PAGE}")
    return int(raw)
