"""Notifications on Redis Cluster: sharded subscriptions to just the channels in use.

On Cluster a script may publish only in its own slot, so a change to a key is announced
by ``SPUBLISH`` on the key's shard channel, ``<prefix>:notify:{<hash tag>}``
(:mod:`cachekit.backends.shards`). Each node delivers its shard channels' messages only
to subscribers connected to it, and there is a channel per hash tag, so a process cannot
subscribe to them all in advance. It subscribes to those someone waits on instead:
:class:`~cachekit.drivers.notify.Waiters` reports when a key gains its first waiter or loses its
last, and one thread per process keeps one ``SSUBSCRIBE`` connection per node for the
channels of those keys (and of the followed topics, such as Bloom filters' adds).

A waiter registers before it looks at the state it waits on; its channel may be
subscribed a moment after it looked. So each confirmed subscription wakes the waiters of
its channel to look again: an event between the look and the subscription is never lost,
only seen on the re-look. A node that fails loses its subscriptions; they are made again
(on whichever node serves the slot by then) after a backoff, and their waiters woken.
An unused channel stays subscribed a few seconds, so a hot key's waiters coming and
going do not subscribe and unsubscribe each time.

Usage::

    listener = ShardedListener(backend.connect, "shop:notify", waiters, log, KeySpace("shop"))
    listener.ensure_started()
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from cachekit.backends.shards import shard_channel
from cachekit.drivers.notify import Waiters
from cachekit.flow.keys import KeySpace
from cachekit.stats import LogOnce

__all__ = ["ShardedListener"]

# Seconds between polls of the node connections: often while someone waits on a key (a
# wake-up is late by at most this), less while only topics are followed (Bloom filters'
# adds), and only to check for work while nothing is subscribed.
_TICK: Final = 0.005
_TOPICS_TICK: Final = 0.05
_IDLE: Final = 0.5
_LINGER: Final = 5.0  # seconds an unused channel stays subscribed
_BACKOFF_MIN: Final = 0.05
_BACKOFF_MAX: Final = 1.0


class ShardedListener:
    """The :class:`~cachekit.drivers.notify.Listener` for Redis Cluster, on a daemon thread.

    ``client`` returns the sync ``RedisCluster`` (it may raise while the cluster cannot
    be reached: the thread tries again later); ``channel`` is the cache's channel, whose
    shard channels it subscribes to; ``keyspace`` locates topics' slots.

    Usage::

        listener = ShardedListener(lambda: cluster, "shop:notify", waiters, log, keyspace)
        if listener.ensure_started():
            listener.ready.wait(READY_WAIT)
    """

    def __init__(
        self,
        client: Callable[[], Any],
        channel: str,
        waiters: Waiters,
        log: LogOnce,
        keyspace: KeySpace,
    ) -> None:
        self.channel = channel
        self.waiters = waiters
        self.log = log
        self.ready = threading.Event()
        self.stopped = False
        self._client = client
        self._keyspace = keyspace
        self._changed = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        # The listener thread's own state: per node a PubSub, per channel its node.
        self._subs: dict[str, Any] = {}
        self._where: dict[str, str] = {}
        self._confirmed: set[str] = set()
        self._unused_since: dict[str, float] = {}
        self._retry_at = 0.0
        self._backoff = _BACKOFF_MIN
        self._waited = False  # whether anyone waits on a key (poll often)
        waiters.on_change(self._changed.set)

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
            self._thread.join(_IDLE * 2)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.stop)

    def _run(self) -> None:
        try:
            while not self.stopped:
                if not self._wanted():
                    self.ready.set()  # nothing to subscribe to: nothing to wait for
                try:
                    client = self._client()
                except Exception as exc:  # unreachable for now: try again later
                    self._lost(exc)
                    self._changed.wait(self._backoff)
                    self._backoff = min(self._backoff * 2, _BACKOFF_MAX)
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
            if not self._poll(client):
                idle = _TOPICS_TICK if self._subs else _IDLE
                self._changed.wait(_TICK if self._waited or pending else idle)

    def _wanted(self) -> dict[str, tuple[list[str], list[str]]]:
        """``{channel: (keys, topics)}`` for every key waited on and topic followed."""
        keys, topics = self.waiters.watched()
        self._waited = bool(keys)
        wanted: dict[str, tuple[list[str], list[str]]] = {}
        for key in keys:
            wanted.setdefault(shard_channel(self.channel, key), ([], []))[0].append(key)
        for topic in topics:
            namespace, _, name = topic.partition(":")
            home = self._keyspace.namespaced(namespace, name)
            wanted.setdefault(shard_channel(self.channel, home), ([], []))[1].append(topic)
        return wanted

    def _reconcile(self, client: Any) -> bool:
        """Subscribe what is wanted, drop what has been unused a while; whether work is left."""
        now = time.monotonic()
        wanted = self._wanted()
        for channel in list(self._where):
            if channel in wanted:
                self._unused_since.pop(channel, None)
            elif now - self._unused_since.setdefault(channel, now) >= _LINGER:
                self._unsubscribe(channel)
        if now >= self._retry_at:
            for channel in wanted:
                if channel not in self._where:
                    self._subscribe(client, channel)
        if all(channel in self._confirmed for channel in wanted):
            self.ready.set()
        return bool(self._unused_since) or any(c not in self._where for c in wanted)

    def _subscribe(self, client: Any, channel: str) -> None:
        name = None
        try:
            node = client.get_node_from_key(channel)
            name = node.name
            sub = self._subs.get(name)
            if sub is None:
                sub = self._subs[name] = client.get_redis_connection(node).pubsub()
            sub.ssubscribe(channel)
            self._where[channel] = name
        except Exception as exc:
            self._failed(client, name, exc)

    def _unsubscribe(self, channel: str) -> None:
        name = self._where.pop(channel)
        self._confirmed.discard(channel)
        self._unused_since.pop(channel, None)
        with contextlib.suppress(Exception):  # a dead node's failure is noticed by _poll
            self._subs[name].sunsubscribe(channel)

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
        if kind == "smessage":
            self.waiters.notify(data.decode() if isinstance(data, bytes) else data)
        elif kind == "ssubscribe" and channel in self._where:
            self._confirmed.add(channel)
            self._backoff = _BACKOFF_MIN
            keys, topics = self._wanted().get(channel, ((), ()))
            self.waiters.notify_lost(keys, topics)  # they looked before this: look again
            self._changed.set()  # re-check readiness
        elif kind == "sunsubscribe" and channel in self._where and channel in self._confirmed:
            # Not ours (ours leave _where first): the slot moved. Subscribe again, where
            # it lives now.
            del self._where[channel]
            self._confirmed.discard(channel)
            self._changed.set()

    def _failed(self, client: Any, name: str | None, exc: BaseException) -> None:
        """A node (or the slot map) failed: drop its subscriptions and retry them later."""
        if name is not None:
            self._close(name)
            for channel in [c for c, where in self._where.items() if where == name]:
                del self._where[channel]
                self._confirmed.discard(channel)
        self._lost(exc)
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, _BACKOFF_MAX)
        with contextlib.suppress(Exception):  # learn who serves the slots now
            client.nodes_manager.initialize()

    def _close(self, name: str) -> None:
        sub = self._subs.pop(name, None)
        if sub is not None:
            with contextlib.suppress(Exception):
                sub.close()

    def _lost(self, exc: BaseException) -> None:
        self.ready.clear()
        self.log.warning(("subscription", type(exc)), "cachekit: notifications lost (%s)", exc)
