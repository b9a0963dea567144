"""Who waits: the record that makes a change worth announcing, and where it is announced.

A wake-up costs Redis one message per process that waits for it, and nothing when nobody
waits. The lease and lock scripts (:mod:`cachekit.backends.ops.leases`) keep this protocol:

1. A request refused because someone else holds the lease or lock records, in the same
   script, that a waiter exists: :func:`waiting_key` of the key it waits to hear about,
   in the same hash tag (one Cluster slot), expiring :data:`WAITING_SLACK` after the
   lease it was refused by.
2. A fill, release or invalidation deletes the record and, only if it was there,
   announces the key on the key's own channel, :func:`key_announcement`:
   ``<channel>:{<hash tag>}`` by ``PUBLISH`` (``SPUBLISH`` on Cluster).
3. A process subscribes to the channels of the keys it waits on
   (:mod:`cachekit.drivers.sharded_notify`).

No wake-up is lost. The refusal and the change are atomic scripts on the same slot, so
one runs wholly before the other. Refusal first: the change finds the record and
announces. Change first: the lease is gone, so the waiter's request is not refused: it
takes the lease and reads the value in the same script. A record that expired before the
change (a lease renewed past it) costs only latency: the waiter wakes at its bound, the
holder's old lease expiry plus a few ms, and asks again, which records it anew. An
announcement made before the waiter's subscription is in force reaches nobody, but the
subscription's confirmation wakes the waiter to look again (:mod:`cachekit.drivers.notify`).

Usage::

    waiting_key("shop:{p:5}")                            # 'shop:{p:5}:waiting'
    key_announcement("shop:notify", "shop:{p:5}", False)  # ('PUBLISH', 'shop:notify:{p:5}')
"""

from __future__ import annotations

from typing import Final

from cachekit.backends.ops import Store
from cachekit.backends.shards import shard_channel

__all__ = [
    "WAITING_SLACK",
    "announce_to_waiters",
    "key_announcement",
    "record_waiter",
    "waiting_key",
]

# How long a waiter's record outlives the lease it was refused by: longer than the waiter
# sleeps past that lease (a few ms) before it asks again and so records itself anew.
WAITING_SLACK: Final = 1.0


def waiting_key(key: str) -> str:
    """The record that someone waits to hear about ``key`` (same hash tag, same slot).

    Usage::

        waiting_key("shop:{product:5}")    # 'shop:{product:5}:waiting'
    """
    return key + ":waiting"


def key_announcement(channel: str, key: str, sharded: bool) -> tuple[str, str]:
    """``(command, channel)`` that announce a change to ``key`` to its waiters only.

    Usage::

        key_announcement("shop:notify", "shop:{k}", sharded=True)  # ('SPUBLISH', 'shop:notify:{k}')
    """
    return ("SPUBLISH" if sharded else "PUBLISH"), shard_channel(channel, key)


def record_waiter(store: Store, key: str, remaining: float) -> None:
    """What a refused lease or lock request records in an in-process store; ``remaining``
    is the holder's lease."""
    store.write(waiting_key(key), b"1", remaining + WAITING_SLACK)


def announce_to_waiters(store: Store, channel: str, key: str) -> None:
    """What a fill, release or invalidation announces in an in-process store: only to
    recorded waiters."""
    if store.remove(waiting_key(key)):
        store.publish(shard_channel(channel, key), key)
