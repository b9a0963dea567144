"""Where Redis Cluster puts things: hash tags, and the channels that announce changes.

A Lua script on Cluster may touch only keys of its own slot, and that includes the
channel it ``SPUBLISH``-es to. So a change to a key is announced on a *shard channel*
that carries the key's hash tag: ``<channel>:{<tag>}`` lives in the key's slot, the
script that changed the key can publish there, and a subscriber finds it on the node
that owns the key. Outside Cluster the one channel of the cache is used, by ``PUBLISH``.

Usage::

    shard_channel("shop:notify", "shop:{product:5}")     # 'shop:notify:{product:5}'
    command, channel = announcement("shop:notify", "shop:{product:5}", sharded=True)
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar, Protocol, TypeVar

__all__ = [
    "TOPIC_MARK",
    "announcement",
    "hash_tag",
    "on_shards",
    "shard_channel",
    "topic_message",
]


def hash_tag(key: str) -> str:
    """What Redis Cluster hashes of ``key``: its first non-empty ``{...}``, else all of it.

    Usage::

        hash_tag("shop:{product:5}:lease")    # 'product:5'
    """
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def shard_channel(channel: str, key: str) -> str:
    """The sharded pub/sub channel that announces changes to ``key``: in ``key``'s slot.

    cachekit's keys always have a hash tag; a key without one must not contain ``}``
    (its channel would hash differently).

    Usage::

        shard_channel("shop:notify", "shop:lock:{report}")    # 'shop:notify:{report}'
    """
    return f"{channel}:{{{hash_tag(key)}}}"


def announcement(channel: str, key: str, sharded: bool) -> tuple[str, str]:
    """``(command, channel)`` that announce a change to ``key``.

    ``PUBLISH`` on ``channel``; with ``sharded`` (Redis Cluster) ``SPUBLISH`` on the
    :func:`shard_channel` of ``key``. Scripts take both as arguments.

    Usage::

        announcement("shop:notify", "shop:{k}", sharded=False)   # ('PUBLISH', 'shop:notify')
    """
    return ("SPUBLISH", shard_channel(channel, key)) if sharded else ("PUBLISH", channel)


class Announcing(Protocol):
    """An operation (a dataclass) that announces what it changed, sharded on Cluster."""

    __dataclass_fields__: ClassVar[dict[str, Any]]
    sharded: bool


A = TypeVar("A", bound=Announcing)


def on_shards(op: A) -> A:
    """A copy of ``op`` that announces by ``SPUBLISH``: the ``for_cluster`` of such ops.

    Usage::

        def for_cluster(self) -> Op[bool]:
            return on_shards(self)
    """
    return replace(op, sharded=True)


TOPIC_MARK = "\x00"  # no key starts with NUL: a message that does is for a topic


def topic_message(topic: str, body: str) -> str:
    """A channel message for the handlers of ``topic`` rather than for key waiters.

    A topic is named ``<namespace>:<name>``; on Cluster it is announced in the slot of
    ``KeySpace.namespaced(namespace, name)`` (Bloom filter ``products``: topic
    ``bloom:products``, keys ``<prefix>:bloom:{products}...``).
    """
    return f"{TOPIC_MARK}{topic} {body}"
