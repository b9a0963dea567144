"""The shopping cart (issue 7): SQL is the record, Redis the fast copy, nothing is lost.

Unit tests run on the memory backend and a SQLite file of their own; integration tests run
on the shared Redis (``prefix`` isolates the keys) and ``database_url`` (PostgreSQL in CI,
SQLite otherwise). The cart tables are shared and created idempotently, so every test
isolates itself with owner ids of its own (a uuid), never by dropping tables.

SQL is read here with plain selects on ``cart_items``/``cart_versions`` and Redis with raw
``HGETALL``, so the tests do not trust the code they check.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import random
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from sqlalchemy import (
    Engine,
    MetaData,
    column,
    create_engine,
    event,
    select,
    table,
)
from sqlalchemy import (
    inspect as sa_inspect,
)
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cachekit import Cache
from cachekit.backends.ops import Delete, Get, Set
from cachekit.backends.ops.records import CartRead, CartRecord, ReadCart, StoreCart
from cachekit.exceptions import (
    CartUnavailable,
    ConfigurationError,
    InvalidCartInput,
    SerializationError,
)
from cachekit.sessions import CartLimits, CartStore, SyncCartStore
from cachekit.sessions.cart_rules import Add, merge_into
from cachekit.testing import FakeClock
from tests.support.fleet import run_fleet
from tests.support.servers import PrivateServer, free_port

ROOT = Path(__file__).resolve().parents[2]
Items = dict[str, int]

ITEMS = table("cart_items", column("owner"), column("sku"), column("qty"))
VERSIONS = table("cart_versions", column("owner"), column("version"))


# ---------------------------------------------------------------- helpers


def new_owner(tag: str = "u") -> str:
    return f"{tag}-{uuid.uuid4().hex}"


def cart_key(prefix: str, owner: str) -> str:
    """The Redis key of ``owner``'s cart (for owners without characters to escape)."""
    return f"{prefix}:cart:{{{owner}}}"


def sql_items(engine: Engine, owner: str) -> Items:
    """``owner``'s rows in ``cart_items``, read directly."""
    with engine.connect() as conn:
        rows = conn.execute(select(ITEMS.c.sku, ITEMS.c.qty).where(ITEMS.c.owner == owner))
        return {str(sku): int(qty) for sku, qty in rows}


def sql_version(engine: Engine, owner: str) -> int | None:
    """``owner``'s row in ``cart_versions`` (``None`` when the cart was never changed)."""
    with engine.connect() as conn:
        version = conn.scalar(select(VERSIONS.c.version).where(VERSIONS.c.owner == owner))
        return None if version is None else int(version)


def sql_state(engine: Engine, owner: str) -> tuple[int | None, Items]:
    return sql_version(engine, owner), sql_items(engine, owner)


def redis_cart(raw: redis.Redis, key: str) -> tuple[int, Items] | None:
    """The cart hash under ``key`` by raw ``HGETALL``: ``(version, items)``, or ``None``.

    Also checks that the hash names the owner of ``key`` (the id between its braces).
    """
    fields: dict[bytes, bytes] = raw.hgetall(key)  # type: ignore[assignment]
    if not fields:
        return None
    owner = fields.pop(b"@owner").decode()
    assert owner == key[key.index("{") + 1 : key.rindex("}")], f"{key} names {owner!r}"
    decoded = {name.decode(): int(value) for name, value in fields.items()}
    return decoded.pop("@version"), decoded


def dump(raw: redis.Redis, key: str) -> bytes | None:
    """The exact bytes Redis holds under ``key`` (``DUMP``), to prove nothing changed."""
    value: bytes | None = raw.dump(key)
    return value


def mem_read(cache: Cache, owner: str) -> CartRecord | None:
    """The cart record a memory-backed cache holds for ``owner``."""
    key = mem_key(owner)
    read: CartRead = cache.bound().sync.backend.run(ReadCart(key, key + ":fill", owner, b"t", 10))
    return read.record


def mem_key(owner: str) -> str:
    return f"cachekit:cart:{{{owner}}}"


def broken_url(database_url: str, tmp_path: Path, *, asynchronous: bool = False) -> str:
    """A URL of the same kind as ``database_url`` whose database cannot be reached."""
    if database_url.startswith("postgresql"):
        return f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test"
    scheme = "sqlite+aiosqlite" if asynchronous else "sqlite"
    return f"{scheme}:///{tmp_path}/no/such/dir/cart.db"


class StatementCounter:
    """Counts the SQL statements an engine sends (a ``before_cursor_execute`` listener)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.count = 0
        self.threads: set[int] = set()
        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, *args: Any) -> None:
        self.count += 1
        self.threads.add(threading.get_ident())

    def remove(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._seen)


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """A sync engine on the test database (PostgreSQL in CI, else SQLite)."""
    eng = create_engine(database_url)
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture
async def aengine(async_database_url: str) -> AsyncIterator[AsyncEngine]:
    """An async engine on the test database."""
    eng = create_async_engine(async_database_url)
    try:
        yield eng
    finally:
        await eng.dispose()


@pytest.fixture
def cart(redis_cache: Cache, engine: Engine) -> CartStore:
    """A cart on the shared Redis and the test database, schema created."""
    store = CartStore(redis_cache, engine)
    store.sync.create_schema()
    return store


@pytest.fixture
def mem_engine(tmp_path: Path) -> Iterator[Engine]:
    """A SQLite file of this test's own."""
    eng = create_engine(f"sqlite:///{tmp_path}/cart.db")
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture
def mem_cart(memory_cache: Cache, mem_engine: Engine) -> CartStore:
    """A cart on the memory backend and a private SQLite file: fast unit tests."""
    store = CartStore(memory_cache, mem_engine)
    store.sync.create_schema()
    return store


@pytest.fixture
async def unusable_cart(tmp_path: Path) -> CartStore:
    """A cart whose cache is closed and whose database cannot be opened: any I/O raises."""
    cache = Cache.from_url("memory://")
    await cache.close()
    return CartStore(cache, create_engine(f"sqlite:///{tmp_path}/no/such/dir/cart.db"))


# ---------------------------------------------------------------- 1. basic behaviour


def test_add_set_remove_get_clear_on_memory_backend(mem_cart: CartStore) -> None:
    """Each call returns the committed cart; get reads it back; clear empties it."""
    o = mem_cart.sync
    owner = new_owner()
    assert o.get(owner) == {}
    assert o.add(owner, "SKU-1", 2) == {"SKU-1": 2}
    assert o.add(owner, "SKU-1") == {"SKU-1": 3}
    assert o.add(owner, "B.2_x-y", 5) == {"SKU-1": 3, "B.2_x-y": 5}
    assert o.set(owner, "SKU-1", 7) == {"SKU-1": 7, "B.2_x-y": 5}
    assert o.set(owner, "SKU-1", 7) == {"SKU-1": 7, "B.2_x-y": 5}  # idempotent
    assert o.remove(owner, "B.2_x-y") == {"SKU-1": 7}
    assert o.get(owner) == {"SKU-1": 7}
    assert o.clear(owner) == {}
    assert o.get(owner) == {}
    assert o.add(owner, "SKU-1", 1) == {"SKU-1": 1}


async def test_async_methods_on_memory_backend(mem_cart: CartStore, mem_engine: Engine) -> None:
    """The async methods (sync Engine underneath) behave as the sync twin and commit."""
    owner = new_owner()
    assert await mem_cart.add(owner, "A", 1) == {"A": 1}
    assert await mem_cart.set(owner, "B", 4) == {"A": 1, "B": 4}
    assert await mem_cart.remove(owner, "A") == {"B": 4}
    assert await mem_cart.get(owner) == {"B": 4}
    assert sql_items(mem_engine, owner) == {"B": 4}
    assert await mem_cart.clear(owner) == {}
    assert sql_items(mem_engine, owner) == {}


def test_remove_of_absent_sku_is_not_an_error(mem_cart: CartStore, mem_engine: Engine) -> None:
    """Removing a SKU the cart does not hold (or from a new cart) changes nothing, no error."""
    owner = new_owner()
    assert mem_cart.sync.remove(owner, "NOPE") == {}
    mem_cart.sync.add(owner, "A", 2)
    assert mem_cart.sync.remove(owner, "NOPE") == {"A": 2}
    assert sql_items(mem_engine, owner) == {"A": 2}
    assert mem_cart.sync.get(owner) == {"A": 2}


def test_clear_keeps_the_version_so_an_old_copy_cannot_return(
    mem_cart: CartStore, memory_cache: Cache, mem_engine: Engine
) -> None:
    """clear empties SQL and leaves an empty copy at the new version, fencing older refills."""
    owner = new_owner()
    mem_cart.sync.add(owner, "A", 1)
    mem_cart.sync.add(owner, "B", 1)
    assert mem_cart.sync.clear(owner) == {}
    assert sql_state(mem_engine, owner) == (3, {})
    assert mem_read(memory_cache, owner) == CartRecord(3, {})
    refill = StoreCart(mem_key(owner), mem_key(owner) + ":fill", owner, 2, {"A": 1, "B": 1}, 60)
    assert memory_cache.bound().sync.backend.run(refill) is False
    assert mem_cart.sync.get(owner) == {}
    assert mem_cart.sync.clear(owner) == {}  # clearing an empty cart is fine


def test_carts_of_different_owners_are_independent(mem_cart: CartStore) -> None:
    """Owners with key-special characters get distinct carts (the key escaping is injective)."""
    tag = uuid.uuid4().hex
    a, b, c = f"a:b{{c}}-{tag}", f"a%3Ab%7Bc%7D-{tag}", f"Zoë 🛒 {tag}"
    mem_cart.sync.add(a, "A", 1)
    mem_cart.sync.add(b, "B", 2)
    mem_cart.sync.add(c, "C", 3)
    assert mem_cart.sync.get(a) == {"A": 1}
    assert mem_cart.sync.get(b) == {"B": 2}
    assert mem_cart.sync.get(c) == {"C": 3}


def test_ttl_expiry_on_memory_backend_rebuilds_from_sql(
    memory_cache: Cache, mem_engine: Engine, clock: FakeClock
) -> None:
    """After the Redis copy's TTL passes, get is a miss served and refilled from SQL."""
    store = CartStore(memory_cache, mem_engine, ttl=timedelta(minutes=5))
    store.sync.create_schema()
    owner = new_owner()
    store.sync.add(owner, "A", 3)
    clock.advance(299)
    assert mem_read(memory_cache, owner) is not None
    clock.advance(2)
    assert mem_read(memory_cache, owner) is None
    misses = memory_cache.stats()["misses"]
    assert store.sync.get(owner) == {"A": 3}
    assert memory_cache.stats()["misses"] == misses + 1
    assert mem_read(memory_cache, owner) == CartRecord(1, {"A": 3})


def test_stats_count_hits_and_misses(
    mem_cart: CartStore, memory_cache: Cache, mem_engine: Engine
) -> None:
    """A read of a cached cart is a hit, of a lost one a miss; changes count neither."""
    owner = new_owner()
    base = memory_cache.stats()
    mem_cart.sync.add(owner, "A", 1)
    mem_cart.sync.set(owner, "A", 2)
    after_changes = memory_cache.stats()
    assert (after_changes["hits"], after_changes["misses"]) == (base["hits"], base["misses"])
    assert mem_cart.sync.get(owner) == {"A": 2}
    assert memory_cache.stats()["hits"] == base["hits"] + 1
    memory_cache.bound().sync.backend.run(Delete([mem_key(owner)]))
    assert mem_cart.sync.get(owner) == {"A": 2}
    assert memory_cache.stats()["misses"] == base["misses"] + 1
    assert mem_cart.sync.get(owner) == {"A": 2}  # refilled: a hit again
    assert memory_cache.stats()["hits"] == base["hits"] + 2
    assert memory_cache.stats()["fallbacks"] == base["fallbacks"]
    owner2 = new_owner()
    assert mem_cart.sync.get(owner2) == {}  # an owner with no cart: a miss, SQL says empty
    assert memory_cache.stats()["misses"] == base["misses"] + 2


def test_metadata_declares_both_tables_for_migrations(
    memory_cache: Cache, mem_engine: Engine
) -> None:
    """cart.metadata (given or default) holds cart_items and cart_versions; create is idempotent."""
    md = MetaData()
    store = CartStore(memory_cache, mem_engine, metadata=md)
    assert store.metadata is md
    assert {"cart_items", "cart_versions"} <= set(md.tables)
    items, versions = md.tables["cart_items"], md.tables["cart_versions"]
    assert [c.name for c in items.primary_key.columns] == ["owner", "sku"]
    assert [c.name for c in versions.primary_key.columns] == ["owner"]
    default = CartStore(memory_cache, mem_engine).metadata
    assert {"cart_items", "cart_versions"} <= set(default.tables)
    md.create_all(mem_engine)  # as a migration tool would
    store.sync.create_schema()  # and again: idempotent
    assert {"cart_items", "cart_versions"} <= set(sa_inspect(mem_engine).get_table_names())
    owner = new_owner()
    store.sync.add(owner, "A", 1)
    assert sql_items(mem_engine, owner) == {"A": 1}


async def test_async_create_schema_is_idempotent(cart: CartStore) -> None:
    """create_schema (async) may run again on existing tables."""
    await cart.create_schema()
    await cart.create_schema()


def test_constructor_rejects_what_is_not_an_engine_or_a_ttl(
    memory_cache: Cache, mem_engine: Engine
) -> None:
    """A non-engine and a non-positive ttl are ConfigurationErrors; bad limits ValueErrors."""
    not_an_engine: Any = "sqlite://"
    with pytest.raises(ConfigurationError):
        CartStore(memory_cache, not_an_engine)
    for ttl in (0, -1, timedelta(0)):
        with pytest.raises(ConfigurationError):
            CartStore(memory_cache, mem_engine, ttl=ttl)
    bads: list[dict[str, Any]] = [{"max_quantity": 0}, {"max_skus": 0}, {"max_owner_chars": 0}]
    for bad in bads:
        with pytest.raises(ValueError, match="at least 1"):
            CartLimits(**bad)


# ---------------------------------------------------------------- 2. limits


def test_quantity_limit_is_checked_against_the_committed_total(
    mem_cart: CartStore, memory_cache: Cache, mem_engine: Engine
) -> None:
    """An add taking a SKU above 999 is refused, nothing changed (version included)."""
    owner = new_owner()
    mem_cart.sync.set(owner, "A", 999)
    before_sql, before_mem = sql_state(mem_engine, owner), mem_read(memory_cache, owner)
    with pytest.raises(InvalidCartInput, match="999"):
        mem_cart.sync.add(owner, "A", 1)
    assert sql_state(mem_engine, owner) == before_sql == (1, {"A": 999})
    assert mem_read(memory_cache, owner) == before_mem
    assert mem_cart.sync.set(owner, "A", 1) == {"A": 1}
    assert mem_cart.sync.add(owner, "A", 998) == {"A": 999}


def test_at_most_200_distinct_skus_by_default(
    mem_cart: CartStore, memory_cache: Cache, mem_engine: Engine
) -> None:
    """The 201st distinct SKU is refused (add and set); existing SKUs can still change."""
    owner = new_owner()
    for i in range(200):
        mem_cart.sync.set(owner, f"SKU-{i:03d}", 1)
    before_sql, before_mem = sql_state(mem_engine, owner), mem_read(memory_cache, owner)
    assert before_sql[0] == 200
    assert len(before_sql[1]) == 200
    with pytest.raises(InvalidCartInput, match="200"):
        mem_cart.sync.add(owner, "SKU-NEW", 1)
    with pytest.raises(InvalidCartInput, match="200"):
        mem_cart.sync.set(owner, "SKU-NEW", 1)
    assert sql_state(mem_engine, owner) == before_sql
    assert mem_read(memory_cache, owner) == before_mem
    assert mem_cart.sync.set(owner, "SKU-000", 5)["SKU-000"] == 5
    assert mem_cart.sync.add(owner, "SKU-001", 5)["SKU-001"] == 6
    mem_cart.sync.remove(owner, "SKU-199")
    assert len(mem_cart.sync.add(owner, "SKU-NEW", 1)) == 200


def test_configured_limits_are_enforced(memory_cache: Cache, mem_engine: Engine) -> None:
    """CartLimits changes the quantity range, SKU count, SKU format and owner length."""
    limits = CartLimits(max_quantity=10, max_skus=2, sku_pattern=r"[a-z]{1,5}", max_owner_chars=40)
    store = CartStore(memory_cache, mem_engine, limits=limits)
    store.sync.create_schema()
    assert store.limits is limits
    owner = new_owner()
    assert store.sync.add(owner, "abc", 10) == {"abc": 10}
    calls: list[Callable[[], object]] = [
        lambda: store.sync.add(owner, "abc", 1),  # 11 > 10
        lambda: store.sync.set(owner, "abc", 11),
        lambda: store.sync.add(owner, "ABC", 1),  # the pattern
        lambda: store.sync.add(owner, "abcdef", 1),
        lambda: store.sync.add(owner + "x" * 20, "abc", 1),  # 53 chars > 40
    ]
    for call in calls:
        with pytest.raises(InvalidCartInput):
            call()
    store.sync.add(owner, "de", 1)
    with pytest.raises(InvalidCartInput, match="2 different"):
        store.sync.add(owner, "f", 1)
    assert store.sync.get(owner) == {"abc": 10, "de": 1}
    assert sql_items(mem_engine, owner) == {"abc": 10, "de": 1}


def test_rules_are_pure_functions() -> None:
    """Add and merge_into work on plain dicts: sums, caps and SKU room."""
    limits = CartLimits(max_quantity=10, max_skus=2)
    assert Add("A", 2).apply({"A": 3}, limits) == {"A": 5}
    with pytest.raises(InvalidCartInput):
        Add("C", 1).apply({"A": 1, "B": 1}, limits)
    assert merge_into({"A": 9, "C": 1, "D": 1}, {"A": 5}, limits) == {"A": 10, "C": 1}
    assert merge_into({}, {"A": 5}, limits) == {"A": 5}
    assert merge_into({"A": 50}, {}, limits) == {"A": 10}


# ---------------------------------------------------------------- 3. bad input at the boundary

HUGE = "S" * 1_000_000
BAD_QUANTITIES: list[tuple[str, Any]] = [
    ("negative", -1),
    ("zero", 0),
    ("over-max", 1000),
    ("huge", 10**100),
    ("float", 1.5),
    ("whole-float", 3.0),
    ("str", "3"),
    ("true", True),
    ("false", False),
    ("none", None),
    ("inf", 1e400),
    ("nan", float("nan")),
]
BAD_SKUS: list[tuple[str, Any]] = [
    ("empty", ""),
    ("too-long", "A" * 65),
    ("newline", "A\n"),
    ("nul", "A\x00B"),
    ("space", "A B"),
    ("leading-dash", "-A"),
    ("non-ascii", "Ä1"),
    ("zero-width", "A1\u200b"),
    ("1MB", HUGE),
    ("int", 7),
    ("none", None),
    ("bytes", b"A-1"),
    ("list", ["A"]),
]
BAD_OWNERS: list[tuple[str, Any]] = [
    ("empty", ""),
    ("too-long", "o" * 129),
    ("newline", "a\nb"),
    ("nul", "a\x00"),
    ("line-separator", "a\u2028b"),
    ("surrogate", "a\ud800"),
    ("1MB", "o" * 1_000_000),
    ("int", 5),
    ("none", None),
    ("bytes", b"alice"),
]

Call = Callable[[Any, str], Any]


def _bad_calls() -> list[Any]:
    """``(cart or cart.sync, good owner) -> call`` for every kind of bad input and method."""
    calls: list[Any] = []
    for name, qty in BAD_QUANTITIES:
        calls.append(pytest.param(lambda c, o, q=qty: c.add(o, "SKU-1", q), id=f"add-qty-{name}"))
        calls.append(pytest.param(lambda c, o, q=qty: c.set(o, "SKU-1", q), id=f"set-qty-{name}"))
    for name, sku in BAD_SKUS:
        calls.append(pytest.param(lambda c, o, s=sku: c.add(o, s, 1), id=f"add-sku-{name}"))
        calls.append(pytest.param(lambda c, o, s=sku: c.set(o, s, 1), id=f"set-sku-{name}"))
        calls.append(pytest.param(lambda c, o, s=sku: c.remove(o, s), id=f"remove-sku-{name}"))
    for name, bad in BAD_OWNERS:
        calls += [
            pytest.param(lambda c, o, w=bad: c.get(w), id=f"get-owner-{name}"),
            pytest.param(lambda c, o, w=bad: c.add(w, "SKU-1", 1), id=f"add-owner-{name}"),
            pytest.param(lambda c, o, w=bad: c.set(w, "SKU-1", 1), id=f"set-owner-{name}"),
            pytest.param(lambda c, o, w=bad: c.remove(w, "SKU-1"), id=f"remove-owner-{name}"),
            pytest.param(lambda c, o, w=bad: c.clear(w), id=f"clear-owner-{name}"),
            pytest.param(lambda c, o, w=bad: c.merge(w, o), id=f"merge-from-{name}"),
            pytest.param(lambda c, o, w=bad: c.merge(o, w), id=f"merge-into-{name}"),
        ]
    return calls


BAD_CALLS = _bad_calls()


async def settle(result: Any) -> Any:
    """``result`` awaited if it is awaitable (an async method's), else as it is (a sync one's)."""
    if inspect.isawaitable(result):
        return await result
    return result


async def _call(target: CartStore | SyncCartStore, call: Call, owner: str) -> Any:
    return await settle(call(target, owner))


@pytest.mark.parametrize("face", ["async", "sync"])
@pytest.mark.parametrize("call", BAD_CALLS)
async def test_bad_input_is_refused_before_any_io(
    unusable_cart: CartStore, call: Call, face: str
) -> None:
    """Bad input raises InvalidCartInput on a cart whose every I/O path would raise otherwise."""
    target = unusable_cart if face == "async" else unusable_cart.sync
    with pytest.raises(InvalidCartInput):
        await _call(target, call, new_owner())


async def test_the_unusable_cart_does_fail_on_good_input(unusable_cart: CartStore) -> None:
    """Control for the test above: valid calls on that cart do reach I/O and fail."""
    from cachekit.exceptions import NotConfigured

    with pytest.raises(NotConfigured):
        await unusable_cart.add(new_owner(), "SKU-1", 1)
    with pytest.raises(NotConfigured):
        unusable_cart.sync.get(new_owner())
    with pytest.raises(CartUnavailable):
        await unusable_cart.create_schema()


@pytest.mark.parametrize("face", ["async", "sync"])
async def test_bad_input_changes_nothing_and_sends_no_sql(
    cart: CartStore, engine: Engine, raw_redis: redis.Redis, prefix: str, face: str
) -> None:
    """On a live cart every bad call leaves SQL and Redis byte-identical and sends 0 statements."""
    owner = new_owner()
    await cart.add(owner, "SKU-1", 2)
    await cart.add(owner, "SKU-2", 3)
    key = cart_key(prefix, owner)
    sql_before, redis_before = sql_state(engine, owner), dump(raw_redis, key)
    assert redis_before is not None
    counter = StatementCounter(engine)
    target = cart if face == "async" else cart.sync
    try:
        for param in BAD_CALLS:
            (call,) = param.values
            with pytest.raises(InvalidCartInput):
                await _call(target, call, owner)
            assert counter.count == 0, param.id
    finally:
        counter.remove()
    assert sql_state(engine, owner) == sql_before
    assert dump(raw_redis, key) == redis_before
    keys: list[bytes] = raw_redis.keys(f"{prefix}:*")  # type: ignore[assignment]
    assert keys == [key.encode()]  # no key for any bad owner either


async def test_limit_breaks_found_in_sql_change_nothing(
    redis_cache: Cache, engine: Engine, raw_redis: redis.Redis, prefix: str
) -> None:
    """Limits checked inside the transaction roll back: version, rows and Redis unchanged."""
    store = CartStore(redis_cache, engine, limits=CartLimits(max_quantity=10, max_skus=2))
    await store.create_schema()
    owner = new_owner()
    await store.add(owner, "A", 9)
    await store.add(owner, "B", 1)
    key = cart_key(prefix, owner)
    sql_before, redis_before = sql_state(engine, owner), dump(raw_redis, key)
    calls: list[Callable[[], Awaitable[Items]]] = [
        lambda: store.add(owner, "A", 2),
        lambda: store.add(owner, "C", 1),
        lambda: store.set(owner, "C", 1),
    ]
    for call in calls:
        with pytest.raises(InvalidCartInput):
            await call()
    assert sql_state(engine, owner) == sql_before == (2, {"A": 9, "B": 1})
    assert dump(raw_redis, key) == redis_before


BIG_BODY = b'{"sku": "A-1", "qty": 1, "pad": "' + b"x" * 1_000_000 + b'"}'
MANY_SKUS_BODY = json.dumps([{"sku": f"SKU-{i}", "qty": 1} for i in range(10_000)]).encode()
DEEP_BODY = b"[" * 100_000


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"null", id="null"),
        pytest.param(b"[]", id="list"),
        pytest.param(b'"x"', id="string"),
        pytest.param(b"{}", id="empty-object"),
        pytest.param(b'{"sku": "A"}', id="no-qty"),
        pytest.param(b'{"qty": 1}', id="no-sku"),
        pytest.param(b'{"sku": "A", "qty": 1, "x": 1}', id="extra-key"),
        pytest.param(b'{"sku": "A", "qty": 1.0}', id="float-qty"),
        pytest.param(b'{"sku": "A", "qty": "1"}', id="str-qty"),
        pytest.param(b'{"sku": "A", "qty": true}', id="bool-qty"),
        pytest.param(b'{"sku": "A", "qty": null}', id="null-qty"),
        pytest.param(b'{"sku": "A", "qty": 0}', id="zero-qty"),
        pytest.param(b'{"sku": "A", "qty": -5}', id="negative-qty"),
        pytest.param(b'{"sku": "A", "qty": 1e400}', id="inf-qty"),
        pytest.param(b'{"sku": "A", "qty": 100000000000000000000000}', id="bigint-qty"),
        pytest.param(b'{"sku": "", "qty": 1}', id="empty-sku"),
        pytest.param(b'{"sku": 1, "qty": 1}', id="int-sku"),
        pytest.param(b'{"sku": "A\\u0000", "qty": 1}', id="nul-sku"),
        pytest.param(b'{"sku": "A", "qty": 1', id="truncated"),
        pytest.param(b"\xff\xfe{}", id="not-utf8"),
        pytest.param(b'{"sku": "A", "qty": NaN}', id="nan"),
        pytest.param(BIG_BODY, id="1MB"),
        pytest.param(MANY_SKUS_BODY, id="10000-skus"),
        pytest.param(DEEP_BODY, id="deep-100000"),
        pytest.param(b"[" * 600 + b"]" * 600, id="deep-1200-bytes"),
    ],
)
def test_line_refuses_bad_request_bodies(body: bytes) -> None:
    """CartLimits.line raises InvalidCartInput for every malformed or oversized body."""
    with pytest.raises(InvalidCartInput):
        CartLimits().line(body)


def test_line_parses_good_bodies_and_url_skus() -> None:
    """line returns (sku, qty); with sku= the body holds only qty; max_bytes is honoured."""
    limits = CartLimits()
    assert limits.line(b'{"sku": "A-1", "qty": 2}') == ("A-1", 2)
    assert limits.line(b'{"qty": 999}', sku="B") == ("B", 999)
    with pytest.raises(InvalidCartInput):
        limits.line(b'{"sku": "A-1", "qty": 2}', sku="A-1")  # sku in both places
    with pytest.raises(InvalidCartInput):
        limits.line(b'{"qty": 2}', sku="bad sku")
    body = b'{"sku": "A-1", "qty": 2}'
    with pytest.raises(InvalidCartInput, match="at most 10 bytes"):
        limits.line(body, max_bytes=10)
    assert limits.line(body, max_bytes=len(body)) == ("A-1", 2)
    deep = b'{"sku": "A", "qty": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    with pytest.raises(InvalidCartInput):
        limits.line(deep, max_bytes=10**6)  # deep but small enough to parse: still refused


# ---------------------------------------------------------------- 4. SQL equals Redis


@pytest.mark.parametrize("kind", ["sync-engine", "async-engine"])
async def test_sql_equals_redis_after_every_kind_of_change(
    redis_cache: Cache,
    engine: Engine,
    async_database_url: str,
    raw_redis: redis.Redis,
    prefix: str,
    kind: str,
) -> None:
    """After add/set/remove/clear/merge, the returned cart, SQL, raw Redis and get all agree."""
    aeng = create_async_engine(async_database_url) if kind == "async-engine" else None
    store = CartStore(redis_cache, aeng if aeng is not None else engine)
    await store.create_schema()
    owner, other = new_owner(), new_owner()

    async def agree(result: Items, who: str) -> None:
        version, items = sql_state(engine, who)
        assert items == result
        assert redis_cart(raw_redis, cart_key(prefix, who)) == (version, result)
        assert await store.get(who) == result

    try:
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("add", lambda: store.add(owner, "A", 2)),
            ("add-again", lambda: store.add(owner, "A", 3)),
            ("add-other", lambda: store.add(owner, "B", 1)),
            ("set", lambda: store.set(owner, "B", 7)),
            ("set-new", lambda: store.set(owner, "C", 1)),
            ("remove", lambda: store.remove(owner, "A")),
            ("remove-absent", lambda: store.remove(owner, "A")),
            ("clear", lambda: store.clear(owner)),
            ("add-after-clear", lambda: store.add(owner, "D", 4)),
        ]
        for _, step in steps:
            await agree(await step(), owner)
        await store.add(other, "D", 1)
        await store.add(other, "E", 2)
        merged = await store.merge(other, owner)
        assert merged == {"D": 5, "E": 2}
        await agree(merged, owner)
        await agree({}, other)
        assert sql_version(engine, owner) == len(steps) + 1
        fields = raw_redis.type(cart_key(prefix, owner))
        assert fields == b"hash"
    finally:
        if aeng is not None:
            await aeng.dispose()


async def test_redis_copy_has_the_configured_ttl(
    redis_cache: Cache, engine: Engine, raw_redis: redis.Redis, prefix: str
) -> None:
    """Every stored copy (change or refill) expires after the store's ttl; SQL keeps the cart."""
    store = CartStore(redis_cache, engine, ttl=timedelta(minutes=5))
    owner = new_owner()
    await store.add(owner, "A", 1)
    key = cart_key(prefix, owner)
    pttl = int(raw_redis.pttl(key))
    assert 290_000 < pttl <= 300_000
    raw_redis.delete(key)
    await store.get(owner)
    pttl = int(raw_redis.pttl(key))
    assert 290_000 < pttl <= 300_000
    default = CartStore(redis_cache, engine)
    await default.add(owner, "A", 1)
    assert 86_390_000 < int(raw_redis.pttl(key)) <= 86_400_000


# ---------------------------------------------------------------- 5. Redis lost the cart


async def test_evicted_cart_is_rebuilt_from_sql_and_refilled(
    cart: CartStore, redis_cache: Cache, engine: Engine, raw_redis: redis.Redis, prefix: str
) -> None:
    """DEL of the cart key: get misses, returns the SQL cart and refills Redis at its version."""
    owner = new_owner()
    await cart.add(owner, "A", 2)
    await cart.set(owner, "B", 5)
    key = cart_key(prefix, owner)
    assert raw_redis.delete(key) == 1
    misses = redis_cache.stats()["misses"]
    assert await cart.get(owner) == {"A": 2, "B": 5}
    assert redis_cache.stats()["misses"] == misses + 1
    assert redis_cart(raw_redis, key) == (2, {"A": 2, "B": 5})
    hits = redis_cache.stats()["hits"]
    assert cart.sync.get(owner) == {"A": 2, "B": 5}
    assert redis_cache.stats()["hits"] == hits + 1
    raw_redis.delete(key)  # a change after eviction stores the whole cart, not a delta
    assert await cart.add(owner, "C", 1) == {"A": 2, "B": 5, "C": 1}
    assert redis_cart(raw_redis, key) == (3, {"A": 2, "B": 5, "C": 1})


async def test_foreign_and_wrong_type_keys_are_replaced(
    cart: CartStore, redis_cache: Cache, engine: Engine, raw_redis: redis.Redis, prefix: str
) -> None:
    """A hash naming no owner is foreign (replaced by the SQL cart); a non-hash fails open."""
    owner = new_owner()
    await cart.add(owner, "A", 2)
    key = cart_key(prefix, owner)
    raw_redis.delete(key)
    raw_redis.hset(key, mapping={"A": "999", "EVIL": "5"})
    invalid = redis_cache.stats()["invalid_payloads"]
    assert await cart.get(owner) == {"A": 2}
    assert redis_cache.stats()["invalid_payloads"] == invalid + 1
    assert redis_cart(raw_redis, key) == (1, {"A": 2})  # replaced in the same read
    assert await cart.get(owner) == {"A": 2}
    raw_redis.delete(key)
    raw_redis.set(key, b"not a hash")
    fallbacks = redis_cache.stats()["fallbacks"]
    assert await cart.get(owner) == {"A": 2}
    assert redis_cache.stats()["fallbacks"] == fallbacks + 1
    assert await cart.add(owner, "B", 1) == {"A": 2, "B": 1}  # commits; the bad key goes
    assert sql_items(engine, owner) == {"A": 2, "B": 1}
    assert await cart.get(owner) == {"A": 2, "B": 1}
    assert redis_cart(raw_redis, key) == (2, {"A": 2, "B": 1})


async def test_corrupted_cart_hash_is_a_miss(
    cart: CartStore, engine: Engine, raw_redis: redis.Redis, prefix: str
) -> None:
    """A cart hash whose quantity is not a number is a counted miss, deleted and refilled."""
    owner = new_owner()
    await cart.add(owner, "A", 2)
    key = cart_key(prefix, owner)
    raw_redis.hset(key, "A", "zz")
    invalid = cart.cache.stats()["invalid_payloads"]
    assert await cart.get(owner) == {"A": 2}
    assert cart.cache.stats()["invalid_payloads"] == invalid + 1
    assert raw_redis.exists(key) == 0  # deleted: the next read refills it
    assert await cart.get(owner) == {"A": 2}
    assert redis_cart(raw_redis, key) == (1, {"A": 2})


# ---------------------------------------------------------------- 5b. a copy names its owner


class Carts:
    """One cart store on either backend, with raw access to its Redis copies."""

    def __init__(self, store: CartStore, key: Callable[[str], str], raw: redis.Redis | None):
        self.store, self.key, self.raw = store, key, raw
        self.run = store.cache.bound().sync.backend.run

    async def get(self, face: str, owner: str) -> Items:
        return await self.store.get(owner) if face == "async" else self.store.sync.get(owner)

    async def add(self, face: str, owner: str, sku: str, qty: int) -> Items:
        if face == "async":
            return await self.store.add(owner, sku, qty)
        return self.store.sync.add(owner, sku, qty)

    def copy(self, source: str, target: str) -> None:
        """Copy the bytes of ``source``'s record over ``target``'s, as a raw client would."""
        src, dst = self.key(source), self.key(target)
        if self.raw is not None:
            dumped = dump(self.raw, src)
            assert dumped is not None
            self.raw.restore(dst, 60_000, dumped, replace=True)
        else:  # the memory backend keeps a hash as one value: copy that value
            value: bytes | None = self.run(Get(src))
            assert value is not None
            self.run(Set(dst, value, ttl=60))

    def fields(self, owner: str) -> dict[str, bytes]:
        """The record's fields as stored (empty when absent)."""
        if self.raw is not None:
            raw: dict[bytes, bytes] = self.raw.hgetall(self.key(owner))  # type: ignore[assignment]
            return {name.decode(): value for name, value in raw.items()}
        packed = self.run(Get(self.key(owner)))
        if packed is None:
            return {}
        return {k: v.encode("latin-1") for k, v in orjson.loads(packed).items()}

    def plant(self, owner: str, fields: dict[str, bytes]) -> None:
        """Replace ``owner``'s record by exactly ``fields``."""
        key = self.key(owner)
        if self.raw is not None:
            self.raw.delete(key)
            self.raw.hset(key, mapping=fields)  # type: ignore[arg-type]
        else:
            packed = orjson.dumps({k: v.decode("latin-1") for k, v in fields.items()})
            self.run(Set(key, packed, ttl=60))

    def record(self, owner: str) -> tuple[bytes | None, int, Items] | None:
        """``(named owner, version, items)`` of the stored record, or ``None``."""
        fields = self.fields(owner)
        if not fields:
            return None
        named = fields.pop("@owner", None)
        version = int(fields.pop("@version"))
        return named, version, {sku: int(qty) for sku, qty in fields.items()}


@pytest.fixture(params=["memory", "redis"])
def carts(
    request: pytest.FixtureRequest, mem_cart: CartStore, prefix: str, redis_url: str
) -> Iterator[Carts]:
    """Carts on the memory backend or on the shared Redis (a sync engine, both faces)."""
    if request.param == "memory":
        yield Carts(mem_cart, mem_key, None)
        return
    store: CartStore = request.getfixturevalue("cart")
    raw = redis.Redis.from_url(redis_url)
    try:
        yield Carts(store, partial(cart_key, prefix), raw)
    finally:
        raw.close()


@pytest.mark.parametrize("face", ["async", "sync"])
async def test_bytes_copied_from_another_owners_cart_are_never_served(
    carts: Carts, face: str
) -> None:
    """A's record copied under B's key: B gets B's own cart from SQL (a counted miss), the
    copy is replaced by B's, and the next read is a hit on it."""
    alice, bob = new_owner("alice"), new_owner("bob")
    for qty in range(1, 4):  # A's copy carries a higher version than B's cart
        await carts.add(face, alice, "SECRET-SKU", qty)
    await carts.add(face, bob, "BOB-1", 1)
    carts.copy(alice, bob)
    assert carts.record(bob) == (alice.encode(), 3, {"SECRET-SKU": 6})  # the copy is there
    stats = carts.store.cache.stats
    before = stats()
    assert await carts.get(face, bob) == {"BOB-1": 1}
    after = stats()
    assert after["invalid_payloads"] == before["invalid_payloads"] + 1
    assert after["misses"] == before["misses"] + 1
    assert after["hits"] == before["hits"]
    assert carts.record(bob) == (bob.encode(), 1, {"BOB-1": 1})  # the bad copy replaced
    assert await carts.get(face, bob) == {"BOB-1": 1}
    assert stats()["hits"] == before["hits"] + 1
    assert await carts.get(face, alice) == {"SECRET-SKU": 6}  # A's own copy is untouched


@pytest.mark.parametrize("face", ["async", "sync"])
async def test_a_copied_cart_is_not_served_to_an_owner_without_one(carts: Carts, face: str) -> None:
    """B never had a cart (no SQL row): A's copied bytes give B an empty cart, not A's."""
    alice, bob = new_owner("alice"), new_owner("bob")
    await carts.add(face, alice, "SECRET-SKU", 1)
    carts.copy(alice, bob)
    invalid = carts.store.cache.stats()["invalid_payloads"]
    assert await carts.get(face, bob) == {}
    assert carts.store.cache.stats()["invalid_payloads"] == invalid + 1
    assert carts.record(bob) == (bob.encode(), 0, {})


@pytest.mark.parametrize("face", ["async", "sync"])
async def test_a_change_replaces_a_copied_record_whatever_version_it_claims(
    carts: Carts, face: str
) -> None:
    """A change of B stores B's cart over A's copied bytes even though A's version is higher."""
    alice, bob = new_owner("alice"), new_owner("bob")
    for _ in range(5):
        await carts.add(face, alice, "SECRET-SKU", 1)
    await carts.add(face, bob, "BOB-1", 1)
    carts.copy(alice, bob)
    assert await carts.add(face, bob, "BOB-2", 2) == {"BOB-1": 1, "BOB-2": 2}
    assert carts.record(bob) == (bob.encode(), 2, {"BOB-1": 1, "BOB-2": 2})
    hits = carts.store.cache.stats()["hits"]
    assert await carts.get(face, bob) == {"BOB-1": 1, "BOB-2": 2}
    assert carts.store.cache.stats()["hits"] == hits + 1


OWNER_DAMAGE = ["missing", "empty", "garbled", "truncated", "longer", "other"]


def damaged(owner: str, damage: str) -> bytes | None:
    """The @owner field after ``damage`` (``None``: the field is gone)."""
    return {
        "missing": None,
        "empty": b"",
        "garbled": b"\xff\xfe" + owner.encode()[2:],
        "truncated": owner.encode()[:-1],
        "longer": owner.encode() + b" ",
        "other": new_owner().encode(),
    }[damage]


@pytest.mark.parametrize("face", ["async", "sync"])
@pytest.mark.parametrize("damage", OWNER_DAMAGE)
async def test_a_record_with_a_missing_or_garbled_owner_is_a_counted_miss(
    carts: Carts, face: str, damage: str
) -> None:
    """The owner's own record with its @owner field removed or damaged is not served."""
    owner = new_owner()
    await carts.add(face, owner, "A", 2)
    await carts.add(face, owner, "B", 1)
    fields = carts.fields(owner)
    fields["A"] = b"999"  # what the damaged record would claim
    field = damaged(owner, damage)
    if field is None:
        del fields["@owner"]
    else:
        fields["@owner"] = field
    carts.plant(owner, fields)
    before = carts.store.cache.stats()
    assert await carts.get(face, owner) == {"A": 2, "B": 1}
    after = carts.store.cache.stats()
    assert after["invalid_payloads"] == before["invalid_payloads"] + 1
    assert after["misses"] == before["misses"] + 1
    assert carts.record(owner) == (owner.encode(), 2, {"A": 2, "B": 1})


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_store_cart_replaces_a_foreign_record_but_respects_an_unnamed_ones_version(
    request: pytest.FixtureRequest, backend: str, prefix: str
) -> None:
    """StoreCart: a record naming another owner is replaced at any version; one naming
    none (stored before records named their owner) still refuses older versions."""
    cache: Cache = request.getfixturevalue(f"{backend}_cache")
    run = cache.bound().sync.backend.run
    key = f"{prefix}:cart:{{bob}}"
    lease = key + ":fill"
    assert run(StoreCart(key, lease, "alice", 9, {"SECRET": 1}, 60)) is True  # a bad copy
    assert run(StoreCart(key, lease, "bob", 2, {"B": 1}, 60)) is True
    assert run(ReadCart(key, lease, "bob", b"r", 10)).record == CartRecord(2, {"B": 1})
    assert run(StoreCart(key, lease, "bob", 1, {"OLD": 1}, 60)) is False
    # The refill after a foreign miss: the read dropped the copy and leased the refill.
    assert run(StoreCart(key, lease, "alice", 9, {"SECRET": 1}, 60)) is True
    assert run(ReadCart(key, lease, "bob", b"refill", 10)) == CartRead(None, foreign=True)
    assert run(ReadCart(key, lease, "bob", b"refill", 10)) == CartRead(None)  # deleted
    assert run(StoreCart(key, lease, "bob", 2, {"B": 1}, 60, b"refill")) is True
    assert run(ReadCart(key, lease, "bob", b"r", 10)).record == CartRecord(2, {"B": 1})
    run(Delete([key]))
    unnamed = {"@version": b"5", "B": b"3"}
    if backend == "redis":
        client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
        client.hset(key, mapping=unnamed)  # type: ignore[arg-type]
        client.close()
    else:
        run(Set(key, orjson.dumps({k: v.decode() for k, v in unnamed.items()}), ttl=60))
    assert run(StoreCart(key, lease, "bob", 4, {"OLD": 1}, 60)) is False
    assert run(StoreCart(key, lease, "bob", 6, {"B": 4}, 60)) is True
    assert run(ReadCart(key, lease, "bob", b"r", 10)).record == CartRecord(6, {"B": 4})


def test_a_reply_naming_another_owner_is_refused_even_past_the_script() -> None:
    """The owner is checked again where the reply is parsed: a record the script let
    through by mistake would still never be served."""
    read = ReadCart("p:cart:{bob}", "p:cart:{bob}:fill", "bob", b"t", 10)
    assert read.parse([b"@owner", b"bob", b"@version", b"2", b"A", b"1"]) == CartRead(
        CartRecord(2, {"A": 1})
    )
    assert read.parse([]) == CartRead(None)
    assert read.parse(0) == CartRead(None, foreign=True)
    for reply in ([b"@owner", b"alice", b"@version", b"2"], [b"@version", b"2", b"A", b"1"]):
        with pytest.raises(SerializationError, match="names another owner"):
            read.parse(reply)


def test_skus_never_start_with_at_whatever_the_pattern() -> None:
    """The record's own fields start with '@': a permissive pattern cannot reach them."""
    limits = CartLimits(sku_pattern=r"\S+")
    for sku in ("@owner", "@version", "@x"):
        with pytest.raises(InvalidCartInput, match="'@'"):
            limits.sku(sku)
    assert limits.sku("x@y") == "x@y"


async def test_redis_restart_without_persistence_rebuilds_from_sql(
    private_redis: PrivateServer, engine: Engine
) -> None:
    """Redis SIGKILLed and restarted empty: get returns the SQL cart and refills Redis."""
    cache = Cache.from_url(private_redis.url, prefix="cart")
    store = CartStore(cache, engine)
    await store.create_schema()
    owner = new_owner()
    try:
        await store.add(owner, "A", 2)
        await store.add(owner, "B", 3)
        private_redis.kill()
        private_redis.start()
        raw = redis.Redis.from_url(private_redis.url)
        try:
            assert raw.dbsize() == 0
            misses = cache.stats()["misses"]
            assert await store.get(owner) == {"A": 2, "B": 3}
            assert cache.stats()["misses"] == misses + 1
            assert redis_cart(raw, cart_key("cart", owner)) == (2, {"A": 2, "B": 3})
            assert store.sync.get(owner) == {"A": 2, "B": 3}
        finally:
            raw.close()
    finally:
        await cache.close()


async def test_redis_down_serves_from_sql_and_changes_still_commit(
    engine: Engine, prefix: str
) -> None:
    """With nothing listening on the Redis port, changes commit in SQL and reads come from SQL."""
    cache = Cache.from_url(f"redis://127.0.0.1:{free_port()}/0", prefix=prefix)
    store = CartStore(cache, engine)
    owner, other = new_owner(), new_owner()
    try:
        assert await store.add(owner, "A", 2) == {"A": 2}
        assert store.sync.set(owner, "B", 4) == {"A": 2, "B": 4}
        assert await store.remove(owner, "A") == {"B": 4}
        await store.add(other, "B", 1)
        assert await store.merge(other, owner) == {"B": 5}
        assert sql_items(engine, owner) == {"B": 5}
        assert sql_items(engine, other) == {}
        fallbacks = cache.stats()["fallbacks"]
        assert await store.get(owner) == {"B": 5}
        assert store.sync.get(other) == {}
        stats = cache.stats()
        assert stats["fallbacks"] == fallbacks + 2
        assert stats["write_errors"] >= 5  # each copy's delete was queued for retry
        assert await store.clear(owner) == {}
        assert sql_items(engine, owner) == {}
    finally:
        await cache.close()


# ---------------------------------------------------------------- 6. database down


@pytest.mark.parametrize("kind", ["sync-engine", "async-engine"])
async def test_database_down_fails_changes_and_leaves_redis_unchanged(
    cart: CartStore,
    redis_cache: Cache,
    engine: Engine,
    database_url: str,
    raw_redis: redis.Redis,
    prefix: str,
    tmp_path: Path,
    kind: str,
) -> None:
    """Database unreachable: each change raises CartUnavailable; Redis and SQL stay as they were."""
    owner, other = new_owner(), new_owner()
    await cart.add(owner, "A", 2)
    await cart.add(other, "B", 1)
    url = broken_url(database_url, tmp_path, asynchronous=kind == "async-engine")
    bad_engine: Engine | AsyncEngine = (
        create_async_engine(url) if kind == "async-engine" else create_engine(url)
    )
    broken = CartStore(redis_cache, bad_engine)
    keys = [cart_key(prefix, owner), cart_key(prefix, other)]
    redis_before = [dump(raw_redis, k) for k in keys]
    sql_before = [sql_state(engine, owner), sql_state(engine, other)]
    try:
        changes: list[Callable[[], Any]] = [
            lambda: broken.add(owner, "A", 1),
            lambda: broken.add(owner, "NEW", 1),
            lambda: broken.set(owner, "A", 9),
            lambda: broken.remove(owner, "A"),
            lambda: broken.clear(owner),
            lambda: broken.merge(other, owner),
        ]
        if kind == "sync-engine":
            changes += [
                lambda: broken.sync.add(owner, "A", 1),
                lambda: broken.sync.merge(other, owner),
            ]
        for change in changes:
            with pytest.raises(CartUnavailable, match="nothing was changed"):
                await settle(change())
        assert [dump(raw_redis, k) for k in keys] == redis_before
        assert [sql_state(engine, owner), sql_state(engine, other)] == sql_before
        # A read Redis can serve still works; one it cannot is unavailable.
        assert await broken.get(owner) == {"A": 2}
        raw_redis.delete(keys[1])
        with pytest.raises(CartUnavailable):
            await broken.get(other)
        assert raw_redis.exists(keys[1]) == 0
        with pytest.raises(CartUnavailable):
            await broken.create_schema()
    finally:
        if isinstance(bad_engine, AsyncEngine):
            await bad_engine.dispose()
        else:
            bad_engine.dispose()


async def test_database_down_http_answers_503_and_changes_nothing(
    cart: CartStore,
    redis_cache: Cache,
    engine: Engine,
    database_url: str,
    raw_redis: redis.Redis,
    prefix: str,
    tmp_path: Path,
) -> None:
    """The HTTP boundary maps CartUnavailable to 503; Redis and SQL unchanged."""
    owner = new_owner()
    await cart.add(owner, "A", 1)
    bad_engine = create_engine(broken_url(database_url, tmp_path))
    broken = CartStore(redis_cache, bad_engine)
    key = cart_key(prefix, owner)
    before = dump(raw_redis, key), sql_state(engine, owner)
    try:
        async with client_for(broken) as http:
            response = await http.post(f"/cart/{owner}/items", content=b'{"sku":"A","qty":1}')
            assert response.status_code == 503
            response = await http.put(f"/cart/{owner}/items/A", content=b'{"qty":5}')
            assert response.status_code == 503
            response = await http.get(f"/cart/{owner}")
            assert (response.status_code, response.json()) == (200, {"A": 1})  # from Redis
        assert (dump(raw_redis, key), sql_state(engine, owner)) == before
    finally:
        bad_engine.dispose()


# ---------------------------------------------------------------- 7. HTTP boundary


def cart_app(cart: CartStore) -> Starlette:
    """A tiny shop API over ``cart``: 422 on InvalidCartInput, 503 on CartUnavailable."""

    async def get_cart(request: Request) -> JSONResponse:
        return JSONResponse(await cart.get(request.path_params["owner"]))

    async def add_item(request: Request) -> JSONResponse:
        sku, qty = cart.limits.line(await request.body())
        return JSONResponse(await cart.add(request.path_params["owner"], sku, qty))

    async def set_item(request: Request) -> JSONResponse:
        sku, qty = cart.limits.line(await request.body(), sku=request.path_params["sku"])
        return JSONResponse(await cart.set(request.path_params["owner"], sku, qty))

    async def invalid(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": str(exc)}, status_code=422)

    async def unavailable(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": str(exc)}, status_code=503)

    return Starlette(
        routes=[
            Route("/cart/{owner}", get_cart, methods=["GET"]),
            Route("/cart/{owner}/items", add_item, methods=["POST"]),
            Route("/cart/{owner}/items/{sku}", set_item, methods=["PUT"]),
        ],
        exception_handlers={InvalidCartInput: invalid, CartUnavailable: unavailable},
    )


def client_for(cart: CartStore) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=cart_app(cart))
    return httpx.AsyncClient(transport=transport, base_url="http://shop.test")


async def test_http_boundary_refuses_bad_bodies_with_4xx_and_changes_nothing(
    cart: CartStore, engine: Engine, raw_redis: redis.Redis, prefix: str
) -> None:
    """1 MB, 10,000-SKU, deep-JSON and malformed bodies get 422; SQL and Redis unchanged."""
    owner = new_owner()
    key = cart_key(prefix, owner)
    async with client_for(cart) as http:
        response = await http.post(f"/cart/{owner}/items", content=b'{"sku":"A-1","qty":2}')
        assert (response.status_code, response.json()) == (200, {"A-1": 2})
        response = await http.put(f"/cart/{owner}/items/A-1", content=b'{"qty":7}')
        assert (response.status_code, response.json()) == (200, {"A-1": 7})
        before = dump(raw_redis, key), sql_state(engine, owner)
        bad: list[tuple[str, str, bytes]] = [
            ("POST", f"/cart/{owner}/items", BIG_BODY),
            ("POST", f"/cart/{owner}/items", MANY_SKUS_BODY),
            ("POST", f"/cart/{owner}/items", DEEP_BODY),
            ("POST", f"/cart/{owner}/items", b'{"sku":"A-1","qty":1000}'),
            ("POST", f"/cart/{owner}/items", b'{"sku":"A-1","qty":-1}'),
            ("POST", f"/cart/{owner}/items", b'{"sku":"A-1","qty":"3"}'),
            ("POST", f"/cart/{owner}/items", b'{"sku":"A-1","qty":993}'),  # 7 + 993 > 999
            ("POST", f"/cart/{owner}/items", b"not json"),
            ("PUT", f"/cart/{owner}/items/A-1", b'{"qty":0}'),
            ("PUT", f"/cart/{owner}/items/%20bad", b'{"qty":1}'),
            ("PUT", f"/cart/{owner}/items/A-1", b'{"sku":"A-1","qty":1}'),
            ("POST", f"/cart/{'o' * 200}/items", b'{"sku":"A-1","qty":1}'),
        ]
        for method, url, body in bad:
            response = await http.request(method, url, content=body)
            assert response.status_code == 422, (method, url, body[:40], response.text)
            assert "error" in response.json()
        assert (dump(raw_redis, key), sql_state(engine, owner)) == before
        response = await http.get(f"/cart/{owner}")
        assert response.json() == {"A-1": 7}


# ---------------------------------------------------------------- 8. merge


def test_merge_sums_empties_the_source_and_is_idempotent(
    mem_cart: CartStore, memory_cache: Cache, mem_engine: Engine
) -> None:
    """merge sums quantities into the target, empties the source; a second merge adds nothing."""
    anon, user = new_owner("anon"), new_owner("user")
    mem_cart.sync.add(user, "A", 2)
    mem_cart.sync.add(user, "B", 1)
    mem_cart.sync.add(anon, "A", 3)
    mem_cart.sync.add(anon, "C", 4)
    expected = {"A": 5, "B": 1, "C": 4}
    assert mem_cart.sync.merge(anon, user) == expected
    assert mem_cart.sync.get(user) == expected
    assert mem_cart.sync.get(anon) == {}
    assert sql_items(mem_engine, user) == expected
    assert sql_items(mem_engine, anon) == {}
    target_version = sql_version(mem_engine, user)
    assert mem_read(memory_cache, user) == CartRecord(target_version or 0, expected)
    assert mem_cart.sync.merge(anon, user) == expected  # a retried login
    assert sql_items(mem_engine, user) == expected
    assert mem_cart.sync.get(anon) == {}


async def test_merge_on_redis_and_sql_updates_both_copies(
    cart: CartStore, engine: Engine, raw_redis: redis.Redis, prefix: str
) -> None:
    """After a merge both carts' Redis copies equal SQL, versions included (async face)."""
    anon, user = new_owner("anon"), new_owner("user")
    await cart.add(anon, "A", 3)
    await cart.set(user, "A", 1)
    assert await cart.merge(anon, user) == {"A": 4}
    for who, items in ((anon, {}), (user, {"A": 4})):
        version, stored = sql_state(engine, who)
        assert stored == items
        assert redis_cart(raw_redis, cart_key(prefix, who)) == (version, items)
    assert await cart.merge(anon, user) == {"A": 4}
    assert await cart.get(user) == {"A": 4}


def test_merge_caps_quantities_and_leaves_out_skus_without_room(
    memory_cache: Cache, mem_engine: Engine
) -> None:
    """Sums are capped at max_quantity; SKUs beyond max_skus are left out (not an error)."""
    store = CartStore(memory_cache, mem_engine, limits=CartLimits(max_quantity=10, max_skus=3))
    store.sync.create_schema()
    anon, user = new_owner("anon"), new_owner("user")
    store.sync.set(user, "A", 8)
    store.sync.set(user, "B", 1)
    store.sync.add(anon, "Z", 2)  # added first, but the source is read in SKU order
    store.sync.add(anon, "C", 2)
    store.sync.add(anon, "A", 5)
    merged = store.sync.merge(anon, user)
    assert merged == {"A": 10, "B": 1, "C": 2}
    assert sql_items(mem_engine, user) == merged
    assert sql_items(mem_engine, anon) == {}  # Z is dropped with the source
    assert store.sync.get(anon) == {}


def test_merge_into_itself_and_from_empty_changes_nothing(
    mem_cart: CartStore, mem_engine: Engine
) -> None:
    """merge(x, x) returns x's cart untouched; merging an empty or unknown cart adds nothing."""
    user = new_owner("user")
    mem_cart.sync.add(user, "A", 2)
    version = sql_version(mem_engine, user)
    assert mem_cart.sync.merge(user, user) == {"A": 2}
    assert sql_state(mem_engine, user) == (version, {"A": 2})
    assert mem_cart.sync.merge(new_owner("never-used"), user) == {"A": 2}
    assert sql_items(mem_engine, user) == {"A": 2}
    assert mem_cart.sync.merge(user, new_owner("fresh")) == {"A": 2}  # into an empty cart
    assert mem_cart.sync.get(user) == {}


async def test_async_merge_into_itself_is_a_read(cart: CartStore, engine: Engine) -> None:
    """The async merge(x, x) returns the cart and bumps no version."""
    user = new_owner("user")
    await cart.add(user, "A", 1)
    assert await cart.merge(user, user) == {"A": 1}
    assert sql_state(engine, user) == (1, {"A": 1})


# ---------------------------------------------------------------- 9. sync twin and engines


async def test_sync_twin_with_sync_engine(
    cart: CartStore, engine: Engine, raw_redis: redis.Redis, prefix: str
) -> None:
    """cart.sync runs every call on a sync Engine; results, SQL and Redis agree."""
    assert isinstance(cart.sync, SyncCartStore)
    s, owner, anon = cart.sync, new_owner(), new_owner("anon")
    assert s.add(owner, "A") == {"A": 1}
    assert s.set(owner, "B", 3) == {"A": 1, "B": 3}
    assert s.remove(owner, "A") == {"B": 3}
    s.add(anon, "B", 2)
    assert s.merge(anon, owner) == {"B": 5}
    assert s.get(owner) == {"B": 5}
    assert redis_cart(raw_redis, cart_key(prefix, owner)) == sql_state(engine, owner)
    assert s.clear(owner) == {}
    assert sql_items(engine, owner) == {}
    assert await cart.get(owner) == {}


async def test_sync_twin_with_async_engine_is_a_configuration_error(
    redis_cache: Cache,
    aengine: AsyncEngine,
    engine: Engine,
    raw_redis: redis.Redis,
    prefix: str,
) -> None:
    """cart.sync on an AsyncEngine raises ConfigurationError and changes nothing."""
    store = CartStore(redis_cache, aengine)
    await store.create_schema()
    owner = new_owner()
    await store.add(owner, "A", 1)
    key = cart_key(prefix, owner)
    before = dump(raw_redis, key), sql_state(engine, owner)
    calls: list[Callable[[], object]] = [
        lambda: store.sync.add(owner, "A", 1),
        lambda: store.sync.set(owner, "A", 3),
        lambda: store.sync.remove(owner, "A"),
        lambda: store.sync.clear(owner),
        lambda: store.sync.merge(new_owner(), owner),
        lambda: store.sync.get(new_owner()),  # a miss must load from SQL
        store.sync.create_schema,
    ]
    for call in calls:
        with pytest.raises(ConfigurationError, match="synchronous Engine"):
            call()
    assert (dump(raw_redis, key), sql_state(engine, owner)) == before


async def test_async_methods_with_sync_engine_run_sql_in_a_thread(
    cart: CartStore, engine: Engine
) -> None:
    """With a sync Engine the async methods send their SQL from a worker thread, not the loop's."""
    counter = StatementCounter(engine)
    try:
        owner = new_owner()
        await cart.add(owner, "A", 1)
        await cart.merge(new_owner(), owner)
    finally:
        counter.remove()
    assert counter.count > 0
    assert threading.get_ident() not in counter.threads


# ---------------------------------------------------------------- 10. version fencing


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_store_cart_refuses_older_and_equal_versions(
    request: pytest.FixtureRequest, backend: str, prefix: str
) -> None:
    """StoreCart replaces the copy only with a newer version, and replaces it whole."""
    cache: Cache = request.getfixturevalue(f"{backend}_cache")
    run = cache.bound().sync.backend.run
    who = "fence"
    key = f"{prefix}:cart:{{{who}}}"
    lease = key + ":fill"
    assert run(ReadCart(key, lease, who, b"r1", 10)) == CartRead(
        None
    )  # a miss takes the fill lease
    assert run(StoreCart(key, lease, who, 5, {"A": 1, "B": 2}, 60)) is True
    assert run(StoreCart(key, lease, who, 4, {"OLD": 1}, 60)) is False
    assert run(StoreCart(key, lease, who, 5, {"SAME": 1}, 60)) is False
    assert run(ReadCart(key, lease, who, b"r2", 10)).record == CartRecord(5, {"A": 1, "B": 2})
    assert run(StoreCart(key, lease, who, 6, {"B": 3}, 60)) is True
    assert run(ReadCart(key, lease, who, b"r3", 10)).record == CartRecord(
        6, {"B": 3}
    )  # replaced whole
    assert run(StoreCart(key, lease, who, 7, {}, 60)) is True
    assert run(ReadCart(key, lease, who, b"r4", 10)).record == CartRecord(
        7, {}
    )  # empty is still a record
    assert run(StoreCart(key, lease, who, 3, {"OLD": 1}, 60)) is False


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_a_refill_needs_its_lease(
    request: pytest.FixtureRequest, backend: str, prefix: str
) -> None:
    """A refill stores only while its miss's lease stands; a change voids the lease."""
    cache: Cache = request.getfixturevalue(f"{backend}_cache")
    run = cache.bound().sync.backend.run
    who = "lease"
    key = f"{prefix}:cart:{{{who}}}"
    lease = key + ":fill"
    assert run(ReadCart(key, lease, who, b"old-reader", 10)) == CartRead(None)
    assert run(ReadCart(key, lease, who, b"new-reader", 10)) == CartRead(
        None
    )  # the later miss holds it
    assert run(StoreCart(key, lease, who, 1, {"A": 1}, 60, b"old-reader")) is False
    assert run(StoreCart(key, lease, who, 1, {"A": 1}, 60, b"new-reader")) is True
    assert run(Delete([key])) == 1
    assert run(ReadCart(key, lease, who, b"reader", 10)) == CartRead(None)
    assert run(StoreCart(key, lease, who, 2, {"A": 2}, 60)) is True  # a change: voids the lease
    assert run(Delete([key])) == 1  # evicted
    assert run(StoreCart(key, lease, who, 1, {"A": 1}, 60, b"reader")) is False


async def test_slow_readers_refill_cannot_overwrite_a_newer_cart(
    cart: CartStore, redis_cache: Cache, engine: Engine, raw_redis: redis.Redis, prefix: str
) -> None:
    """A reader whose SQL read predates a change's commit cannot store its older cart."""
    owner = new_owner()
    cart.sync.add(owner, "A", 1)
    key = cart_key(prefix, owner)
    raw_redis.delete(key)  # the reader will miss
    plan = cart._read(owner)

    def slow_load() -> CartRecord:
        record = cart.sql.run(partial(cart.tables.read, owner=owner))  # SQL read first...
        cart.sync.add(owner, "B", 2)  # ...then a change commits and stores version 2
        return record

    stale = redis_cache.bound().sync.drive(plan.flow, slow_load)
    assert stale == {"A": 1}  # the reader answers what it read
    assert redis_cart(raw_redis, key) == (2, {"A": 1, "B": 2})  # its refill was refused
    assert await cart.get(owner) == {"A": 1, "B": 2}


async def test_slow_readers_refill_after_eviction_cannot_hide_a_commit(
    cart: CartStore, redis_cache: Cache, engine: Engine, raw_redis: redis.Redis, prefix: str
) -> None:
    """A reader's old refill does not resurrect an old cart after the newer copy was evicted."""
    owner = new_owner()
    cart.sync.add(owner, "A", 1)
    key = cart_key(prefix, owner)
    raw_redis.delete(key)
    plan = cart._read(owner)

    def slow_load() -> CartRecord:
        record = cart.sql.run(partial(cart.tables.read, owner=owner))
        cart.sync.add(owner, "B", 2)  # committed and acknowledged: version 2
        raw_redis.delete(key)  # evicted (or Redis restarted) before the refill
        return record

    redis_cache.bound().sync.drive(plan.flow, slow_load)
    assert await cart.get(owner) == sql_items(engine, owner) == {"A": 1, "B": 2}


# ---------------------------------------------------------------- 11. concurrency


def check_concurrent_outcome(
    final: Items,
    n_adds: int,
    set_values: set[int],
    bumps: int,
    bump_values: list[int],
) -> None:
    """Every add is present, the set SKU holds one of the set values, no increment was lost."""
    assert {sku for sku in final if sku.startswith("P")} == {f"P-{i:02d}" for i in range(n_adds)}
    assert all(final[f"P-{i:02d}"] == 1 for i in range(n_adds))
    assert final["S"] in set_values
    assert final["N"] == bumps
    # Each increment saw its predecessor's commit: they returned 1, 2, ..., bumps.
    assert sorted(bump_values) == list(range(1, bumps + 1))


async def test_concurrent_adds_and_sets_on_async_engine(
    redis_cache: Cache, aengine: AsyncEngine, engine: Engine, raw_redis: redis.Redis, prefix: str
) -> None:
    """50 adds of different SKUs + 50 sets + 20 increments at once: nothing lost, SQL == Redis."""
    store = CartStore(redis_cache, aengine)
    await store.create_schema()
    owner = new_owner()
    adds = [store.add(owner, f"P-{i:02d}", 1) for i in range(50)]
    sets = [store.set(owner, "S", q) for q in range(1, 51)]
    bumps = [store.add(owner, "N", 1) for _ in range(20)]
    results = await asyncio.gather(*adds, *sets, *bumps)
    final = await store.get(owner)
    check_concurrent_outcome(final, 50, set(range(1, 51)), 20, [r["N"] for r in results[100:]])
    version, items = sql_state(engine, owner)
    assert version == 120
    assert items == final
    assert redis_cart(raw_redis, cart_key(prefix, owner)) == (120, final)
    # Each add returned a cart holding every add committed before it: a chain.
    p_counts = sorted(sum(s.startswith("P") for s in r) for r in results[:50])
    assert p_counts == list(range(1, 51))


@pytest.mark.slow
def test_concurrent_adds_and_sets_across_four_processes(
    cart: CartStore,
    redis_url: str,
    async_database_url: str,
    engine: Engine,
    raw_redis: redis.Redis,
    prefix: str,
) -> None:
    """4 processes released together: 50 adds + 50 sets + 20 increments, SQL == Redis."""
    owner = new_owner()
    processes = 4
    ready, go = f"{prefix}:ready", f"{prefix}:go"
    configs = [
        {
            "url": redis_url,
            "prefix": prefix,
            "database_url": async_database_url,
            "owner": owner,
            "ready": ready,
            "go": go,
            "adds": [f"P-{i:02d}" for i in range(w, 50, processes)],
            "set_sku": "S",
            "sets": list(range(w + 1, 51, processes)),
            "bump_sku": "N",
            "bumps": 5,
        }
        for w in range(processes)
    ]
    argvs = [[json.dumps(cfg)] for cfg in configs]
    reports = run_fleet("tests.workers.cart_worker", argvs, raw_redis, ready=ready, go=go)
    assert len({r["pid"] for r in reports}) == processes
    final = cart.sync.get(owner)
    bump_values = [cart_["N"] for r in reports for cart_ in r["bumps"]]
    check_concurrent_outcome(final, 50, set(range(1, 51)), 20, bump_values)
    version, items = sql_state(engine, owner)
    assert version == 120
    assert items == final
    assert redis_cart(raw_redis, cart_key(prefix, owner)) == (120, final)


# ---------------------------------------------------------------- 12. Redis crashes


@pytest.mark.slow
async def test_redis_killed_five_times_during_1000_changes_loses_nothing(
    private_redis: PrivateServer, engine: Engine, database_url: str, tmp_path: Path
) -> None:
    """SIGKILL + restart of Redis at 5 random points in 1,000 changes: reads equal the model.

    The model holds exactly the acknowledged changes. Three changes run while Redis is down
    (they must still commit); refused changes (limits, a database that is down) must not be
    visible. After each restart, while down, and at the end, get and SQL equal the model.
    """
    rng = random.Random(20261121)
    cache = Cache.from_url(private_redis.url, prefix="crash")
    store = CartStore(cache, engine)
    store.sync.create_schema()
    bad_engine = create_engine(broken_url(database_url, tmp_path))
    broken = CartStore(cache, bad_engine)  # same Redis, database down
    owners = [new_owner() for _ in range(3)]
    skus = [f"SKU-{i}" for i in range(6)]
    model: dict[str, Items] = {o: {} for o in owners}
    kills = sorted(rng.sample(range(20, 990), 5))
    acked = refused = unavailable = 0
    down_left = 0

    def check(where: str) -> None:
        for o in owners:
            assert store.sync.get(o) == model[o], where
            assert sql_items(engine, o) == model[o], where

    try:
        for i in range(1000):
            if i in kills:
                private_redis.kill()
                down_left = 3
            owner, sku, roll = rng.choice(owners), rng.choice(skus), rng.random()
            expected = dict(model[owner])
            fails = False
            call: Callable[[], Items]
            if roll < 0.45:
                qty = rng.randint(1, 400)
                fails = expected.get(sku, 0) + qty > 999
                expected[sku] = expected.get(sku, 0) + qty
                call = partial(store.sync.add, owner, sku, qty)
            elif roll < 0.80:
                qty = rng.randint(1, 999)
                expected[sku] = qty
                call = partial(store.sync.set, owner, sku, qty)
            elif roll < 0.97:
                expected.pop(sku, None)
                call = partial(store.sync.remove, owner, sku)
            else:
                expected = {}
                call = partial(store.sync.clear, owner)
            if fails:
                with pytest.raises(InvalidCartInput):
                    call()
                refused += 1
            else:
                assert call() == expected, f"change {i}"
                model[owner] = expected
                acked += 1
            if i % 40 == 0:
                with pytest.raises(CartUnavailable):
                    broken.sync.add(owner, sku, 1)  # never acknowledged: must not show
                unavailable += 1
            if down_left:
                down_left -= 1
                if down_left == 0:
                    check(f"Redis down, after change {i}")
                    private_redis.start()
                    check(f"Redis restarted, after change {i}")
        check("the end")
    finally:
        await cache.close()  # runs the deletes still queued from the outages, at once
        bad_engine.dispose()
    # A fresh cache: every read rebuilds or hits a copy equal to SQL and to the model.
    cache = Cache.from_url(private_redis.url, prefix="crash")
    store = CartStore(cache, engine)
    raw = redis.Redis.from_url(private_redis.url)
    try:
        check("a new cache")
        for o in owners:
            assert redis_cart(raw, cart_key("crash", o)) == sql_state(engine, o)
    finally:
        raw.close()
        await cache.close()
    assert acked + refused == 1000
    assert acked > 900
    assert unavailable == 25
    print(f"\n1000 changes, Redis killed before {kills}: {acked} acknowledged, {refused} refused")
