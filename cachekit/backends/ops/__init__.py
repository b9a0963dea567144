"""Backend operations, each written once: its Redis command and its in-memory meaning.

An operation is a small value object. A Redis backend sends :attr:`Op.command` (or the
pipeline of :attr:`Op.commands`, or the Lua :attr:`Op.script`) and hands the replies to
:meth:`Op.parse`; the memory backend calls :meth:`Op.apply` under its lock, which makes
every operation atomic there as a Lua script is in Redis. Keeping both meanings side by
side is what keeps the two backends' semantics equal; the contract suite checks it.

On Redis Cluster a backend runs :meth:`Op.for_cluster` instead: scripts that announce a
change then ``SPUBLISH`` it in their own slot (:mod:`.shards`).

Usage::

    raw = sync_backend.run(Get("p:{k}"))
    ok = await async_backend.run(Set("p:{k}", b"...", ttl=60, nx=True))

:mod:`.base` holds the shape of an operation, :mod:`.values` the value operations; the
other families (leases, locks, waiting, tags, bitmaps, records, responses) have modules
of their own. This package re-exports the first two.
"""

from __future__ import annotations

from cachekit.backends.ops.base import Command, Kind, Op, Script, Store, ms
from cachekit.backends.ops.values import (
    CompareAndSet,
    Delete,
    DeleteIfEqual,
    ExpireIfEqual,
    Get,
    GetMany,
    Incr,
    Ping,
    Publish,
    Set,
    SetMany,
    Ttl,
)

__all__ = [
    "Command",
    "CompareAndSet",
    "Delete",
    "DeleteIfEqual",
    "ExpireIfEqual",
    "Get",
    "GetMany",
    "Incr",
    "Kind",
    "Op",
    "Ping",
    "Publish",
    "Script",
    "Set",
    "SetMany",
    "Store",
    "Ttl",
    "ms",
]
