"""Held connections (cachekit.backends.held): what the pool's per-command checkout gave.

Against the shared test Redis: replies parse as through ``execute_command``; a call cut
between its send and its reply (a timeout, a cancellation) never leaves that reply for the
next call; a connection the server closed while idle is replaced within the call; an error
reply keeps the connection; a forked child never uses the parent's connections; the
backend holds no more connections than ran at once, and gives them back on close.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cachekit.backends.breaker import Breaker
from cachekit.backends.guard import SyncGuardedBackend
from cachekit.backends.held import AsyncHeldConnections, SyncHeldConnections
from cachekit.backends.ops import Get
from cachekit.backends.redis import connect
from cachekit.stats import Stats


@pytest.fixture
def key(prefix: str) -> str:
    return f"{prefix}:{uuid.uuid4().hex[:8]}"


@pytest.fixture
def sync_held(redis_url: str) -> Iterator[SyncHeldConnections]:
    client = redis.Redis.from_url(redis_url, socket_timeout=0.2)
    yield SyncHeldConnections(client)
    client.close()


@pytest.fixture
async def async_held(redis_url: str) -> AsyncIterator[AsyncHeldConnections]:
    client = redis.asyncio.Redis.from_url(redis_url, socket_timeout=0.2)
    yield AsyncHeldConnections(client)
    await client.aclose()


def test_replies_parse_as_through_execute_command(
    sync_held: SyncHeldConnections, raw_redis: redis.Redis, key: str
) -> None:
    assert sync_held.execute("SET", key, b"one") is True  # the SET callback ran
    assert sync_held.execute("SET", key, b"two", "GET") == b"one"  # SET ... GET: the old value
    assert sync_held.execute("GET", key) == b"two"
    assert sync_held.execute("EXPIRE", key, 60) is True
    assert sync_held.execute("GET", key) == raw_redis.get(key)
    assert len(sync_held.idle) == 1  # one connection, taken from the pool once


def test_a_call_cut_before_its_reply_never_leaves_it_for_the_next(
    sync_held: SyncHeldConnections, raw_redis: redis.Redis, key: str
) -> None:
    raw_redis.set(key, b"value")
    with pytest.raises(RedisTimeoutError):
        sync_held.execute("BLPOP", f"{key}:list", 1)  # outlasts the 0.2 s socket timeout
    raw_redis.lpush(f"{key}:list", b"late")  # would be BLPOP's reply, had it stayed open
    assert sync_held.execute("GET", key) == b"value"
    assert sync_held.execute("GET", key) == b"value"


async def test_a_cancelled_call_never_leaves_its_reply_for_the_next(
    async_held: AsyncHeldConnections, raw_redis: redis.Redis, key: str
) -> None:
    raw_redis.set(key, b"value")
    blocked = asyncio.ensure_future(async_held.execute("BLPOP", f"{key}:list", 0.15))
    await asyncio.sleep(0.05)
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    raw_redis.lpush(f"{key}:list", b"late")
    assert await async_held.execute("GET", key) == b"value"
    assert await async_held.execute("GET", key) == b"value"


def test_a_connection_closed_by_the_server_while_idle_is_replaced_in_the_call(
    sync_held: SyncHeldConnections, raw_redis: redis.Redis, key: str
) -> None:
    raw_redis.set(key, b"value")
    mine = sync_held.execute("CLIENT", "ID")
    raw_redis.client_kill_filter(_id=mine)
    assert sync_held.execute("GET", key) == b"value"
    assert sync_held.execute("CLIENT", "ID") != mine


async def test_async_a_connection_closed_by_the_server_while_idle_is_replaced(
    async_held: AsyncHeldConnections, raw_redis: redis.Redis, key: str
) -> None:
    raw_redis.set(key, b"value")
    mine = await async_held.execute("CLIENT", "ID")
    raw_redis.client_kill_filter(_id=mine)
    assert await async_held.execute("GET", key) == b"value"
    assert await async_held.execute("CLIENT", "ID") != mine


def test_an_error_reply_keeps_the_connection(
    sync_held: SyncHeldConnections, raw_redis: redis.Redis, key: str
) -> None:
    raw_redis.rpush(key, b"x")
    mine = sync_held.execute("CLIENT", "ID")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        sync_held.execute("GET", key)
    assert sync_held.execute("CLIENT", "ID") == mine


def test_a_pipeline_reads_every_reply_then_raises_the_first_error(
    sync_held: SyncHeldConnections, raw_redis: redis.Redis, key: str
) -> None:
    raw_redis.rpush(f"{key}:list", b"x")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        sync_held.pipeline([("SET", key, b"v"), ("GET", f"{key}:list"), ("GET", key)])
    assert raw_redis.get(key) == b"v"  # every command ran
    assert sync_held.pipeline([("GET", key), ("TTL", key)]) == [b"v", -1]


async def test_async_pipeline_and_error_reply(
    async_held: AsyncHeldConnections, raw_redis: redis.Redis, key: str
) -> None:
    raw_redis.rpush(f"{key}:list", b"x")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await async_held.pipeline([("SET", key, b"v"), ("GET", f"{key}:list")])
    assert await async_held.pipeline([("GET", key), ("SET", key, b"w", "GET")]) == [b"v", b"v"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_uses_the_parents_connections(
    sync_held: SyncHeldConnections, raw_redis: redis.Redis, key: str
) -> None:
    raw_redis.set(key, b"value")
    parent_id = sync_held.execute("CLIENT", "ID")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its connection id, or -1 if it saw any trouble
        try:
            forgot = sync_held.idle == []
            ok = sync_held.execute("GET", key) == b"value"
            child_id = sync_held.execute("CLIENT", "ID") if forgot and ok else -1
            os.write(write, str(child_id).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child_id = int(os.read(read, 64) or b"-1")
    os.close(read)
    assert child_id not in (-1, parent_id)
    assert sync_held.execute("CLIENT", "ID") == parent_id  # the parent's is untouched


def test_no_more_connections_than_ran_at_once_and_all_given_back(redis_url: str) -> None:
    sync_backend, _ = connect(redis_url, {"max_connections": 4})
    guarded = SyncGuardedBackend(sync_backend, Breaker(), Stats(), deadline=2.0, slots=4)
    pool = sync_backend.client.connection_pool
    errors: list[BaseException] = []

    def hammer() -> None:
        try:
            for _ in range(200):
                guarded.run(Get("cachekit-held-test:absent"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    made = len(pool._connections)  # type: ignore[attr-defined]
    assert 1 <= made <= 4  # the guard's slots (the pool's spare is the listener's)
    sync_backend.close()
    available = [c for c in pool.pool.queue if c is not None]  # type: ignore[attr-defined]
    assert len(available) == made  # every held connection went back to the pool


def test_a_reconnect_is_reported_as_the_server_answering(
    sync_held: SyncHeldConnections, raw_redis: redis.Redis, key: str
) -> None:
    heard: list[None] = []
    sync_held.heard = lambda: heard.append(None)
    mine = sync_held.execute("CLIENT", "ID")
    assert heard == []  # a connection that stays up reports nothing
    raw_redis.client_kill_filter(_id=mine)
    sync_held.execute("GET", key)
    assert len(heard) == 1  # the reconnect's handshake was answered


async def test_async_a_reconnect_is_reported(
    async_held: AsyncHeldConnections, raw_redis: redis.Redis, key: str
) -> None:
    heard: list[None] = []
    async_held.heard = lambda: heard.append(None)
    mine = await async_held.execute("CLIENT", "ID")
    raw_redis.client_kill_filter(_id=mine)
    await async_held.execute("GET", key)
    assert len(heard) == 1


def test_the_guard_points_a_url_backend_at_its_breaker(redis_url: str) -> None:
    sync_backend, _ = connect(redis_url, {})
    breaker = Breaker()
    SyncGuardedBackend(sync_backend, breaker, Stats(), deadline=2.0, slots=4)
    assert not breaker.answered_within(60.0)
    sync_backend.run(Get("cachekit-held-test:absent"))  # first connect: in the pool's hands
    held = sync_backend._held
    assert held is not None
    held.idle[0].disconnect()
    sync_backend.run(Get("cachekit-held-test:absent"))  # unguarded: only the handshake tells
    assert breaker.answered_within(60.0)
    sync_backend.close()
