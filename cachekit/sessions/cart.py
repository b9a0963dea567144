"""A shopping cart that loses nothing: SQL is the record, Redis the fast copy.

Every change commits in SQL (under the cart's row lock, limits checked there) before the
call returns, so a returned call means durable; only then is the Redis copy replaced, by
a script that refuses anything older than what it holds. Reads come from Redis and, when
it lost the cart (eviction, restart, flush), from SQL, refilling Redis.

Each Redis copy names its owner, and a read serves only a copy that names the owner asked
for: bytes copied from one cart's key to another's (by an operator, a faulty migration or
an attacker with Redis access) are a counted miss (``invalid_payloads`` and ``misses``),
read from SQL, and the bad copy is replaced by the right one.

Failure behaviour:

* database down: a change raises :class:`~cachekit.exceptions.CartUnavailable` and
  Redis is not touched; a read served by Redis still works.
* Redis down: changes still commit (the stale Redis copy, if any, is deleted in the
  background with retries) and reads are served from SQL.

Usage::

    cart = CartStore(cache, engine)
    await cart.create_schema()
    await cart.add("alice", "SKU-1", 2)        # {'SKU-1': 2}
    cart.sync.get("alice")                     # the blocking twin
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Generic, TypeVar

from sqlalchemy import Connection, Engine, MetaData
from sqlalchemy.ext.asyncio import AsyncEngine

from cachekit.backends.ops import Delete
from cachekit.backends.ops.records import CartRead, CartRecord, ReadCart, StoreCart
from cachekit.config import to_seconds
from cachekit.exceptions import BackendError, SerializationError
from cachekit.flow.context import Context, new_token
from cachekit.flow.effects import LOAD, Flow
from cachekit.flow.keys import escape
from cachekit.flow.raw import deferrable
from cachekit.flow.read import read_failed
from cachekit.sessions.cart_rules import Add, CartLimits, Change, Clear, Remove, SetQuantity
from cachekit.sessions.cart_sql import CartSql, CartTables

if TYPE_CHECKING:
    from cachekit.cache import Cache

__all__ = ["CartStore", "SyncCartStore"]

Items = dict[str, int]
R = TypeVar("R")


FILL_LEASE = 10.0  # seconds a reader that missed may take to read SQL and refill


def _lease(key: str) -> str:
    return key + ":fill"  # the record's hash tag: one Cluster slot for both


def _stored(
    ctx: Context, carts: Sequence[tuple[str, str]], ttl: float
) -> Flow[Sequence[CartRecord]]:
    """Commit in SQL (the face's load), then replace the Redis copies (``(key, owner)``)."""
    records: Sequence[CartRecord] = yield LOAD  # the transaction: committed, or raised
    for (key, owner), record in zip(carts, records, strict=True):
        try:
            yield StoreCart(key, _lease(key), owner, record.version, record.items, ttl)
        except BackendError:
            # The commit stands; a copy Redis may still hold is now old: delete it, now
            # or (Redis being down) in the background until it is gone.
            yield from deferrable(ctx, Delete([key]))
    return records


def _read(ctx: Context, key: str, owner: str, ttl: float) -> Flow[Items]:
    """Redis first; on a miss the committed cart from SQL (the face's load), refilled."""
    token = new_token()
    try:
        read: CartRead = yield ReadCart(key, _lease(key), owner, token, FILL_LEASE)
    except BackendError as exc:
        read_failed(ctx, exc)
        return (yield from _from_sql())
    except SerializationError as exc:
        ctx.stats.incr("invalid_payloads")
        ctx.log.warning(("cart", str(exc)), "cachekit: ignored %s", exc)
        with suppress(BackendError):
            yield Delete([key])  # the next read misses and refills it
        return (yield from _from_sql())
    if read.record is not None:
        ctx.stats.incr("hits")
        return read.record.items
    if read.foreign:
        # Another cart's bytes under this key (the read deleted them): never served.
        what = "a cart record that names another owner"
        ctx.stats.incr("invalid_payloads")
        ctx.log.warning(("cart", what), "cachekit: ignored %s", what)
    ctx.stats.incr("misses")
    record: CartRecord = yield LOAD
    try:
        # Refused when a change was stored meanwhile (even if evicted again since).
        yield StoreCart(key, _lease(key), owner, record.version, record.items, ttl, token)
    except BackendError as exc:
        read_failed(ctx, exc)
    return record.items


def _from_sql() -> Flow[Items]:
    record: CartRecord = yield LOAD
    return record.items


@dataclass(frozen=True, slots=True)
class _Plan(Generic[R]):
    """What one cart call needs from a face: a flow and the SQL body it loads."""

    flow: Flow[R]
    body: Callable[[Connection], object]


class CartStore:
    """Carts in Redis hashes, written through to SQL; async methods, ``.sync`` twins.

    **Parameters:**

    * **cache** - the :class:`~cachekit.Cache` whose Redis holds the copies.
    * **engine** - a SQLAlchemy ``Engine`` or ``AsyncEngine`` (the system of record).
    * **limits** - :class:`CartLimits` (quantity 1..999, 200 SKUs, SKU format).
    * **ttl** - how long Redis keeps an unused cart (default one day); SQL keeps it.
    * **metadata** - the SQLAlchemy ``MetaData`` to declare the tables in (default: a
      new one, at :attr:`metadata`), for migrations.

    Usage::

        cart = CartStore(cache, create_async_engine("postgresql+psycopg://..."))
        await cart.add(owner, "SKU-1", 1)
        await cart.merge(anonymous_owner, user_owner)    # on login
    """

    def __init__(
        self,
        cache: Cache,
        engine: Engine | AsyncEngine,
        *,
        limits: CartLimits | None = None,
        ttl: float | timedelta = 86_400,
        metadata: MetaData | None = None,
    ) -> None:
        self.cache = cache
        self.limits = limits or CartLimits()
        self.ttl = to_seconds(ttl, name="ttl")
        self.metadata = metadata if metadata is not None else MetaData()
        self.tables = CartTables(self.metadata, self.limits)
        self.sql = CartSql(engine)
        self.sync = SyncCartStore(self)

    async def create_schema(self) -> None:
        """Create the cart tables if they do not exist (idempotent)."""
        await self.sql.arun(self.metadata.create_all)

    async def get(self, owner: str) -> Items:
        """``{sku: quantity}`` of ``owner``'s cart (``{}`` when empty)."""
        return await self._drive(self._read(owner))

    async def add(self, owner: str, sku: str, qty: int = 1) -> Items:
        """Add ``qty`` of ``sku``; the cart after the change, committed."""
        return await self._drive(self._change(owner, Add(self._sku(sku), self._qty(qty))))

    async def set(self, owner: str, sku: str, qty: int) -> Items:
        """Hold exactly ``qty`` of ``sku`` (idempotent); the cart after it, committed."""
        change = SetQuantity(self._sku(sku), self._qty(qty))
        return await self._drive(self._change(owner, change))

    async def remove(self, owner: str, sku: str) -> Items:
        """Drop ``sku`` (no error when absent); the cart after it, committed."""
        return await self._drive(self._change(owner, Remove(self._sku(sku))))

    async def clear(self, owner: str) -> Items:
        """Empty ``owner``'s cart, committed."""
        return await self._drive(self._change(owner, Clear()))

    async def merge(self, source: str, target: str) -> Items:
        """Move ``source``'s cart into ``target``'s (login); ``target``'s cart after it.

        Quantities are summed (capped at ``max_quantity``; SKUs beyond ``max_skus`` are
        left out) and ``source`` is emptied in the same transaction, so merging twice
        adds nothing the second time.
        """
        return await self._drive(self._merge(source, target))

    async def _drive(self, plan: _Plan[R]) -> R:
        b = self.cache.bound()
        return await b.aio.drive(plan.flow, lambda: self.sql.arun(plan.body))

    # The plans are the whole of each call but its I/O: both faces share them.

    def _key(self, ctx: Context, owner: str) -> str:
        return ctx.keyspace.namespaced("cart", escape(owner))

    def _ctx(self) -> Context:
        return self.cache.bound().ctx

    def _sku(self, sku: str) -> str:
        return self.limits.sku(sku)

    def _qty(self, qty: int) -> int:
        return self.limits.quantity(qty)

    def _read(self, owner: str) -> _Plan[Items]:
        owner, ctx = self.limits.owner(owner), self._ctx()
        return _Plan(
            _read(ctx, self._key(ctx, owner), owner, self.ttl),
            partial(self.tables.read, owner=owner),
        )

    def _change(self, owner: str, change: Change) -> _Plan[Items]:
        owner, ctx = self.limits.owner(owner), self._ctx()
        flow = _first(_stored(ctx, [(self._key(ctx, owner), owner)], self.ttl))

        def body(conn: Connection) -> list[CartRecord]:
            return [self.tables.change(conn, owner, change)]

        return _Plan(flow, body)

    def _merge(self, source: str, target: str) -> _Plan[Items]:
        source, target = self.limits.owner(source), self.limits.owner(target)
        if source == target:
            return self._read(target)
        ctx = self._ctx()
        carts = [(self._key(ctx, source), source), (self._key(ctx, target), target)]
        return _Plan(
            _last(_stored(ctx, carts, self.ttl)),
            partial(self.tables.merge, source=source, target=target),
        )


def _first(flow: Flow[Sequence[CartRecord]]) -> Flow[Items]:
    records = yield from flow
    return records[0].items


def _last(flow: Flow[Sequence[CartRecord]]) -> Flow[Items]:
    records = yield from flow
    return records[-1].items


class SyncCartStore:
    """The blocking twin of :class:`CartStore`, at ``cart.sync`` (needs a sync ``Engine``).

    Usage::

        cart.sync.add("alice", "SKU-1", 2)
    """

    def __init__(self, store: CartStore) -> None:
        self._store = store

    def create_schema(self) -> None:
        """Create the cart tables if they do not exist (idempotent)."""
        self._store.sql.run(self._store.metadata.create_all)

    def get(self, owner: str) -> Items:
        """``{sku: quantity}`` of ``owner``'s cart."""
        return self._drive(self._store._read(owner))

    def add(self, owner: str, sku: str, qty: int = 1) -> Items:
        """Add ``qty`` of ``sku``; the cart after the change, committed."""
        s = self._store
        return self._drive(s._change(owner, Add(s._sku(sku), s._qty(qty))))

    def set(self, owner: str, sku: str, qty: int) -> Items:
        """Hold exactly ``qty`` of ``sku``; the cart after it, committed."""
        s = self._store
        return self._drive(s._change(owner, SetQuantity(s._sku(sku), s._qty(qty))))

    def remove(self, owner: str, sku: str) -> Items:
        """Drop ``sku``; the cart after it, committed."""
        s = self._store
        return self._drive(s._change(owner, Remove(s._sku(sku))))

    def clear(self, owner: str) -> Items:
        """Empty ``owner``'s cart, committed."""
        return self._drive(self._store._change(owner, Clear()))

    def merge(self, source: str, target: str) -> Items:
        """Move ``source``'s cart into ``target``'s; ``target``'s cart after it."""
        return self._drive(self._store._merge(source, target))

    def _drive(self, plan: _Plan[R]) -> R:
        self._store.sql.require_sync()  # on every call, not only when a read misses
        b = self._store.cache.bound()
        return b.sync.drive(plan.flow, lambda: self._store.sql.run(plan.body))
