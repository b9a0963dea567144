"""Bitmap operations for Bloom filters: set many bits in one round trip.

Redis numbers the bits of a string from the most significant bit of its first byte, the
order ``bitarray(endian="big")`` uses too, so a bitmap read with one GET loads straight
into a local mirror. The memory backend keeps bitmaps as byte strings in the same order.

Usage::

    count = backend.run(SetBits([("p:bloom:{ids}:g1:0", 17)], "p:bloom:{ids}:g1:count", 1))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cachekit.backends.ops import Command, Op, Store

__all__ = ["SetBits"]


@dataclass(slots=True)
class SetBits(Op[int]):
    """``SETBIT`` every ``(key, offset)``, ``INCRBY count_key added``, maybe ``PUBLISH``.

    One pipelined round trip; returns the new count.
    """

    bits: Sequence[tuple[str, int]]
    count_key: str
    added: int
    channel: str | None = None
    message: str | None = None

    kind = "pipeline"

    def pipeline(self) -> list[Command]:
        commands: list[Command] = [("SETBIT", key, offset, 1) for key, offset in self.bits]
        commands.append(("INCRBY", self.count_key, self.added))
        if self.channel is not None and self.message is not None:
            commands.append(("PUBLISH", self.channel, self.message))
        return commands

    def parse(self, reply: Any) -> int:
        return int(reply[len(self.bits)])

    def apply(self, store: Store) -> int:
        grown: dict[str, bytearray] = {}
        for key, offset in self.bits:
            data = grown.get(key)
            if data is None:
                data = grown[key] = bytearray(store.read(key) or b"")
            index = offset >> 3
            if index >= len(data):
                data.extend(bytes(index + 1 - len(data)))
            data[index] |= 0x80 >> (offset & 7)
        for key, data in grown.items():
            store.write(key, bytes(data), None)
        current = store.read(self.count_key)
        count = (int(current) if current is not None else 0) + self.added
        store.write(self.count_key, b"%d" % count, None)
        if self.channel is not None and self.message is not None:
            store.publish(self.channel, self.message)
        return count
