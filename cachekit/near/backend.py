"""A backend wrapper that answers reads of hot keys from a :class:`~cachekit.near.local.LocalCache`.

:class:`SyncNearBackend` and :class:`AsyncNearBackend` implement the backend protocols around
an inner backend. A :class:`~cachekit.backends.ops.Get` of a key the local layer keeps is
answered locally when a fresh copy is there; otherwise it is sent as :class:`ReadWithTtl`
(the value and its PTTL, atomically, in one round trip; on Cluster also the id of the node
that answered) and the answer is installed, unless an invalidation arrived meanwhile or
the node is one whose invalidations this process does not follow (yet). Every other
operation passes through; the keys it may write are dropped locally before it is sent and
again when it is answered (read your writes), and in pub/sub mode they are then announced
to the fleet's other near caches.

The decision logic is written once, as :func:`plan`, a generator that yields the operations
to run on the inner backend; the two classes only drive it, one with ``await``.

Usage::

    local = LocalCache(max_entries=10_000, ttl=5)
    local.start(sync_client, "shop")
    sync_backend = SyncNearBackend(sync_backend, local)
    async_backend = AsyncNearBackend(async_backend, local)
"""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar, cast

from cachekit.backends.base import AsyncBackend, SyncBackend
from cachekit.backends.ops import Command, Get, Op, Publish, Script, Store
from cachekit.exceptions import BackendError, BackendUnavailable
from cachekit.near.local import LocalCache

__all__ = [
    "AsyncNearBackend",
    "ReadWithTtl",
    "SyncNearBackend",
    "local_answer",
    "plan",
    "written_keys",
]

T = TypeVar("T")
Plan = Generator[Op[Any], Any, Any]

# Commands cachekit sends that change nothing (all else is taken to write its key).
_READ_ONLY: Final = frozenset(
    {"GET", "MGET", "PTTL", "TTL", "EXISTS", "SCAN", "PING", "PUBLISH", "SPUBLISH", "STRLEN"}
    | {"GETBIT", "BITCOUNT", "HGET", "HGETALL", "HMGET", "TYPE", "ECHO", "TIME"}
)
_EVERY_ARGUMENT: Final = frozenset({"DEL", "UNLINK"})

_READ_WITH_TTL = Script(
    """
-- KEYS[1] the key. Its value (false: absent) and PTTL in ms (-1: no TTL, -2: absent), read
-- atomically so that a local copy is never given longer to live than the key has.
return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}
"""
)
_READ_WITH_TTL_ON_NODE = Script(
    """
-- KEYS[1] the key. Its value, its PTTL in ms, and the id of the Cluster node that answered:
-- a copy is kept only if that node's invalidations were followed all along.
return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1]), redis.call('CLUSTER', 'MYID')}
"""
)

Read = tuple[bytes | None, float | None, str | None]


@dataclass(slots=True)
class ReadWithTtl(Op[Read]):
    """``GET key``, its remaining TTL in seconds (``math.inf``: none; ``None``: absent), and
    on Cluster the id of the node that answered (``None`` elsewhere).

    Usage::

        value, remaining, node = backend.run(ReadWithTtl("shop:{product:5}"))
    """

    key: str

    kind = "script"
    script = _READ_WITH_TTL

    def script_call(self) -> tuple[Sequence[str], Sequence[Any]]:
        return (self.key,), ()

    def for_cluster(self) -> Op[Read]:
        return _ReadOnNode(self.key)

    def parse(self, reply: Any) -> Read:
        value, pttl, *node = reply
        source = _text(node[0]) if node else None
        ms = int(pttl)
        if ms == -2:
            return value, None, source
        return value, math.inf if ms == -1 else ms / 1000, source

    def apply(self, store: Store) -> Read:
        return store.read(self.key), store.remaining(self.key), None


@dataclass(slots=True)
class _ReadOnNode(ReadWithTtl):
    script = _READ_WITH_TTL_ON_NODE

    def for_cluster(self) -> Op[Read]:
        return self


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def written_keys(op: Op[Any]) -> tuple[str, ...]:
    """The keys ``op`` may write; more than it does is fine, fewer never.

    A script may write any of its KEYS. ``SET ... NX`` (or an operation that is
    :attr:`~cachekit.backends.ops.base.Op.creates_only`) only creates a key, and a local
    layer never keeps an absent key, so it invalidates nothing.

    Usage::

        written_keys(Delete(["shop:{a}", "shop:{b}"]))   # ('shop:{a}', 'shop:{b}')
    """
    if op.creates_only:
        return ()
    kind = op.kind
    if kind == "script":
        return tuple(op.script_call()[0])
    if kind == "command":
        return _command_keys(op.command())
    keys: dict[str, None] = {}
    for command in op.pipeline():
        keys.update(dict.fromkeys(_command_keys(command)))
    return tuple(keys)


def _command_keys(command: Command) -> tuple[str, ...]:
    name = str(command[0]).upper()
    if name in _READ_ONLY or len(command) < 2:
        return ()
    if name in _EVERY_ARGUMENT:
        return tuple(str(key) for key in command[1:])
    if name == "SET" and "NX" in command[3:]:
        return ()
    if name == "BITOP":  # BITOP op destkey srckey...
        return (str(command[2]),)
    return (str(command[1]),)


def local_answer(local: LocalCache, op: Op[Any]) -> bytes | None:
    """The local copy that answers ``op``, or ``None`` to run :func:`plan` (no I/O).

    Usage::

        hit = local_answer(local, Get("shop:{product:5}"))
    """
    if type(op) is Get:
        return local.lookup(op.key)
    return None


def plan(local: LocalCache, op: Op[Any]) -> Plan:
    """What ``op`` needs from the inner backend, given the local layer: yields operations,
    is sent their results (or has their errors thrown in) and returns ``op``'s result.

    Usage::

        flow = plan(local, op)
        request = flow.send(None)            # then: flow.send(inner.run(request)) ...
    """
    if type(op) is Get:
        token = local.begin(op.key)
        if not token:  # not a key kept here, or the channel is down: pass through
            return (yield op)
        try:
            value, remaining, node = yield ReadWithTtl(op.key)
        except BaseException:
            local.abort(op.key, token)
            raise
        if local.follows(node):
            local.install(op.key, token, value, remaining)
        else:  # a Cluster node whose invalidations are not (yet) followed: do not keep
            local.abort(op.key, token)
        return value
    keys = written_keys(op)
    if not keys:
        return (yield op)
    local.invalidate(keys)
    try:
        result = yield op
    except BaseException as exc:
        local.invalidate(keys)  # it may have been applied all the same
        # An error answer (a script that failed halfway) may have written some keys; but
        # an unreachable or slow server gets no second call past the caller's deadline.
        if isinstance(exc, BackendError) and not isinstance(exc, BackendUnavailable):
            yield from _announce(local, keys)
        raise
    # Again: a fill that read the old value while the write was in flight is voided here.
    local.invalidate(keys)
    yield from _announce(local, keys)
    return result


def _announce(local: LocalCache, keys: Sequence[str]) -> Plan:
    """Publish ``keys`` to the fleet's near caches, in pub/sub mode only; never raises."""
    channel = local.publish_channel
    if channel is None:
        return
    try:
        yield Publish(channel, "\n".join(keys))
    except BackendError as exc:
        local.publish_failed(exc)


class SyncNearBackend:
    """A :class:`~cachekit.backends.base.SyncBackend` with a local layer in front.

    **Parameters:**

    * **inner** - the backend that reaches Redis (guarded, if the cache has a breaker).
    * **local** - the :class:`~cachekit.near.local.LocalCache`, shared with the async face.

    Usage::

        backend = SyncNearBackend(SyncRedisBackend(redis.Redis()), local)
        backend.run(Get("shop:{product:5}"))
    """

    __slots__ = ("inner", "local")

    def __init__(self, inner: SyncBackend, local: LocalCache) -> None:
        self.inner = inner
        self.local = local

    def run(self, op: Op[T]) -> T:
        """Answer ``op`` locally if possible, else through the inner backend."""
        hit = local_answer(self.local, op)
        if hit is not None:
            return cast(T, hit)
        flow = plan(self.local, op)
        reply: Any = None
        error: BaseException | None = None
        while True:
            try:
                request = flow.send(reply) if error is None else flow.throw(error)
            except StopIteration as done:
                return cast(T, done.value)
            try:
                reply, error = self.inner.run(request), None
            except BaseException as exc:
                reply, error = None, exc

    def close(self) -> None:
        """Close the inner backend (the local layer is closed with its cache)."""
        self.inner.close()


class AsyncNearBackend:
    """An :class:`~cachekit.backends.base.AsyncBackend` with a local layer in front.

    A local hit never yields to the loop; the layer's lock is held for microseconds.

    Usage::

        backend = AsyncNearBackend(AsyncRedisBackend(redis.asyncio.Redis()), local)
        await backend.run(Get("shop:{product:5}"))
    """

    __slots__ = ("inner", "local")

    def __init__(self, inner: AsyncBackend, local: LocalCache) -> None:
        self.inner = inner
        self.local = local

    async def run(self, op: Op[T]) -> T:
        """Answer ``op`` locally if possible, else through the inner backend."""
        hit = local_answer(self.local, op)
        if hit is not None:
            return cast(T, hit)
        flow = plan(self.local, op)
        reply: Any = None
        error: BaseException | None = None
        while True:
            try:
                request = flow.send(reply) if error is None else flow.throw(error)
            except StopIteration as done:
                return cast(T, done.value)
            try:
                reply, error = await self.inner.run(request), None
            except BaseException as exc:
                reply, error = None, exc

    async def close(self) -> None:
        """Close the inner backend (the local layer is closed with its cache)."""
        await self.inner.close()
