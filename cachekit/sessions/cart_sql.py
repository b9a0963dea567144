"""The cart's system of record: two SQL tables and the transactions on them.

``cart_items`` holds ``(owner, sku, qty)``; ``cart_versions`` holds one row per owner whose
``version`` rises with every change. A change first bumps that row, which takes its row
lock (PostgreSQL) or the write lock (SQLite), so changes of one cart queue up in the
database and each reads the items its predecessor committed; the version it commits is
what Redis compares, so Redis never goes back to an older cart.

Each transaction body is written once against a synchronous ``Connection``; an
``AsyncEngine`` runs the same body through ``AsyncConnection.run_sync``.

Usage::

    sql = CartSql(engine)
    tables = CartTables(MetaData(), CartLimits())
    record = sql.run(partial(tables.change, owner="alice", change=Add("SKU-1", 2)))
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from cachekit.backends.ops.records import CartRecord
from cachekit.exceptions import CartError, CartUnavailable, ConfigurationError, InvalidCartInput
from cachekit.sessions.cart_rules import CartLimits, Change, merge_into

__all__ = ["CartSql", "CartTables"]

T = TypeVar("T")
_ATTEMPTS = 3  # two first changes of one new cart race to insert its version row


class CartTables:
    """The ``cart_items`` and ``cart_versions`` tables, and the transaction bodies on them.

    Usage::

        tables = CartTables(metadata, CartLimits())
        metadata.create_all(engine)
    """

    def __init__(self, metadata: MetaData, limits: CartLimits) -> None:
        self.limits = limits
        owner_chars = limits.max_owner_chars
        self.items = Table(
            "cart_items",
            metadata,
            Column("owner", String(owner_chars), primary_key=True),
            Column("sku", String(limits.max_sku_chars), primary_key=True),
            Column("qty", Integer, nullable=False),
            CheckConstraint("qty > 0", name="cart_items_qty_positive"),
        )
        self.versions = Table(
            "cart_versions",
            metadata,
            Column("owner", String(owner_chars), primary_key=True),
            Column("version", BigInteger, nullable=False),
        )

    def read(self, conn: Connection, owner: str) -> CartRecord:
        """The cart as committed."""
        v = self.versions.c
        # The version first: items read after it are at least that new, so the record
        # can only be labelled older than it is, and a newer write then replaces it.
        version = conn.scalar(select(v.version).where(v.owner == owner)) or 0
        return CartRecord(version, self._items(conn, owner))

    def change(self, conn: Connection, owner: str, change: Change) -> CartRecord:
        """Apply ``change`` under the cart's lock; the limits break nothing (rolled back)."""
        version = self._bump(conn, owner)
        before = self._items(conn, owner)
        after = change.apply(before, self.limits)
        self._write(conn, owner, before, after)
        return CartRecord(version, after)

    def merge(self, conn: Connection, source: str, target: str) -> tuple[CartRecord, CartRecord]:
        """Move ``source``'s items into ``target`` (see ``merge_into``); ``source`` is emptied.

        Emptying the source in the same transaction is what makes a repeated merge (a
        retried login) add nothing the second time.
        """
        # Both locks in one order, so two merges crossing each other cannot deadlock.
        versions = {owner: self._bump(conn, owner) for owner in sorted((source, target))}
        moved, held = self._items(conn, source), self._items(conn, target)
        merged = merge_into(moved, held, self.limits)
        self._write(conn, target, held, merged)
        self._write(conn, source, moved, {})
        return CartRecord(versions[source], {}), CartRecord(versions[target], merged)

    def _bump(self, conn: Connection, owner: str) -> int:
        v = self.versions.c
        bumped = conn.execute(
            update(self.versions).where(v.owner == owner).values(version=v.version + 1)
        )
        if bumped.rowcount == 0:
            conn.execute(insert(self.versions).values(owner=owner, version=1))
            return 1
        return int(conn.scalar(select(v.version).where(v.owner == owner)) or 0)

    def _items(self, conn: Connection, owner: str) -> dict[str, int]:
        c = self.items.c
        rows = conn.execute(select(c.sku, c.qty).where(c.owner == owner).order_by(c.sku))
        return dict(rows.all())  # a list of rows: dict() would read a Result as a mapping

    def _write(
        self, conn: Connection, owner: str, before: dict[str, int], after: dict[str, int]
    ) -> None:
        c = self.items.c
        gone = [sku for sku in before if sku not in after]
        if gone:
            conn.execute(delete(self.items).where(c.owner == owner, c.sku.in_(gone)))
        changed = [
            {"o": owner, "s": sku, "q": qty}
            for sku, qty in after.items()
            if sku in before and before[sku] != qty
        ]
        if changed:
            stmt = update(self.items).where(c.owner == bindparam("o"), c.sku == bindparam("s"))
            conn.execute(stmt.values(qty=bindparam("q")), changed)
        added = [
            {"owner": owner, "sku": sku, "qty": q} for sku, q in after.items() if sku not in before
        ]
        if added:
            conn.execute(insert(self.items), added)


class CartSql:
    """Runs transaction bodies on a SQLAlchemy ``Engine`` or ``AsyncEngine``.

    Database failures become :class:`~cachekit.exceptions.CartUnavailable` (after the
    transaction rolled back); :class:`~cachekit.exceptions.InvalidCartInput` from a body
    rolls back and passes through.

    Usage::

        record = await CartSql(async_engine).arun(partial(tables.read, owner="alice"))
    """

    def __init__(self, engine: Engine | AsyncEngine) -> None:
        if not isinstance(engine, Engine | AsyncEngine):
            raise ConfigurationError("CartStore needs a SQLAlchemy Engine or AsyncEngine")
        self.engine = engine

    def run(self, body: Callable[[Connection], T]) -> T:
        """Run ``body`` in one transaction of a sync engine, committed on return."""
        engine = self.require_sync()
        for attempt in range(_ATTEMPTS):
            try:
                with engine.begin() as conn:
                    return body(conn)
            except IntegrityError as exc:
                _raise_on_last(attempt, exc)
            except SQLAlchemyError as exc:
                raise _translate(exc) from exc
        raise AssertionError("unreachable")

    def require_sync(self) -> Engine:
        """The engine, if it is a synchronous one (what ``cart.sync`` needs)."""
        if not isinstance(self.engine, Engine):
            raise ConfigurationError(
                "cart.sync needs a synchronous Engine; with an AsyncEngine use the async methods"
            )
        return self.engine

    async def arun(self, body: Callable[[Connection], T]) -> T:
        """Run ``body`` in one transaction, without blocking the event loop."""
        engine = self.engine
        if isinstance(engine, Engine):
            return await asyncio.to_thread(self.run, body)
        for attempt in range(_ATTEMPTS):
            try:
                async with engine.begin() as conn:
                    return await conn.run_sync(body)
            except IntegrityError as exc:
                _raise_on_last(attempt, exc)
            except SQLAlchemyError as exc:
                raise _translate(exc) from exc
        raise AssertionError("unreachable")


def _raise_on_last(attempt: int, exc: IntegrityError) -> None:
    if attempt == _ATTEMPTS - 1:
        raise _unavailable(exc) from exc


def _unavailable(exc: SQLAlchemyError) -> CartUnavailable:
    return CartUnavailable(f"the cart database failed, nothing was changed: {type(exc).__name__}")


def _translate(exc: SQLAlchemyError) -> CartError:
    # The database refusing a value (too long for its column, say) is bad input, not an
    # outage: a 4xx for the client, not a 503.
    if isinstance(exc, DataError):
        return InvalidCartInput("the cart database refused a value, nothing was changed")
    return _unavailable(exc)
