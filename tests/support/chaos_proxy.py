"""A TCP proxy that misbehaves on purpose: the chaos tests' unreliable network.

:class:`ChaosProxy` listens on a free loopback port and forwards every connection to a
private server. Its knobs may be turned while traffic flows, from any thread:

* **latency** / **jitter** - seconds added to every chunk of a reply (plus a random
  ``0..jitter``). Chunks go through a delay line, so the link is slow but not narrow:
  pipelined replies are each late by the latency, not by the sum of them, and their order
  is kept.
* **cut_rate** - the chance that a reply chunk is cut: a strict prefix of it is
  forwarded, then both sides are reset. The client sees a reply that stops mid-way.
* **cut_after** - every connection is cut once it has forwarded this many reply bytes.
* :meth:`cut_next` / :meth:`delay_next` - one-shot: cut (or hold back for a while) the
  next reply chunk that starts with given bytes, say ``b"*2"`` for a two-element array,
  to lose exactly the reply of one chosen command.
* :meth:`hold_next_request` - one-shot: hold back the next request chunk that contains
  given bytes (a key name), so the server runs that command late, after whatever the
  client sent meanwhile on its other connections (as a paused server may).
* :meth:`pause` / :meth:`resume` - nothing is forwarded in either direction meanwhile;
  connections stay open, as with a hung server behind a live load balancer.
* :meth:`drop_all` - reset every open connection now.

The proxy runs its own event loop on a daemon thread, so a test's loop (or threads) stay
free to measure, and a busy test cannot slow the proxy's forwarding down. tc netem would
do the same in the kernel, but this box has no ``sch_netem`` (reliability.md, 4.6).

Usage::

    with ChaosProxy(server.port, latency=0.05) as proxy:
        cache = Cache.from_url(proxy.url)
        proxy.cut_rate = 0.1
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import threading
import time
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Self

__all__ = ["ChaosProxy"]

_CHUNK = 65_536


async def _turns(count: int) -> None:
    """Let the loop run ``count`` turns: what each turn schedules runs in the next."""
    for _ in range(count):
        await asyncio.sleep(0)


class _Link:
    """One client connection and its upstream twin."""

    __slots__ = ("client", "sent", "upstream")

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self.sent = 0  # reply bytes forwarded to the client so far

    def reset(self) -> None:
        """Drop both sides at once (RST), as a crashed middlebox would."""
        for writer in (self.client, self.upstream):
            with contextlib.suppress(Exception):
                writer.transport.abort()


class ChaosProxy:
    """A misbehaving TCP proxy in front of ``127.0.0.1:upstream_port``.

    **Parameters:**

    * **upstream_port** - the server's port (on 127.0.0.1).
    * **latency**, **jitter**, **cut_rate**, **cut_after** - the knobs described in the
      module docstring; attributes, changeable at any time.
    * **seed** - for the random jitter and cuts.

    **Attributes:** ``port``, ``url``, ``connections`` (accepted so far), ``cuts``
    (connections cut mid-reply so far).
    """

    def __init__(
        self,
        upstream_port: int,
        *,
        latency: float = 0.0,
        jitter: float = 0.0,
        cut_rate: float = 0.0,
        cut_after: int | None = None,
        seed: int | None = None,
    ) -> None:
        self.upstream_port = upstream_port
        self.latency = latency
        self.jitter = jitter
        self.cut_rate = cut_rate
        self.cut_after = cut_after
        self.port = 0
        self.connections = 0
        self.cuts = 0
        self._rng = random.Random(seed)  # used on the proxy's thread only
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="chaos-proxy")
        self._thread.daemon = True
        self._listener: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # one per accepted connection
        self._links: set[_Link] = set()
        self._closing = False
        self._flowing: asyncio.Event | None = None
        self._next: list[tuple[bytes, float | None]] = []  # (prefix, delay; None: cut)
        self._held: list[tuple[bytes, float]] = []  # (marker, delay) for requests

    @property
    def url(self) -> str:
        """A ``redis://`` URL that goes through the proxy."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Self:
        """Listen on a free loopback port; returns once connections are accepted."""
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        """Close the listener and every connection, then end the proxy's thread."""
        if not self._thread.is_alive():
            return
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def pause(self) -> None:
        """Forward nothing, either way, until :meth:`resume`."""
        self._loop.call_soon_threadsafe(self._event().clear)

    def resume(self) -> None:
        """Forward again what was held back, and what comes next."""
        self._loop.call_soon_threadsafe(self._event().set)

    def cut_next(self, prefix: bytes = b"") -> None:
        """Cut the next reply chunk starting with ``prefix`` mid-way (once)."""
        self._loop.call_soon_threadsafe(self._next.append, (prefix, None))

    def delay_next(self, prefix: bytes, seconds: float) -> None:
        """Hold the next reply chunk starting with ``prefix`` back ``seconds`` more (once).

        The command itself reaches the server at once: its effect happens, only its reply
        comes late (as from a server that stalled right after executing it).
        """
        self._loop.call_soon_threadsafe(self._next.append, (prefix, float(seconds)))

    def hold_next_request(self, marker: bytes, seconds: float) -> None:
        """Hold the next request chunk containing ``marker`` back ``seconds`` (once).

        The client's command reaches the server that much later (even if the client gave up
        and closed the connection meanwhile), so it runs after commands the client sent
        later on other connections: the order a paused server may run them in.
        """
        self._loop.call_soon_threadsafe(self._held.append, (marker, float(seconds)))

    def drop_all(self) -> None:
        """Reset every open connection now."""
        self._call(self._drop_all())

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ proxy thread

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def _event(self) -> asyncio.Event:
        assert self._flowing is not None, "start() the proxy first"
        return self._flowing

    async def _listen(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        # Not asyncio.start_server: a connection it accepted in the turn before the server
        # closes gets its transport after the close, which fails half-made (Python 3.11)
        # and leaves the socket to the collector. Here each accepted socket is handed at
        # once to a task that either serves it or closes it.
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        asyncio.get_running_loop().add_reader(self._listener, self._on_connect)

    def _on_connect(self) -> None:
        assert self._listener is not None
        while True:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            conn.setblocking(False)
            task = self._loop.create_task(self._accept(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _close(self) -> None:
        self._closing = True
        if self._listener is not None:  # no new connections from here on
            self._loop.remove_reader(self._listener)
            self._listener.close()
        # Until no task is left, reset every link (a handler that started before the close
        # may still open one), so each ends and aborts its sockets; a socket left to the
        # collector warns in whatever test runs next.
        me = asyncio.current_task()
        give_up = time.monotonic() + 2
        while others := asyncio.all_tasks() - {me}:
            await self._drop_all()
            if time.monotonic() > give_up:
                for task in others:
                    task.cancel()
                await asyncio.gather(*others, return_exceptions=True)
                break
            await asyncio.wait(others, timeout=0.05)
        await _turns(3)  # the aborted transports' sockets close in callbacks of these turns

    async def _drop_all(self) -> None:
        for link in list(self._links):
            link.reset()

    async def _accept(self, conn: socket.socket) -> None:
        if self._closing:
            conn.close()
            return
        try:
            reader, writer = await asyncio.open_connection(sock=conn)
        except BaseException:
            conn.close()  # the transport, if made, was closed too (its close is idempotent)
            raise
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    "127.0.0.1", self.upstream_port
                )
            except OSError:  # the server is down: refuse, as it would
                writer.transport.abort()
                return
            self.connections += 1
            link = _Link(writer, up_writer)
            self._links.add(link)
            try:
                await self._relay(link, reader, up_reader)
            except asyncio.CancelledError:
                pass  # stop(): end quietly (asyncio logs a handler that ends cancelled)
            finally:
                self._links.discard(link)
                link.reset()
        finally:
            writer.transport.abort()  # also when cancelled while connecting upstream

    async def _relay(
        self, link: _Link, reader: asyncio.StreamReader, up_reader: asyncio.StreamReader
    ) -> None:
        delay_line: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        pumps = [
            asyncio.create_task(self._requests(reader, link.upstream)),
            asyncio.create_task(self._replies_in(up_reader, delay_line)),
            asyncio.create_task(self._replies_out(link, delay_line)),
        ]
        try:
            # Whichever side ends or fails first ends the connection as a whole.
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    async def _requests(self, reader: asyncio.StreamReader, upstream: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(_CHUNK):
            for i, (marker, delay) in enumerate(self._held):
                if marker in chunk:
                    del self._held[i]
                    await asyncio.sleep(delay)
                    break
            await self._event().wait()
            upstream.write(chunk)
            await upstream.drain()

    async def _replies_in(
        self, up_reader: asyncio.StreamReader, line: asyncio.Queue[tuple[float, bytes] | None]
    ) -> None:
        due = 0.0
        while chunk := await up_reader.read(_CHUNK):
            delay = self.latency + (self._rng.uniform(0, self.jitter) if self.jitter else 0.0)
            due = max(due, time.monotonic() + delay)  # late, but never out of order
            line.put_nowait((due, chunk))
        line.put_nowait(None)
        await asyncio.Event().wait()  # the writer ends the connection once the line drains

    async def _replies_out(
        self, link: _Link, line: asyncio.Queue[tuple[float, bytes] | None]
    ) -> None:
        while (item := await line.get()) is not None:
            due, chunk = item
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            await self._event().wait()
            cut = False
            match self._one_shot(chunk):
                case None:
                    pass
                case "cut":
                    cut = True
                case float(delay):
                    await asyncio.sleep(delay)
            keep = self._mid_way(chunk) if cut else self._keep(link, chunk)
            if keep is not None:
                link.client.write(chunk[:keep])
                with contextlib.suppress(Exception):
                    await link.client.drain()
                self.cuts += 1
                link.reset()
                return
            link.client.write(chunk)
            link.sent += len(chunk)
            await link.client.drain()

    def _one_shot(self, chunk: bytes) -> float | str | None:
        """The one-shot order ``chunk`` matches (a delay, or ``"cut"``), used up; or ``None``."""
        for i, (prefix, delay) in enumerate(self._next):
            if chunk.startswith(prefix):
                del self._next[i]
                return "cut" if delay is None else delay
        return None

    def _mid_way(self, chunk: bytes) -> int:
        """A strict, non-empty prefix length when there is one: the reply stops mid-way."""
        return self._rng.randint(1, len(chunk) - 1) if len(chunk) > 1 else 0

    def _keep(self, link: _Link, chunk: bytes) -> int | None:
        """How many bytes of ``chunk`` to forward before cutting; ``None``: all, no cut."""
        if self.cut_after is not None and link.sent + len(chunk) > self.cut_after:
            return max(0, self.cut_after - link.sent)
        if self.cut_rate and self._rng.random() < self.cut_rate:
            return self._mid_way(chunk)
        return None
