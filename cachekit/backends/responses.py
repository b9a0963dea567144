"""The response cache's one read: a URL's record, its generations and a variant, pipelined.

A hit needs the URL's record (which headers the app's ``Vary`` named), the generation
tokens its entries must be stamped with, and the variant's entry. The entry key depends
on the record, so the reader guesses it (the variant seen last for the URL, in this
process) and reads all of them in one round trip; a wrong guess costs a second GET. The
keys may live on different Cluster slots: they are separate commands of one pipeline.
Missing generation tokens are created as in :class:`~cachekit.backends.tags.ReadTagged`,
but with a TTL: a path requested once must not leave a key behind forever, and a lost
token is replaced by a new random one, so its loss only turns entries into misses.

Usage::

    record, versions, entry = backend.run(
        ReadResponse("p:http:{u1}", ["p:http-gen:{p1}"], tokens, 3600, "p:http:{v1}")
    )
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cachekit.backends.ops import Command, Op, Store, ms

__all__ = ["ReadResponse", "RenewGenerations"]


@dataclass(slots=True)
class RenewGenerations(Op[None]):
    """Give each generation key a new token and TTL: entries stamped with the old one miss."""

    keys: Sequence[str]
    tokens: Sequence[bytes]
    ttl: float

    kind = "pipeline"

    def pipeline(self) -> list[Command]:
        return [
            ("SET", key, token, "PX", ms(self.ttl))
            for key, token in zip(self.keys, self.tokens, strict=True)
        ]

    def parse(self, reply: Any) -> None:
        return None

    def apply(self, store: Store) -> None:
        for key, token in zip(self.keys, self.tokens, strict=True):
            store.write(key, token, self.ttl)


@dataclass(slots=True)
class ReadResponse(Op[tuple[bytes | None, list[bytes], bytes | None]]):
    """``GET record``, each generation (``SET NX GET``), and ``GET entry`` when guessed."""

    record: str
    generations: Sequence[str]
    fresh: Sequence[bytes]  # a new random token per generation, used only where none exists
    ttl: float
    entry: str | None = None

    kind = "pipeline"

    def pipeline(self) -> list[Command]:
        commands: list[Command] = [("GET", self.record)]
        commands += [
            ("SET", key, token, "PX", ms(self.ttl), "NX", "GET")
            for key, token in zip(self.generations, self.fresh, strict=True)
        ]
        if self.entry is not None:
            commands.append(("GET", self.entry))
        return commands

    def parse(self, reply: Any) -> tuple[bytes | None, list[bytes], bytes | None]:
        record, *rest = reply
        count = len(self.generations)
        olds, tail = rest[:count], rest[count:]
        versions = [old or new for old, new in zip(olds, self.fresh, strict=True)]
        return record, versions, tail[0] if tail else None

    def apply(self, store: Store) -> tuple[bytes | None, list[bytes], bytes | None]:
        versions = []
        for key, token in zip(self.generations, self.fresh, strict=True):
            current = store.read(key)
            if current is None:
                store.write(key, token, self.ttl)
            versions.append(current or token)
        entry = store.read(self.entry) if self.entry is not None else None
        return store.read(self.record), versions, entry
