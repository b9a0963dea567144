"""Subscriptions that follow the waiters: a channel per awaited key, on every deployment.

A change to a key is announced only to processes that wait on it: on the key's own
channel, ``<prefix>:notify:{<hash tag>}``
(:func:`~cachekit.backends.shards.shard_channel`), and only when a waiter was recorded
(:mod:`cachekit.backends.ops.waiting`). So a process subscribes to the channels of the
keys it waits on, no more: :class:`~cachekit.drivers.notify.Waiters` reports when a key
gains its first waiter or loses its last, and the listener subscribes or unsubscribes.
Topics (a Bloom filter's adds, which every process holding the filter needs) keep one
channel each: the cache's channel on a single server, the shard channel of the topic's
home key on Cluster. Three listeners:

* :class:`ServerListener` - a single server or a Sentinel-managed primary: ``SUBSCRIBE``
  on one connection, on a daemon thread, with the sync client;
* :class:`ShardedListener` - Redis Cluster: ``SSUBSCRIBE`` on one connection per node
  (each node delivers its shard channels only to its own subscribers), on a daemon thread;
* :class:`~cachekit.drivers.task_notify.TaskListener` - a cache given only an async client: one
  connection, as a task.

A waiter registers before it looks at the state it waits on; its channel may be
subscribed a moment after it looked. So each confirmed subscription wakes the waiters of
its channel to look again: an event between the look and the subscription is never lost,
only seen on the re-look. A lost connection loses its subscriptions; they are made again
after a backoff, and their waiters woken. An unused channel stays subscribed a few
seconds, so a hot key's waiters coming and going do not subscribe and unsubscribe each
time.

Usage::

    listener = ServerListener(lambda: client, "shop:notify", waiters, log)
    listener.ensure_started()
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Final

from cachekit.backends.shards import shard_channel
from cachekit.drivers.notify import Waiters
from cachekit.flow.keys import KeySpace
from cachekit.stats import LogOnce

__all__ = [
    "BACKOFF_MAX",
    "BACKOFF_MIN",
    "IDLE",
    "ServerListener",
    "ShardedListener",
    "Subscriptions",
]

# Seconds a listener gives a read before it looks for new channels: short while someone
# waits on a key (a subscription is late by at most this), longer while only topics are
# followed (Bloom filters' adds), and it sleeps until told while nothing is subscribed.
_TICK: Final = 0.005
_TOPICS_TICK: Final = 0.05
IDLE: Final = 0.5
_LINGER: Final = 5.0  # seconds an unused channel stays subscribed
BACKOFF_MIN: Final = 0.05
BACKOFF_MAX: Final = 1.0

Wanted = dict[str, tuple[list[str], list[str]]]  # channel: (keys, topics)


class Subscriptions:
    """What every listener keeps: the channels wanted, subscribed, confirmed and unused.

    Usage::

        book = Subscriptions("shop:notify", waiters, lambda topic: "shop:notify")
        subscribe, drop = book.plan(book.wanted())
    """

    def __init__(self, channel: str, waiters: Waiters, topic_channel: Callable[[str], str]):
        self.channel = channel
        self.waiters = waiters
        self.topic_channel = topic_channel
        self.where: dict[str, str] = {}  # channel: the connection it is subscribed on
        self.confirmed: set[str] = set()
        self.unused_since: dict[str, float] = {}
        self.waited = False  # whether anyone waits on a key (read often)

    def wanted(self) -> Wanted:
        """``{channel: (keys, topics)}`` for every key waited on and topic followed."""
        keys, topics = self.waiters.watched()
        self.waited = bool(keys)
        wanted: Wanted = {}
        for key in keys:
            wanted.setdefault(shard_channel(self.channel, key), ([], []))[0].append(key)
        for topic in topics:
            wanted.setdefault(self.topic_channel(topic), ([], []))[1].append(topic)
        return wanted

    def plan(self, wanted: Wanted) -> tuple[list[str], list[str]]:
        """The channels to subscribe now, and those unused for long enough to drop."""
        now = time.monotonic()
        drop = []
        for channel in list(self.where):
            if channel in wanted:
                self.unused_since.pop(channel, None)
            elif now - self.unused_since.setdefault(channel, now) >= _LINGER:
                drop.append(channel)
        return [c for c in wanted if c not in self.where], drop

    def dropped(self, channel: str) -> None:
        self.where.pop(channel, None)
        self.confirmed.discard(channel)
        self.unused_since.pop(channel, None)

    def pending(self, wanted: Wanted) -> bool:
        """Whether work is left: a channel to subscribe, or one lingering unused."""
        return bool(self.unused_since) or any(c not in self.where for c in wanted)

    def tick(self, pending: bool) -> float | None:
        """How long to read before looking again (``None``: nothing to read)."""
        if self.waited or pending:
            return _TICK
        return _TOPICS_TICK if self.where else None

    def confirm(self, channel: str) -> bool:
        """A subscription came into force: wake its waiters to look again."""
        if channel not in self.where:
            return False
        self.confirmed.add(channel)
        keys, topics = self.wanted().get(channel, ([], []))
        self.waiters.notify_lost(keys, topics)  # they looked before this: look again
        return True


class _ThreadListener(ABC):
    """A :class:`~cachekit.drivers.notify.Listener` on a daemon thread; subclasses say how to
    reach the server(s) and which commands subscribe."""

    MESSAGE: ClassVar[str]
    SUBSCRIBED: ClassVar[str]
    UNSUBSCRIBED: ClassVar[str]

    def __init__(
        self,
        client: Callable[[], Any],
        channel: str,
        waiters: Waiters,
        log: LogOnce,
        topic_channel: Callable[[str], str],
    ) -> None:
        self.channel = channel
        self.waiters = waiters
        self.log = log
        self.ready = threading.Event()
        self.stopped = False
        self._client = client
        self._book = Subscriptions(channel, waiters, topic_channel)
        self._changed = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._subs: dict[str, Any] = {}  # the listener thread's own: per connection a PubSub
        self._retry_at = 0.0
        self._backoff = BACKOFF_MIN
        waiters.on_change(self._changed.set)

    # How subclasses reach the server(s).
    @abstractmethod
    def _connection(self, client: Any, channel: str) -> tuple[str, Callable[[], Any]]:
        """The connection that carries ``channel``: its name, and how to open a PubSub on it."""

    @abstractmethod
    def _subscribe_on(self, sub: Any, channel: str) -> None:
        """Subscribe ``sub`` to ``channel`` (SUBSCRIBE, or SSUBSCRIBE on Cluster)."""

    @abstractmethod
    def _unsubscribe_on(self, sub: Any, channel: str) -> None:
        """Unsubscribe ``sub`` from ``channel``."""

    def _recover(self, client: Any) -> None:  # noqa: B027 - optional hook: one server has nothing to learn
        """After a failure: learn where things are now (Cluster's slot map)."""

    def ensure_started(self) -> bool:
        with self._start_lock:
            if self._thread is not None:
                return False
            self._thread = threading.Thread(target=self._run, name="cachekit-notify", daemon=True)
            self._thread.start()
            return True

    def stop(self) -> None:
        self.stopped = True
        self._changed.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(IDLE * 2)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.stop)

    def _run(self) -> None:
        try:
            while not self.stopped:
                if not self._book.wanted():
                    self.ready.set()  # nothing to subscribe to: nothing to wait for
                try:
                    client = self._client()
                except Exception as exc:  # unreachable for now: try again later
                    self._lost(exc)
                    self._changed.wait(self._backoff)
                    self._backoff = min(self._backoff * 2, BACKOFF_MAX)
                    continue
                self._serve(client)
        finally:
            for name in list(self._subs):
                self._close(name)

    def _serve(self, client: Any) -> None:
        pending = True
        while not self.stopped:
            if pending or self._changed.is_set():
                self._changed.clear()
                pending = self._reconcile(client)
            tick = self._book.tick(pending)
            if len(self._subs) == 1 and tick is not None:
                # One connection: block on it, so a message is handed over at once.
                self._read(client, tick)
            elif not self._poll(client):
                self._changed.wait(IDLE if tick is None else tick)

    def _reconcile(self, client: Any) -> bool:
        """Subscribe what is wanted, drop what has been unused a while; whether work is left."""
        wanted = self._book.wanted()
        subscribe, drop = self._book.plan(wanted)
        for channel in drop:
            self._unsubscribe(channel)
        if time.monotonic() >= self._retry_at:
            for channel in subscribe:
                self._subscribe(client, channel)
        if all(channel in self._book.confirmed for channel in wanted):
            self.ready.set()
        return self._book.pending(wanted)

    def _subscribe(self, client: Any, channel: str) -> None:
        name = None
        try:
            name, connect = self._connection(client, channel)
            sub = self._subs.get(name)
            if sub is None:
                sub = self._subs[name] = connect()
            self._subscribe_on(sub, channel)
            self._book.where[channel] = name
        except Exception as exc:
            self._failed(client, name, exc)

    def _unsubscribe(self, channel: str) -> None:
        name = self._book.where[channel]
        self._book.dropped(channel)
        with contextlib.suppress(Exception):  # a dead connection is noticed by the reads
            self._unsubscribe_on(self._subs[name], channel)

    def _read(self, client: Any, timeout: float) -> None:
        name, sub = next(iter(self._subs.items()))
        try:
            message = sub.get_message(timeout=timeout)
            while message is not None:
                self._handle(message)
                message = sub.get_message(timeout=0.0)
        except Exception as exc:
            self._failed(client, name, exc)

    def _poll(self, client: Any) -> bool:
        """Hand over every message that arrived; whether there was any."""
        busy = False
        for name, sub in list(self._subs.items()):
            try:
                while (message := sub.get_message(timeout=0.0)) is not None:
                    busy = True
                    self._handle(message)
            except Exception as exc:
                self._failed(client, name, exc)
        return busy

    def _handle(self, message: dict[str, Any]) -> None:
        kind, channel, data = message["type"], message["channel"], message["data"]
        channel = channel.decode() if isinstance(channel, bytes) else channel
        if kind == self.MESSAGE:
            self.waiters.notify(data.decode() if isinstance(data, bytes) else data)
        elif kind == self.SUBSCRIBED and self._book.confirm(channel):
            self._backoff = BACKOFF_MIN
            self._changed.set()  # re-check readiness
        elif (
            kind == self.UNSUBSCRIBED
            and channel in self._book.where
            and channel in self._book.confirmed
        ):
            # Not ours (ours leave `where` first): the slot moved. Subscribe again, where
            # it lives now.
            self._book.dropped(channel)
            self._changed.set()

    def _failed(self, client: Any, name: str | None, exc: BaseException) -> None:
        """A connection failed: drop its subscriptions and make them again later."""
        if name is not None:
            self._close(name)
            for channel in [c for c, where in self._book.where.items() if where == name]:
                self._book.dropped(channel)
        self._lost(exc)
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)
        with contextlib.suppress(Exception):
            self._recover(client)

    def _close(self, name: str) -> None:
        sub = self._subs.pop(name, None)
        if sub is not None:
            with contextlib.suppress(Exception):
                sub.close()

    def _lost(self, exc: BaseException) -> None:
        self.ready.clear()
        self.log.warning(("subscription", type(exc)), "cachekit: notifications lost (%s)", exc)


class ServerListener(_ThreadListener):
    """The listener for a single server (or a Sentinel-managed primary): one connection.

    ``client`` returns the sync ``redis.Redis``; topics share the cache's ``channel``.

    Usage::

        listener = ServerListener(lambda: client, "shop:notify", waiters, log)
        if listener.ensure_started():
            listener.ready.wait(READY_WAIT)
    """

    MESSAGE = "message"
    SUBSCRIBED = "subscribe"
    UNSUBSCRIBED = "unsubscribe"

    def __init__(
        self, client: Callable[[], Any], channel: str, waiters: Waiters, log: LogOnce
    ) -> None:
        super().__init__(client, channel, waiters, log, lambda topic: channel)

    def _connection(self, client: Any, channel: str) -> tuple[str, Callable[[], Any]]:
        return "server", client.pubsub

    def _subscribe_on(self, sub: Any, channel: str) -> None:
        sub.subscribe(channel)

    def _unsubscribe_on(self, sub: Any, channel: str) -> None:
        sub.unsubscribe(channel)


class ShardedListener(_ThreadListener):
    """The listener for Redis Cluster: one ``SSUBSCRIBE`` connection per node.

    ``client`` returns the sync ``RedisCluster`` (it may raise while the cluster cannot
    be reached: the thread tries again later); ``keyspace`` locates topics' slots.

    Usage::

        listener = ShardedListener(lambda: cluster, "shop:notify", waiters, log, keyspace)
        if listener.ensure_started():
            listener.ready.wait(READY_WAIT)
    """

    MESSAGE = "smessage"
    SUBSCRIBED = "ssubscribe"
    UNSUBSCRIBED = "sunsubscribe"

    def __init__(
        self,
        client: Callable[[], Any],
        channel: str,
        waiters: Waiters,
        log: LogOnce,
        keyspace: KeySpace,
    ) -> None:
        def topic_channel(topic: str) -> str:
            namespace, _, name = topic.partition(":")
            return shard_channel(channel, keyspace.namespaced(namespace, name))

        super().__init__(client, channel, waiters, log, topic_channel)

    def _connection(self, client: Any, channel: str) -> tuple[str, Callable[[], Any]]:
        node = client.get_node_from_key(channel)
        return node.name, lambda: client.get_redis_connection(node).pubsub()

    def _subscribe_on(self, sub: Any, channel: str) -> None:
        sub.ssubscribe(channel)

    def _unsubscribe_on(self, sub: Any, channel: str) -> None:
        sub.sunsubscribe(channel)

    def _recover(self, client: Any) -> None:
        client.nodes_manager.initialize()  # learn who serves the slots now
