"""``request.session`` as a peer's user expects it (issue 20, items 1, 2 and 5).

Covered: the session is a ``dict`` that every JSON encoder serializes (``json.dumps``,
Starlette's ``JSONResponse``, orjson) without the app loading it first, in sync and async
routes; in-place changes of nested values and every mutating ``dict`` method are saved;
copies and pickles are plain dicts; the scope the app sees writes its changes through to
the server's; keys of nested mappings are coerced like ``json.dumps`` does for Starlette,
and whatever cannot be stored is refused where it is assigned (a ``TypeError``), never at
save; ``session.id`` / ``get_session_id`` answer before a load without adopting a forged
id; ``get_session_metadata`` on the fake clock and on Redis.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
from typing import Any, cast

import orjson
import pytest
import redis
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from cachekit import Cache
from cachekit.exceptions import SessionError
from cachekit.sessions import (
    RedisSessionStore,
    Session,
    SessionMiddleware,
    SessionTypeError,
    get_session_id,
    get_session_metadata,
    load_session,
)
from cachekit.testing import FakeClock
from tests.sessions.support import (
    body,
    client_for,
    forged_id,
    get,
    issued,
    keys_under,
    make_app,
    set_cookies,
)

# ------------------------------------------------------------------------ the app


def encoders_app(store: RedisSessionStore, **options: Any) -> Starlette:
    """Routes that hand ``request.session`` straight to an encoder, never loading it."""

    async def starlette_json(request: Request) -> Response:
        return JSONResponse({"session": request.session})

    def starlette_json_sync(request: Request) -> Response:
        return JSONResponse({"session": request.session})

    async def stdlib(request: Request) -> Response:
        return PlainTextResponse(json.dumps(request.session))

    async def with_orjson(request: Request) -> Response:
        return Response(orjson.dumps(request.session), media_type="application/json")

    async def is_dict(request: Request) -> Response:
        return PlainTextResponse(str(isinstance(request.session, dict)))

    async def mutate(request: Request) -> Response:
        session = request.session
        op = request.query_params["op"]
        if op == "nested":
            session["cart"]["sku-1"] += 1
        elif op == "append":
            session.setdefault("seen", []).append(len(session["seen"]) if "seen" in session else 0)
        elif op == "pop":
            session.pop("a")
        elif op == "popitem":
            session.popitem()
        elif op == "update":
            session.update({"u": 1}, v=2)
        elif op == "ior":
            session |= {"w": 3}
        elif op == "setdefault":
            session.setdefault("d", {"x": 1})
        elif op == "del":
            del session["b"]
        return JSONResponse({"session": session})

    async def put(request: Request) -> Response:
        request.session[request.query_params["key"]] = json.loads(request.query_params["value"])
        return PlainTextResponse("ok")

    routes = [
        Route("/starlette-json", starlette_json),
        Route("/starlette-json-sync", starlette_json_sync),
        Route("/stdlib", stdlib),
        Route("/orjson", with_orjson),
        Route("/is-dict", is_dict),
        Route("/mutate", mutate),
        Route("/put", put),
    ]
    return Starlette(
        routes=routes, middleware=[Middleware(SessionMiddleware, store=store, **options)]
    )


@pytest.fixture(params=["memory", "redis"])
def any_store(
    request: pytest.FixtureRequest, memory_cache: Cache, redis_cache: Cache
) -> RedisSessionStore:
    return RedisSessionStore(memory_cache if request.param == "memory" else redis_cache)


# ------------------------------------------------------------- 1. a dict, encoded


async def test_request_session_is_a_dict_that_every_encoder_serializes(
    any_store: RedisSessionStore,
) -> None:
    """json.dumps, JSONResponse (async and sync routes) and orjson see the stored data."""
    data = {"user": "alice", "cart": {"sku-1": 2}, "tags": ["a", "b"], "n": None}
    record = await any_store.save(None, data)
    assert record is not None
    async with client_for(encoders_app(any_store)) as client:
        assert (await get(client, "/is-dict", record.sid)).text == "True"
        for path in ("/starlette-json", "/starlette-json-sync"):
            assert (await get(client, path, record.sid)).json() == {"session": data}, path
        for path in ("/stdlib", "/orjson"):
            assert (await get(client, path, record.sid)).json() == data, path
        # No cookie, a forged one: an empty dict, and nothing created.
        for sid in (None, forged_id()):
            response = await get(client, "/starlette-json", sid)
            assert response.json() == {"session": {}}
            assert set_cookies(response) == []


async def test_session_is_a_dict_subclass_whose_storage_holds_the_data(
    memory_cache: Cache,
) -> None:
    """After a load the data is in the dict itself: C-level readers agree with the methods."""
    store = RedisSessionStore(memory_cache)
    record = await store.save(None, {"a": 1, "b": [1, 2]})
    assert record is not None
    session = Session(store, record.sid)
    assert isinstance(session, dict)
    assert session.id == record.sid  # the cookie's id, before any load
    assert not session.accessed
    await session.load()
    assert dict.copy(session) == {"a": 1, "b": [1, 2]}
    assert orjson.loads(orjson.dumps(session)) == {"a": 1, "b": [1, 2]}
    assert json.loads(json.dumps(session)) == {"a": 1, "b": [1, 2]}
    assert session == {"a": 1, "b": [1, 2]}
    assert dict(session) == {"a": 1, "b": [1, 2]}
    assert {**session} == {"a": 1, "b": [1, 2]}
    assert list(reversed(session)) == ["b", "a"]
    assert session | {"c": 3} == {"a": 1, "b": [1, 2], "c": 3}
    assert {"z": 0} | session == {"z": 0, "a": 1, "b": [1, 2]}
    for plain in (session.copy(), copy.copy(session), copy.deepcopy(session)):
        assert type(plain) is dict
        assert plain == {"a": 1, "b": [1, 2]}
    restored = pickle.loads(pickle.dumps(session))
    assert type(restored) is dict
    assert restored == {"a": 1, "b": [1, 2]}
    assert repr(session) == f"<Session id={record.sid!r} 2 keys>"


def test_an_unloaded_session_reads_through_its_methods(memory_cache: Cache) -> None:
    """Every reading method loads first (lazily, through the sync face)."""
    store = RedisSessionStore(memory_cache)
    record = store.sync.save(None, {"a": 1})
    assert record is not None
    readers: dict[str, Any] = {
        "len": len,
        "bool": bool,
        "in": lambda s: "a" in s,
        "get": lambda s: s.get("a"),
        "getitem": lambda s: s["a"],
        "keys": lambda s: list(s.keys()),
        "values": lambda s: list(s.values()),
        "items": lambda s: list(s.items()),
        "iter": list,
        "eq": lambda s: s == {"a": 1},
        "ne": lambda s: s != {"a": 1},
        "copy": lambda s: s.copy(),
        "or": lambda s: s | {},
        "json": json.dumps,
    }
    expected = {
        "len": 1, "bool": True, "in": True, "get": 1, "getitem": 1, "keys": ["a"],
        "values": [1], "items": [("a", 1)], "iter": ["a"], "eq": True, "ne": False,
        "copy": {"a": 1}, "or": {"a": 1}, "json": '{"a": 1}',
    }  # fmt: skip
    for name, read in readers.items():
        session = Session(store, record.sid)
        if name == "json":
            session.get("a")  # json.dumps of an unloaded dict reads its empty storage
        assert read(session) == expected[name], name
        assert session.accessed, name
    assert repr(Session(store, record.sid)) == f"<Session id={record.sid!r} unloaded>"


@pytest.mark.parametrize(
    ("op", "before", "after"),
    [
        ("nested", {"cart": {"sku-1": 1}}, {"cart": {"sku-1": 2}}),
        ("append", {"seen": [0]}, {"seen": [0, 1]}),
        ("pop", {"a": 1, "b": 2}, {"b": 2}),
        ("popitem", {"a": 1, "b": 2}, {"a": 1}),
        ("update", {"a": 1}, {"a": 1, "u": 1, "v": 2}),
        ("ior", {"a": 1}, {"a": 1, "w": 3}),
        ("setdefault", {"a": 1}, {"a": 1, "d": {"x": 1}}),
        ("del", {"a": 1, "b": 2}, {"a": 1}),
    ],
)
async def test_every_change_is_saved_including_in_place_nested_ones(
    any_store: RedisSessionStore, op: str, before: dict[str, Any], after: dict[str, Any]
) -> None:
    """Nested in-place changes and every mutating dict method reach the stored record."""
    record = await any_store.save(None, before)
    assert record is not None
    async with client_for(encoders_app(any_store)) as client:
        response = await get(client, "/mutate", record.sid, op=op)
        assert response.json() == {"session": after}
        assert set_cookies(response) == []  # the same id: no cookie
    loaded = await any_store.load(record.sid)
    assert loaded is not None
    assert loaded.data == after


async def test_the_scope_the_app_sees_writes_through_to_the_servers(
    memory_cache: Cache,
) -> None:
    """Changes downstream (the router's route and endpoint) reach the outer middleware's scope."""
    store = RedisSessionStore(memory_cache)
    record = await store.save(None, {"a": 1})
    assert record is not None
    seen: dict[str, Any] = {}

    def outer(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            await app(scope, receive, send)
            if scope["type"] == "http":
                seen.update(endpoint=scope.get("endpoint"), state=scope.get("state"))

        return middleware

    async def endpoint(request: Request) -> Response:
        request.state.marker = "set downstream"
        return JSONResponse(request.session)

    inner = Starlette(
        routes=[Route("/e", endpoint)], middleware=[Middleware(SessionMiddleware, store=store)]
    )
    async with client_for(outer(inner)) as client:
        response = await get(client, "/e", record.sid)
    assert response.json() == {"a": 1}
    assert seen["endpoint"] is endpoint
    assert seen["state"]["marker"] == "set downstream"


# ------------------------------------------------- 2. keys of nested values, JSON only


async def test_nested_non_str_keys_are_coerced_like_starlette(any_store: RedisSessionStore) -> None:
    """{42: 1} is stored as {"42": 1}: what json.dumps (Starlette's encoder) makes of it."""
    value = {42: 1, 1.5: "f", True: "t", None: "n", "s": {7: [1, {8: 9}]}}
    starlette_would_store = json.loads(json.dumps(value))

    async def assign(request: Request) -> Response:
        request.session["cart"] = value
        return PlainTextResponse("ok")

    async with client_for(make_app(any_store, extra=[Route("/assign", assign)])) as client:
        sid = issued(await get(client, "/assign"))
        stored = body(await get(client, "/read", sid))["data"]
    assert stored["cart"] == starlette_would_store
    assert starlette_would_store == {
        "42": 1, "1.5": "f", "true": "t", "null": "n", "s": {"7": [1, {"8": 9}]},
    }  # fmt: skip


@pytest.mark.parametrize(
    "value",
    [{(1, 2): "tuple key"}, {"a": {frozenset(): 1}}, {1, 2}, object(), b"bytes", 2**70],
    ids=["tuple-key", "frozenset-key", "set", "object", "bytes", "huge-int"],
)
def test_what_cannot_be_stored_is_refused_where_it_is_assigned(
    memory_cache: Cache, value: object
) -> None:
    """A TypeError (and a SessionError) at the assignment, by every way of assigning."""
    store = RedisSessionStore(memory_cache)
    record = store.sync.save(None, {"keep": 1})
    assert record is not None
    session = Session(store, record.sid)
    with pytest.raises(SessionTypeError, match="not JSON") as caught:
        session["bad"] = value
    assert isinstance(caught.value, TypeError)
    assert isinstance(caught.value, SessionError)
    assert not session.accessed  # refused before anything was loaded
    with pytest.raises(TypeError):
        session.update({"fine": 1, "bad": value})
    with pytest.raises(TypeError):
        session.update(bad=value)
    with pytest.raises(TypeError):
        session.setdefault("bad", value)
    with pytest.raises(TypeError):
        session |= {"bad": value}
    with pytest.raises(TypeError, match="strings"):
        session.update({cast(str, 1): "non-str top-level key"})
    assert dict.copy(session) == {"keep": 1}  # update checks every pair before setting any


async def test_a_refused_assignment_is_a_clear_error_in_the_route_not_a_500_at_save(
    any_store: RedisSessionStore,
) -> None:
    """The route that assigns {(1, 2): ...} raises at that line; the session stays as it was."""

    async def bad(request: Request) -> Response:
        try:
            request.session["cart"] = {(1, 2): 1}
        except TypeError as exc:
            return PlainTextResponse(str(exc), status_code=400)
        return PlainTextResponse("stored")

    app = make_app(any_store, extra=[Route("/bad", bad)])
    async with client_for(app) as client:
        sid = issued(await get(client, "/set", key="a", value="1"))
        response = await get(client, "/bad", sid)
        assert response.status_code == 400
        assert "not JSON" in response.text
        assert body(await get(client, "/read", sid))["data"] == {"a": 1}


# ---------------------------------------------------------- 5. ids before the load


async def test_session_id_answers_before_a_load_and_never_adopts_an_unknown_id(
    redis_cache: Cache, raw_redis: redis.Redis, prefix: str
) -> None:
    """get_session_id is the cookie's well-formed id before the load; the load decides."""
    store = RedisSessionStore(redis_cache)
    record = await store.save(None, {"a": 1})
    assert record is not None

    async def ids(request: Request) -> Response:
        before = get_session_id(request)
        accessed = cast(Session, request.scope.get("session")).accessed
        await load_session(request)
        after = get_session_id(request)
        if "write" in request.query_params:
            request.session["w"] = 1
        return JSONResponse({"before": before, "after": after, "loaded_early": accessed})

    app = make_app(store, extra=[Route("/ids", ids)])
    forged = forged_id()
    async with client_for(app) as client:
        assert (await get(client, "/ids", record.sid)).json() == {
            "before": record.sid, "after": record.sid, "loaded_early": False,
        }  # fmt: skip
        assert (await get(client, "/ids", forged)).json() == {
            "before": forged, "after": None, "loaded_early": False,
        }  # fmt: skip
        assert (await get(client, "/ids", "not-an-id")).json() == {
            "before": None, "after": None, "loaded_early": False,
        }  # fmt: skip
        written = await get(client, "/ids", forged, write="1")
        new = issued(written)
        assert new != forged  # strict: a write under an unknown id gets a new one
    assert sorted(keys_under(raw_redis, prefix)) == sorted(
        f"{prefix}:session:{{{sid}}}".encode() for sid in (record.sid, new)
    )


# ---------------------------------------------------------------- 5. metadata


async def test_session_metadata_on_the_fake_clock(memory_cache: Cache, clock: FakeClock) -> None:
    """created, last access, idle and absolute expiry, remaining: on the store's clock."""
    store = RedisSessionStore(memory_cache, idle_timeout=100, absolute_timeout=150)

    async def meta(request: Request) -> Response:
        await load_session(request)
        found = get_session_metadata(request)
        return JSONResponse(None if found is None else dataclasses.asdict(found))

    async def meta_sync(request: Request) -> Response:  # no load_session: it loads itself
        found = get_session_metadata(request)
        return JSONResponse(None if found is None else dataclasses.asdict(found))

    app = make_app(store, extra=[Route("/meta", meta), Route("/meta-sync", meta_sync)])
    t0 = clock.time()
    async with client_for(app) as client:
        assert (await get(client, "/meta")).json() is None  # no session
        sid = issued(await get(client, "/set", key="a", value="1"))
        clock.advance(10)
        first = (await get(client, "/meta", sid)).json()
        assert first == {
            "created": t0, "last_access": None, "idle_expiry": t0 + 110,
            "absolute_expiry": t0 + 150, "remaining": 100,
        }  # fmt: skip
        clock.advance(30)
        second = (await get(client, "/meta-sync", sid)).json()
        assert second == {
            "created": t0, "last_access": t0 + 10, "idle_expiry": t0 + 140,
            "absolute_expiry": t0 + 150, "remaining": 100,
        }  # fmt: skip
        clock.advance(60)  # 100 s in: 50 s of the absolute lifetime left
        third = (await get(client, "/meta", sid)).json()
        assert third["remaining"] == 50
        assert third["idle_expiry"] == t0 + 150  # capped by the absolute expiry
        assert (await get(client, "/meta", forged_id())).json() is None


async def test_session_metadata_of_a_rolling_session_has_no_absolute_expiry(
    memory_cache: Cache, clock: FakeClock
) -> None:
    """max_age with rolling: idle = max_age, no absolute limit (metadata says None)."""
    store = RedisSessionStore(memory_cache)

    async def meta(request: Request) -> Response:
        await load_session(request)
        found = get_session_metadata(request)
        assert found is not None
        return JSONResponse(dataclasses.asdict(found))

    app = make_app(store, extra=[Route("/meta", meta)], max_age=600)
    async with client_for(app) as client:
        sid = issued(await get(client, "/set", key="a", value="1"))
        clock.advance(5)
        found = (await get(client, "/meta", sid)).json()
    assert found["absolute_expiry"] is None
    assert found["remaining"] == 600
    assert found["idle_expiry"] == clock.time() + 600


async def test_session_metadata_on_redis_uses_the_servers_clock(
    redis_cache: Cache, raw_redis: redis.Redis
) -> None:
    """On Redis the stamps come from TIME: created <= last access <= now, remaining <= idle."""
    store = RedisSessionStore(redis_cache, idle_timeout=60, absolute_timeout=3600)
    record = await store.save(None, {"a": 1})
    assert record is not None
    first = await store.load(record.sid)
    second = await store.load(record.sid)
    assert first is not None
    assert second is not None
    meta, later = first.metadata, second.metadata
    assert meta is not None
    assert later is not None
    seconds, micros = raw_redis.time()
    now = seconds + micros / 1e6
    assert meta.created is not None
    assert meta.created <= now
    assert meta.last_access is None
    assert later.last_access is not None
    assert meta.created <= later.last_access <= now
    assert 0 < later.remaining <= 60
    assert later.absolute_expiry == pytest.approx(meta.created + 3600, abs=0.002)


async def test_an_async_only_cache_asks_for_load_session_or_autoload(
    redis_url: str, prefix: str
) -> None:
    """Without a sync client, getting an unloaded session says what to do; autoload works."""
    client = redis.asyncio.Redis.from_url(redis_url)
    cache = Cache(client=client, prefix=prefix)
    try:
        store = RedisSessionStore(cache)
        record = await store.save(None, {"a": 1})
        assert record is not None
        async with client_for(encoders_app(store)) as http:
            with pytest.raises(SessionError, match=r"load_session.*autoload"):
                await get(http, "/starlette-json", record.sid)
            assert (await get(http, "/starlette-json")).json() == {"session": {}}  # no cookie
        async with client_for(encoders_app(RedisSessionStore(cache), autoload=True)) as http:
            expected = {"/starlette-json": {"session": {"a": 1}}, "/orjson": {"a": 1}}
            for path, data in expected.items():
                assert (await get(http, path, record.sid)).json() == data, path
    finally:
        await cache.close()
        await client.aclose()


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
_KEYS = st.sampled_from(["a", "b", "c", "cart", ""])
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), _KEYS, _JSON_VALUES),
        st.tuples(st.just("del"), _KEYS, st.none()),
        st.tuples(st.just("pop"), _KEYS, st.none()),
        st.tuples(st.just("setdefault"), _KEYS, _JSON_VALUES),
        st.tuples(st.just("update"), _KEYS, _JSON_VALUES),
        st.tuples(st.just("append"), _KEYS, _JSON_VALUES),
        st.tuples(st.just("clear"), st.just(""), st.none()),
    ),
    max_size=12,
)


def _apply(target: dict[str, Any], op: str, key: str, value: Any) -> None:
    if op == "set":
        target[key] = copy.deepcopy(value)
    elif op == "del" and key in target:
        del target[key]
    elif op == "pop":
        target.pop(key, None)
    elif op == "setdefault":
        target.setdefault(key, copy.deepcopy(value))
    elif op == "update":
        target.update({key: copy.deepcopy(value)})
    elif op == "append":  # an in-place change of a nested value
        current = target.get(key)
        if isinstance(current, list):
            current.append(copy.deepcopy(value))
        elif isinstance(current, dict):
            current["n"] = copy.deepcopy(value)
    elif op == "clear":
        target.clear()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(initial=st.dictionaries(_KEYS, _JSON_VALUES, max_size=4), ops=_OPS)
def test_any_sequence_of_changes_is_saved_as_a_dict_would_hold_it(
    memory_cache: Cache, initial: dict[str, Any], ops: list[tuple[str, str, Any]]
) -> None:
    """A Session changed like a dict (nested in place too) is stored as that dict, JSON-equal."""
    store = RedisSessionStore(memory_cache)
    record = store.sync.save(None, initial) if initial else None
    session = Session(store, None if record is None else record.sid)
    model = copy.deepcopy(initial)
    for op, key, value in ops:
        _apply(session, op, key, value)
        _apply(model, op, key, value)
    assert session == model
    assert orjson.loads(orjson.dumps(session)) == model
    assert json.loads(json.dumps(session)) == model
    saved = store.sync.save(session._record, dict.copy(session))
    if not model:
        assert saved is None
        return
    assert saved is not None
    loaded = store.sync.load(saved.sid)
    assert loaded is not None
    assert loaded.data == model
