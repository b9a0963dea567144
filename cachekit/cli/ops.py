"""The few backend operations only the command line needs: INFO, TYPE, MEMORY USAGE, BITCOUNT.

They are :class:`~cachekit.backends.ops.Op` s like the library's own, so they run through
the same backend, with its timeouts and its translation of redis-py errors into
:class:`~cachekit.exceptions.BackendError`. Each also has its in-memory meaning, as every
op must, although the CLI itself only talks to Redis.

:class:`ScanNames` and :class:`Unlink` are the library's ``ScanKeys`` and ``Delete`` for
key names that are not UTF-8. cachekit never writes such names, but a foreign key under
the prefix may have one, and ``ScanKeys`` would fail on it with ``UnicodeDecodeError``;
here its bytes survive as surrogates (``surrogateescape``) and :func:`wire` turns them
back into the same bytes, so such a key is counted in ``stats`` and purged by ``purge``.

:class:`UnlinkPerSlot` is how :class:`Unlink` runs on Redis Cluster: one ``UNLINK`` per
slot, pipelined (a command on Cluster may not span slots).

Usage::

    info = server.run(Info())
    kind = server.run(KeyType("shop:{product:5}"))      # 'string', 'hash', 'none', ...
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.crc import key_slot

from cachekit.backends.ops import Command, Delete, Op, Store
from cachekit.backends.ops.responses import ScanKeys

__all__ = [
    "BitCount",
    "Info",
    "KeyFacts",
    "KeyType",
    "KeyTypes",
    "MemoryUsage",
    "ScanNames",
    "Unlink",
    "UnlinkPerSlot",
    "wire",
]


def wire(name: str) -> bytes:
    """The bytes of key ``name`` in Redis, for names read by :class:`ScanNames` too.

    Usage::

        wire("shop:{k}")      # b'shop:{k}'
    """
    return name.encode("utf-8", "surrogateescape")


@dataclass(slots=True)
class ScanNames(ScanKeys):
    """``ScanKeys`` that also reads names that are not UTF-8 (see the module docstring).

    Usage::

        cursor, names = server.run(ScanNames(0, "shop:*", 1000))
    """

    def command(self) -> Command:
        return ("SCAN", self.cursor, "MATCH", wire(self.pattern), "COUNT", self.count)

    def parse(self, reply: Any) -> tuple[int, list[str]]:
        cursor, keys = reply
        names = [k.decode("utf-8", "surrogateescape") if isinstance(k, bytes) else k for k in keys]
        return int(cursor), names


@dataclass(slots=True)
class Unlink(Delete):
    """``Delete`` (one ``UNLINK`` of every key, the count removed) for names from SCAN.

    On Redis Cluster it runs as :class:`UnlinkPerSlot`.

    Usage::

        removed = server.run(Unlink(names))
    """

    def command(self) -> Command:
        return ("UNLINK", *map(wire, self.keys))

    def for_cluster(self) -> Op[int]:
        return UnlinkPerSlot(self.keys)


@dataclass(slots=True)
class UnlinkPerSlot(Op[int]):
    """One ``UNLINK`` per Cluster slot of the keys, pipelined; the count removed.

    Cluster refuses a multi-key command across slots, and the cluster face would send
    one ``UNLINK`` per key; grouped by slot, a value and its lease (one hash tag) go in
    one command, and the pipeline is one round trip per node (a ``SCAN`` batch comes
    from one node: one round trip in all).

    Usage::

        removed = cluster_backend.run(UnlinkPerSlot(["shop:{a}", "shop:{a}:lease"]))
    """

    keys: Sequence[str]

    kind = "pipeline"

    def pipeline(self) -> list[Command]:
        slots: dict[int, list[bytes]] = {}
        for key in dict.fromkeys(self.keys):
            name = wire(key)
            slots.setdefault(key_slot(name), []).append(name)
        return [("UNLINK", *names) for names in slots.values()]

    def parse(self, reply: Any) -> int:
        return sum(int(n) for n in reply)

    def apply(self, store: Store) -> int:
        return sum(store.remove(key) for key in dict.fromkeys(self.keys))


@dataclass(slots=True)
class Info(Op[dict[str, Any]]):
    """``INFO``: the server's default sections as a dict (redis-py parses the reply).

    Usage::

        server.run(Info())["used_memory"]
    """

    def command(self) -> Command:
        return ("INFO",)

    def parse(self, reply: Any) -> dict[str, Any]:
        return dict(reply)

    def apply(self, store: Store) -> dict[str, Any]:
        return {}  # an in-process store has no server to describe


@dataclass(slots=True)
class KeyType(Op[str]):
    """``TYPE key``: ``'string'``, ``'hash'``, ... or ``'none'`` when absent.

    Usage::

        server.run(KeyType("shop:{product:5}"))     # 'string'
    """

    key: str

    def command(self) -> Command:
        return ("TYPE", wire(self.key))

    def parse(self, reply: Any) -> str:
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    def apply(self, store: Store) -> str:
        return "none" if store.read(self.key) is None else "string"


@dataclass(slots=True)
class MemoryUsage(Op[list[int]]):
    """``MEMORY USAGE key`` for each key, pipelined: bytes, 0 for a key gone meanwhile.

    Usage::

        sizes = server.run(MemoryUsage(["shop:{a}", "shop:{b}"]))
    """

    keys: Sequence[str]

    kind = "pipeline"

    def pipeline(self) -> list[Command]:
        return [("MEMORY", "USAGE", wire(key)) for key in self.keys]

    def parse(self, reply: Any) -> list[int]:
        return [int(n or 0) for n in reply]

    def apply(self, store: Store) -> list[int]:
        return [len(store.read(key) or b"") for key in self.keys]


@dataclass(slots=True)
class BitCount(Op[int]):
    """``BITCOUNT key`` for each key, pipelined and summed: how many bits are set.

    Usage::

        bits_set = server.run(BitCount(parts))
    """

    keys: Sequence[str]

    kind = "pipeline"

    def pipeline(self) -> list[Command]:
        return [("BITCOUNT", wire(key)) for key in self.keys]

    def parse(self, reply: Any) -> int:
        return sum(int(n) for n in reply)

    def apply(self, store: Store) -> int:
        return sum(bin(byte).count("1") for key in self.keys for byte in store.read(key) or b"")


@dataclass(slots=True)
class KeyTypes(Op[list[str]]):
    """``TYPE key`` for each key, pipelined: ``'string'``, ``'hash'``, ... ``'none'``.

    Usage::

        kinds = server.run(KeyTypes(["shop:{a}", "shop:session:{x}"]))
    """

    keys: Sequence[str]

    kind = "pipeline"

    def pipeline(self) -> list[Command]:
        return [("TYPE", wire(key)) for key in self.keys]

    def parse(self, reply: Any) -> list[str]:
        return [r.decode() if isinstance(r, bytes) else str(r) for r in reply]

    def apply(self, store: Store) -> list[str]:
        return ["none" if store.read(key) is None else "string" for key in self.keys]


# How a key's length is asked, by its type: bytes of a string, fields, elements, entries.
_LENGTH: dict[str, str] = {
    "string": "STRLEN",
    "hash": "HLEN",
    "list": "LLEN",
    "set": "SCARD",
    "zset": "ZCARD",
    "stream": "XLEN",
}


@dataclass(slots=True)
class KeyFacts(Op[list[tuple[int, int]]]):
    """``(MEMORY USAGE, length)`` of each key, pipelined; ``(0, 0)`` for a key gone since.

    ``types`` are the keys' ``TYPE`` s (:class:`KeyTypes`): they choose the length
    command (``STRLEN``, ``HLEN``, ``LLEN``, ``SCARD``, ``ZCARD``, ``XLEN``). ``samples``
    is ``MEMORY USAGE``'s ``SAMPLES``: how many nested elements it measures to estimate
    an aggregate's size (Redis's default is 5; 0 measures them all, slowly).

    Usage::

        facts = server.run(KeyFacts(keys, kinds, samples=5))
    """

    keys: Sequence[str]
    types: Sequence[str]
    samples: int = 5

    kind = "pipeline"

    def pipeline(self) -> list[Command]:
        commands: list[Command] = []
        for key, kind in zip(self.keys, self.types, strict=True):
            name = wire(key)
            commands.append(("MEMORY", "USAGE", name, "SAMPLES", self.samples))
            commands.append((_LENGTH.get(kind, "EXISTS"), name))
        return commands

    def parse(self, reply: Any) -> list[tuple[int, int]]:
        values = [int(n or 0) for n in reply]
        return [(values[i], values[i + 1]) for i in range(0, len(values), 2)]

    def apply(self, store: Store) -> list[tuple[int, int]]:
        sizes = [len(store.read(key) or b"") for key in self.keys]
        return [(n, n) for n in sizes]
