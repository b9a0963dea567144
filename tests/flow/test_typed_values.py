"""Typed values: a hit returns exactly what the miss returned, or nothing is stored.

Every supported type round-trips through both faces and both backends; values that would
come back changed are returned uncached with a message; a changed model is a miss.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any, NamedTuple, TypedDict

import attrs
import msgspec
import pydantic
import pytest
import redis
from sqlalchemy import Integer, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from cachekit import Cache, MsgpackSerializer, PickleSerializer, Uncacheable
from cachekit.flow.effects import MISSING


@dataclasses.dataclass(frozen=True)
class Line:
    sku: str
    qty: int


@dataclasses.dataclass
class Order:
    id: uuid.UUID
    lines: list[Line]
    total: Decimal
    placed: dt.datetime
    tags: frozenset[str] = frozenset()


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Point(NamedTuple):
    x: int
    y: float


class Movie(TypedDict):
    title: str
    year: int


class Item(msgspec.Struct, frozen=True):
    name: str
    price: Decimal


class User(pydantic.BaseModel):
    id: int
    email: str
    joined: dt.date
    roles: tuple[str, ...] = ()


@attrs.define
class Box:
    width: int
    height: int


ORDER = Order(
    id=uuid.UUID("12345678-1234-5678-1234-567812345678"),
    lines=[Line("a", 1), Line("b", 2)],
    total=Decimal("19.90"),
    placed=dt.datetime(2026, 12, 7, 10, 30, tzinfo=dt.UTC),
    tags=frozenset({"gift"}),
)

# (annotation, value): every kind the typed-values page's table lists.
CASES: dict[str, tuple[Any, Any]] = {
    "dataclass-nested": (Order, ORDER),
    "namedtuple": (Point, Point(1, 2.5)),
    "typeddict": (Movie, Movie(title="Alien", year=1979)),
    "enum": (Color, Color.BLUE),
    "datetime-aware": (dt.datetime, dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC)),
    "datetime-naive": (dt.datetime, dt.datetime(2026, 1, 2, 3, 4, 5)),
    "date": (dt.date, dt.date(2026, 2, 28)),
    "time": (dt.time, dt.time(23, 59, 1)),
    "timedelta": (dt.timedelta, dt.timedelta(days=2, seconds=7, microseconds=3)),
    "uuid": (uuid.UUID, uuid.UUID(int=7)),
    "decimal": (Decimal, Decimal("0.10")),
    "tuple-fixed": (tuple[int, str, bool], (1, "a", True)),
    "tuple-variadic": (tuple[float, ...], (1.5, 2.5)),
    "set": (set[int], {3, 1, 2}),
    "frozenset": (frozenset[str], frozenset({"x", "y"})),
    "list-of-dataclass": (list[Line], [Line("a", 1)]),
    "dict-of-uuid": (dict[str, uuid.UUID], {"k": uuid.UUID(int=1)}),
    "optional-present": (Line | None, Line("z", 9)),
    "msgspec-struct": (Item, Item("pen", Decimal("1.25"))),
    "pydantic-model": (User, User(id=1, email="a@b.c", joined=dt.date(2020, 1, 1), roles=("x",))),
    "pydantic-list": (list[User], [User(id=2, email="d@e.f", joined=dt.date(2021, 5, 6))]),
    "attrs-class": (Box, Box(3, 4)),
    "json-native-dict": (dict[str, Any], {"a": [1, 2.5, None, True], "b": {"c": "d"}}),
    "int": (int, 42),
}


@pytest.fixture(params=["memory", "redis"])
async def cache(
    request: pytest.FixtureRequest, redis_url: str, prefix: str
) -> AsyncIterator[Cache]:
    """A cache on each backend: memory (fast) and the shared test Redis.

    The Redis one has a patient time budget: these tests count loads, and on a busy
    machine a read past the default 0.25 s deadline fails open (a second load)."""
    if request.param == "memory":
        cache = Cache.from_url("memory://", prefix=prefix, jitter=0)
    else:
        cache = Cache.from_url(redis_url, prefix=prefix, jitter=0, deadline=2.0, socket_timeout=2.0)
    yield cache
    await cache.close()


def _typed_pair(cache: Cache, tp: Any, value: Any, calls: list[str]) -> tuple[Any, Any]:
    """A ``def`` and an ``async def`` on one key, both annotated ``tp``."""

    async def load_async(n: int) -> Any:
        calls.append("async")
        return value

    def load_sync(n: int) -> Any:
        calls.append("sync")
        return value

    load_async.__annotations__["return"] = tp
    load_sync.__annotations__["return"] = tp
    decorate = cache.cached(ttl=60, key="typed:{n}")
    return decorate(load_async), decorate(load_sync)


@pytest.mark.parametrize("case", CASES)
async def test_a_hit_returns_the_value_the_miss_returned(cache: Cache, case: str) -> None:
    tp, value = CASES[case]
    calls: list[str] = []
    load_async, load_sync = _typed_pair(cache, tp, value, calls)

    first = await load_async(1)
    hit_async = await load_async(1)
    hit_sync = load_sync(1)  # the def twin shares the entry the async def wrote

    assert calls == ["async"]
    for got in (first, hit_async, hit_sync):
        assert got == value
        assert type(got) is type(value)
    assert cache.stats()["uncacheable"] == 0
    assert cache.stats()["hits"] == 2


async def test_nested_values_keep_their_types(cache: Cache) -> None:
    @cache.cached(ttl=60, key="order:{n}")
    async def order(n: int) -> Order:
        return ORDER

    await order(1)
    hit = await order(1)
    assert hit == ORDER
    assert type(hit.lines[0]) is Line
    assert type(hit.total) is Decimal
    assert type(hit.tags) is frozenset
    assert hit.placed.utcoffset() == dt.timedelta(0)
    assert hit.id == ORDER.id


async def test_optional_none_is_a_cached_null_under_the_type(cache: Cache) -> None:
    calls: list[int] = []

    @cache.cached(ttl=60, null_ttl=30, key="maybe:{n}")
    async def maybe(n: int) -> Line | None:
        calls.append(n)
        return None if n == 0 else Line("a", n)

    assert await maybe(0) is None
    assert await maybe(0) is None
    assert await maybe(3) == Line("a", 3)
    assert await maybe(3) == Line("a", 3)
    assert calls == [0, 3]
    assert cache.stats()["null_hits"] == 1


def test_postponed_annotation_resolved_at_the_first_call(memory_cache: Cache) -> None:
    """The annotation names a class declared after the function (a forward reference)."""

    @memory_cache.cached(ttl=60, key="later:{n}")
    def later(n: int) -> DeclaredLater:
        return DeclaredLater(n)

    assert later(1) == DeclaredLater(1)
    hit = later(1)
    assert type(hit) is DeclaredLater
    assert memory_cache.stats()["hits"] == 1


@dataclasses.dataclass
class DeclaredLater:
    n: int


def test_a_class_declared_in_the_decorating_function(memory_cache: Cache) -> None:
    @dataclasses.dataclass
    class Local:
        n: int

    @memory_cache.cached(ttl=60, key="local:{n}")
    def local(n: int) -> Local:
        return Local(n)

    local(2)
    assert local(2) == Local(2)
    assert type(local(2)) is Local
    assert memory_cache.stats()["hits"] == 2


class _Opaque:
    pass


UNCACHEABLE: dict[str, tuple[Any, Callable[[], Any], str]] = {
    # name: (annotation or None, value factory, what the message names)
    "dataclass-unannotated": (None, lambda: Line("a", 1), "`-> Line`"),
    "tuple-unannotated": (None, lambda: (1, 2), "`-> tuple`"),
    "datetime-in-a-dict": (None, lambda: {"at": dt.datetime(2026, 1, 1)}, "datetime at ['at']"),
    "decimal-any": (Any, lambda: Decimal("1.5"), "`-> Decimal`"),
    "int-keys": (None, lambda: {1: "a"}, "(a key)"),
    "nan": (None, lambda: [float("nan")], "float at [0]"),
    "intenum-is-not-int": (None, lambda: _Level.HIGH, "`-> _Level`"),
    "opaque-annotated": (_Opaque, _Opaque, "cannot be decoded"),
    "dict-for-dataclass": (Line, lambda: {"sku": "a", "qty": 1}, "would come back as Line"),
    "tuple-in-any-part": (dict[str, Any], lambda: {"pair": (1, 2)}, "would come back as dict"),
    "wrong-type": (Line, lambda: "not a line", "does not encode as Line"),
}


class _Level(enum.IntEnum):
    HIGH = 3


@pytest.mark.parametrize("case", UNCACHEABLE)
def test_a_value_that_would_come_back_changed_is_never_stored(
    memory_cache: Cache, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    tp, make, named = UNCACHEABLE[case]
    calls: list[int] = []

    def load(n: int) -> Any:
        calls.append(n)
        return make()

    if tp is None:
        del load.__annotations__["return"]
    else:
        load.__annotations__["return"] = tp
    cached = memory_cache.cached(ttl=60, key="bad:{n}")(load)

    with caplog.at_level(logging.WARNING, logger="cachekit"):
        first, _ = cached(1), cached(1)
    assert calls == [1, 1]  # loaded each time: nothing was stored
    assert type(first) is type(make())
    assert memory_cache.sync.get("bad:1", MISSING) is MISSING
    assert memory_cache.stats()["uncacheable"] == 2
    warnings = [r.getMessage() for r in caplog.records if "returned uncached" in r.getMessage()]
    assert len(warnings) == 1  # once per function
    assert named in warnings[0]
    assert "load" in warnings[0]


class _Base(DeclarativeBase):
    pass


class Product(_Base):
    __tablename__ = "typed_product"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)


def test_an_orm_instance_gets_a_clear_message(
    memory_cache: Cache, caplog: pytest.LogCaptureFixture
) -> None:
    engine = create_engine("sqlite://")
    _Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(Product(id=1))
        session.commit()

        @memory_cache.cached(ttl=60, key="product:{n}")
        def product(n: int) -> Product | None:
            return session.get(Product, n)

        @memory_cache.cached(ttl=60, key="products")
        def products() -> list[Product]:
            return [session.get(Product, 1)]  # type: ignore[list-item]

        with caplog.at_level(logging.WARNING, logger="cachekit"):
            assert isinstance(product(1), Product)
            assert isinstance(products()[0], Product)
    engine.dispose()
    messages = [r.getMessage() for r in caplog.records if "ORM instance" in r.getMessage()]
    assert len(messages) == 2
    assert all("holds a database session" in m and "ProductOut" in m for m in messages)
    assert memory_cache.stats()["uncacheable"] == 2


async def test_a_changed_model_is_a_miss_then_cached_again(cache: Cache) -> None:
    """A deploy changes the model behind a key: old entries miss, never raise."""

    @dataclasses.dataclass
    class V1:
        sku: str
        qty: int

    @dataclasses.dataclass
    class V2:  # qty renamed and retyped
        sku: str
        quantity: float = 0.0

    @cache.cached(ttl=60, key="model:{n}")
    async def old(n: int) -> V1:
        return V1("a", n)

    loads: list[int] = []

    @cache.cached(ttl=60, key="model:{n}")
    async def new(n: int) -> V2:
        loads.append(n)
        return V2("a", float(n))

    await old(1)
    assert await new(1) == V2("a", 1.0)  # the V1 entry: a counted miss
    assert cache.stats()["schema_misses"] >= 1
    assert await new(1) == V2("a", 1.0)  # and the V2 entry that replaced it: a hit
    assert loads == [1]
    # The old code reading the new entry misses too, and is served all the same.
    assert await old(1) == V1("a", 1)


def test_a_docstring_change_is_not_a_schema_change(memory_cache: Cache) -> None:
    @dataclasses.dataclass
    class A:
        """First wording."""

        n: int

    @dataclasses.dataclass
    class B:
        """Second wording, same shape."""

        n: int

    B.__name__ = B.__qualname__ = "A"

    @memory_cache.cached(ttl=60, key="doc")
    def first() -> A:
        return A(1)

    @memory_cache.cached(ttl=60, key="doc")
    def second() -> B:
        raise AssertionError("must be a hit")

    first()
    assert second() == B(1)


HOSTILE = {
    "mark-and-garbage": b"\xff\x00\x01\x02\x03garbage",
    "wrong-shape-json": b'{"sku": 5}',
    "not-json": b"\x00\x9f{{{",
    "empty": b"",
    "huge-number": b'{"sku": "a", "qty": 1e999999}',
    "deep": b"[" * 5000 + b"]" * 5000,
}


@pytest.mark.parametrize("attack", HOSTILE)
async def test_hostile_bytes_under_a_typed_key_are_a_miss(
    redis_url: str, prefix: str, raw_redis: redis.Redis, attack: str
) -> None:
    """A valid envelope (right key, right format) around a payload an attacker chose."""
    from cachekit.flow.envelope import encode
    from cachekit.serializers import JsonSerializer

    class Raw(JsonSerializer):
        def dumps(self, value: Any) -> bytes:
            return value  # type: ignore[no-any-return]

    cache = Cache.from_url(redis_url, prefix=prefix)
    try:

        @cache.cached(ttl=60, key="line:{n}")
        async def line(n: int) -> Line:
            return Line("real", n)

        key = f"{prefix}:{{line:1}}"
        now = 2e9
        raw_redis.set(key, encode(key, HOSTILE[attack], Raw(), created=now, expires=now + 60))
        assert await line(1) == Line("real", 1)
        stats = cache.stats()
        assert stats["schema_misses"] + stats["invalid_payloads"] >= 1
        assert await line(1) == Line("real", 1)
    finally:
        await cache.close()


async def test_the_raw_api_decodes_into_a_type(cache: Cache) -> None:
    await cache.set("order", ORDER, type=Order)
    assert await cache.get("order", type=Order) == ORDER
    assert cache.sync.get("order", type=Order) == ORDER
    # Read without its type it would be a dict: a miss instead, counted.
    assert await cache.get("order", MISSING) is MISSING
    assert cache.stats()["schema_misses"] == 1

    cache.sync.set_many({"p1": Point(1, 2.0), "p2": Point(3, 4.0)}, type=Point)
    got = await cache.get_many(["p1", "p2", "absent"], type=Point)
    assert got == {"p1": Point(1, 2.0), "p2": Point(3, 4.0)}
    assert all(type(v) is Point for v in got.values())
    assert cache.sync.get_many(["p1"], type=Point) == {"p1": Point(1, 2.0)}


async def test_the_raw_api_refuses_what_it_cannot_give_back(cache: Cache) -> None:
    with pytest.raises(Uncacheable, match=r"pass its type, e.g. type=Line"):
        await cache.set("line", Line("a", 1))
    with pytest.raises(Uncacheable, match="would come back"):
        cache.sync.set("line", {"sku": "a", "qty": 1}, type=Line)
    # JSON-native data needs no type, and a typed reader validates it into the type.
    await cache.set("native", {"sku": "a", "qty": 1})
    assert await cache.get("native", type=Line) == Line("a", 1)
    assert await cache.get("native") == {"sku": "a", "qty": 1}


async def test_a_decorated_function_and_the_raw_api_share_entries(cache: Cache) -> None:
    @cache.cached(ttl=60, key="order:{n}")
    async def order(n: int) -> Order:
        raise AssertionError("must be a hit")

    await cache.set("order:1", ORDER, type=Order)
    assert await order(1) == ORDER

    @cache.cached(ttl=60, key="plain:{n}")
    async def plain(n: int) -> dict[str, int]:
        return {"n": n}

    await plain(1)
    assert await cache.get("plain:1") == {"n": 1}  # native values stay readable by all


@pytest.mark.parametrize("serializer", ["msgpack", "pickle"])
async def test_other_formats_keep_types_too(serializer: str) -> None:
    chosen = MsgpackSerializer() if serializer == "msgpack" else PickleSerializer(keys=[b"k" * 32])
    cache = Cache.from_url("memory://", serializer=chosen)

    @cache.cached(ttl=60, key="o")
    async def order() -> Order:
        return ORDER

    @cache.cached(ttl=60, key="u")
    async def user() -> User:
        return CASES["pydantic-model"][1]  # type: ignore[no-any-return]

    for _ in range(2):
        assert await order() == ORDER
        assert await user() == CASES["pydantic-model"][1]
    assert type(await order()) is Order
    assert cache.stats()["hits"] == 3
    assert cache.stats()["uncacheable"] == 0


def test_values_over_max_value_size_are_returned_uncached(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = Cache.from_url("memory://", max_value_size=1000)
    calls: list[int] = []

    @cache.cached(ttl=60, key="big:{n}")
    def big(n: int) -> str:
        calls.append(n)
        return "x" * n

    @cache.cached(ttl=60, key="roomy:{n}", max_value_size=10_000)
    def roomy(n: int) -> str:
        calls.append(n)
        return "y" * n

    with caplog.at_level(logging.WARNING, logger="cachekit"):
        assert big(2000) == "x" * 2000
        assert big(2000) == "x" * 2000
        assert big(10) == "x" * 10
        assert big(10) == "x" * 10
        assert roomy(2000) == "y" * 2000
        assert roomy(2000) == "y" * 2000
    assert calls == [2000, 2000, 10, 2000]
    assert cache.stats()["oversized_values"] == 2
    assert len([r for r in caplog.records if "max_value_size" in r.getMessage()]) == 1
    with pytest.raises(Uncacheable, match="max_value_size"):
        cache.sync.set("k", "z" * 2000)


def test_the_default_max_value_size_is_one_mebibyte(memory_cache: Cache) -> None:
    @memory_cache.cached(ttl=60, key="s:{n}")
    def sized(n: int) -> str:
        return "v" * n

    sized(1_000_000)
    sized(1_000_000)
    sized(2_000_000)
    sized(2_000_000)
    stats = memory_cache.stats()
    assert stats["hits"] == 1
    assert stats["oversized_values"] == 2


def test_max_value_size_must_be_positive() -> None:
    from cachekit import ConfigurationError

    with pytest.raises(ConfigurationError, match="max_value_size"):
        Cache(max_value_size=0)
