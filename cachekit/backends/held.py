"""Connections a backend keeps for itself: a command goes straight onto an idle one.

redis-py's ``execute_command`` takes a connection from the pool for every command and
gives it back after: the pool's lock, its queue (and, since redis-py 8, its observability
bookkeeping), a probe that the connection holds nothing unread, the retry wrapper. On a
loopback GET that is about a quarter of the call (``python -m loadtests hitpath``: ~60 µs
of ~230 sync, ~65 of ~250 async on the development machine). A backend built by
:func:`cachekit.backends.redis.connect` owns its pool, so it takes each connection from
the pool once and keeps it: a call pops an idle connection (``list.pop``, atomic under
the GIL), sends, reads and pushes it back.

What the pool's checks gave is kept by other means:

* **Nothing unread is left on an idle connection.** Any exception between the send and the
  end of the reply (a timeout, a cancellation, a broken socket) disconnects the
  connection before it goes back; only an error *reply* (``ResponseError``), read whole,
  leaves it connected. A disconnected connection reconnects on its next send.
* **A connection the server closed while idle** (a restart, ``timeout`` in redis.conf) fails
  its send or its read with ``ConnectionError``; the call is sent once more on a fresh
  connection, as redis-py's one retry on a broken connection did (:func:`connect` asks for
  no other retry).
* **After a fork** the child forgets the parent's idle connections (``os.register_at_fork``)
  instead of asking ``os.getpid()`` on every call; the pool resets itself in the child.
* **A reconnect is an answer.** A connection dropped by a timeout reconnects on its next
  send; the server's answer to that handshake is reported to :attr:`heard` (the guard
  points it at its breaker), so a burst of reconnects under congestion is not taken for
  a silent server.
* **The bound on connections.** A connection leaves the pool only when no idle one is
  there, so the backend holds at most as many as ran at once; the guard admits at most the
  pool's size minus the listener's connection.

Replies are parsed by the client's own ``parse_response`` (its response callbacks), so a
reply reads exactly as through ``execute_command``. A pipeline is sent as one write and
read reply by reply, like redis-py's non-transactional pipeline: every reply is read, then
the first error reply is raised.

Usage::

    held = SyncHeldConnections(client)
    held.execute("GET", "shop:{product:5}")
    held.pipeline([("GET", "a"), ("TTL", "a")])
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis
import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

__all__ = ["AsyncHeldConnections", "SyncHeldConnections", "reply_options"]

Command = Sequence[Any]
T = TypeVar("T")

_HOLDERS: weakref.WeakSet[SyncHeldConnections | AsyncHeldConnections] = weakref.WeakSet()


def _forget_after_fork() -> None:
    # The parent's sockets are not the child's to use or to close.
    for holder in list(_HOLDERS):
        holder.idle.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def _nobody() -> None:
    pass


def reply_options(command: Command) -> dict[str, Any]:
    """Options for parsing ``command``'s reply (or queuing it in a pipeline) as sent.

    Usage::

        pipe.execute_command(*command, **reply_options(command))
    """
    # redis-py parses a SET reply to True/False unless told that GET was asked for.
    return {"get": True} if command[0] == "SET" and "GET" in command[3:] else {}


def _first_error(replies: list[Any]) -> list[Any]:
    for reply in replies:
        if isinstance(reply, ResponseError):
            raise reply
    return replies


class SyncHeldConnections:
    """Commands for a ``redis.Redis`` whose pool is this backend's alone.

    Usage::

        held = SyncHeldConnections(redis.Redis.from_url("redis://127.0.0.1:6379/0"))
        held.execute("SET", "k", b"v")
    """

    __slots__ = ("__weakref__", "client", "heard", "idle", "parse", "pool")

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.pool: Any = client.connection_pool
        self.parse: Callable[..., Any] = client.parse_response  # its response callbacks
        self.idle: list[Any] = []
        self.heard: Callable[[], None] = _nobody  # told when a connection (re)connects
        _HOLDERS.add(self)

    def _new(self) -> Any:
        connection = self.pool.get_connection()
        connection.register_connect_callback(self._connected)  # held weakly
        return connection

    def _connected(self, _connection: Any) -> None:
        self.heard()

    def execute(self, *command: Any) -> Any:
        """Send one command and return its parsed reply."""
        return self._exchange(self._command, command)

    def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        """Send ``commands`` in one write; every reply, or the first error reply raised."""
        return _first_error(self._exchange(self._pipeline, commands))

    def _exchange(self, talk: Callable[[Any, Any], T], what: Any) -> T:
        """``talk(connection, what)`` on an idle connection, which is then idle again."""
        try:
            connection = self.idle.pop()
        except IndexError:
            connection = self._new()
        try:
            try:
                reply = talk(connection, what)
            except RedisConnectionError:
                connection.disconnect()  # closed while idle: once more, on a fresh one
                reply = talk(connection, what)
        except ResponseError:
            self.idle.append(connection)  # an answer, read whole
            raise
        except BaseException:
            connection.disconnect()  # a reply may be left unread: never reuse it
            self.idle.append(connection)
            raise
        self.idle.append(connection)
        return reply

    def _command(self, connection: Any, command: Command) -> Any:
        connection.send_command(*command)
        return self.parse(connection, command[0], **reply_options(command))

    def _pipeline(self, connection: Any, commands: Sequence[Command]) -> list[Any]:
        connection.send_packed_command(connection.pack_commands(commands))
        replies: list[Any] = []
        for command in commands:
            try:
                replies.append(self.parse(connection, command[0], **reply_options(command)))
            except ResponseError as exc:
                replies.append(exc)
        return replies

    def release(self) -> None:
        """Give every idle connection back to the pool (before the pool is closed)."""
        idle, self.idle = self.idle, []
        for connection in idle:
            self.pool.release(connection)


class AsyncHeldConnections:
    """Commands for a ``redis.asyncio.Redis`` whose pool is this backend's alone.

    One per event loop, as the client is (:mod:`cachekit.backends.perloop`).

    Usage::

        held = AsyncHeldConnections(redis.asyncio.Redis.from_url("redis://127.0.0.1:6379/0"))
        await held.execute("SET", "k", b"v")
    """

    __slots__ = ("__weakref__", "client", "heard", "idle", "parse", "pool")

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self.pool: Any = client.connection_pool
        self.parse: Callable[..., Awaitable[Any]] = client.parse_response
        self.idle: list[Any] = []
        self.heard: Callable[[], None] = _nobody
        _HOLDERS.add(self)

    async def _new(self) -> Any:
        connection = await self.pool.get_connection()
        connection.register_connect_callback(self._connected)  # held weakly
        return connection

    def _connected(self, _connection: Any) -> None:
        self.heard()

    async def execute(self, *command: Any) -> Any:
        """Send one command and return its parsed reply."""
        return await self._exchange(self._command, command)

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        """Send ``commands`` in one write; every reply, or the first error reply raised."""
        return _first_error(await self._exchange(self._pipeline, commands))

    async def _exchange(self, talk: Callable[[Any, Any], Awaitable[T]], what: Any) -> T:
        """As :meth:`SyncHeldConnections._exchange`."""
        try:
            connection = self.idle.pop()
        except IndexError:
            connection = await self._new()
        try:
            try:
                reply = await talk(connection, what)
            except RedisConnectionError:
                await connection.disconnect(nowait=True)
                reply = await talk(connection, what)
        except ResponseError:
            self.idle.append(connection)
            raise
        except BaseException:
            # A cancellation (the guard's deadline) may land between the send and the
            # reply: the connection is closed without waiting, never reused as it is.
            await connection.disconnect(nowait=True)
            self.idle.append(connection)
            raise
        self.idle.append(connection)
        return reply

    async def _command(self, connection: Any, command: Command) -> Any:
        await connection.send_command(*command)
        return await self.parse(connection, command[0], **reply_options(command))

    async def _pipeline(self, connection: Any, commands: Sequence[Command]) -> list[Any]:
        await connection.send_packed_command(connection.pack_commands(commands))
        replies: list[Any] = []
        for command in commands:
            try:
                replies.append(await self.parse(connection, command[0], **reply_options(command)))
            except ResponseError as exc:
                replies.append(exc)
        return replies

    async def release(self) -> None:
        """Give every idle connection back to the pool (before the pool is closed)."""
        idle, self.idle = self.idle, []
        for connection in idle:
            await self.pool.release(connection)
