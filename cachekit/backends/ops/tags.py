"""Tag versions: O(1) invalidation of every entry carrying a tag, with no key scans.

Each tag has a version key holding a random token. An entry written by a tagged function
stores a stamp of its tags' versions as they were when it read them; invalidating a tag
replaces its token, so every entry stamped with the old one stops matching. A version key
that is missing (never used, evicted, lost to a restart) is created by the first reader
with ``SET NX GET``, so a lost version can only make entries miss, never revive old ones.
Tags may live on any Cluster slot: they are separate commands in one pipeline, never one
multi-key command.

Usage::

    raw, versions = backend.run(ReadTagged("p:{page:1}", ["p:tag:{catalog}"], [token]))
    backend.run(RetireTags(["p:tag:{catalog}"], [new_token]))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cachekit.backends.ops import Command, Op, Store

__all__ = ["ReadTagged", "RetireTags"]


@dataclass(slots=True)
class ReadTagged(Op[tuple[bytes | None, list[bytes]]]):
    """``GET key`` and each tag's version (created from ``fresh`` where missing)."""

    key: str
    tags: Sequence[str]
    fresh: Sequence[bytes]  # a new random token per tag, used only where none exists

    kind = "pipeline"

    def pipeline(self) -> list[Command]:
        reads: list[Command] = [("GET", self.key)]
        return reads + [
            ("SET", tag, token, "NX", "GET")
            for tag, token in zip(self.tags, self.fresh, strict=True)
        ]

    def parse(self, reply: Any) -> tuple[bytes | None, list[bytes]]:
        raw, *olds = reply
        return raw, [old or new for old, new in zip(olds, self.fresh, strict=True)]

    def apply(self, store: Store) -> tuple[bytes | None, list[bytes]]:
        versions = []
        for tag, token in zip(self.tags, self.fresh, strict=True):
            current = store.read(tag)
            if current is None:
                store.write(tag, token, None)
            versions.append(current or token)
        return store.read(self.key), versions


@dataclass(slots=True)
class RetireTags(Op[None]):
    """Give each tag a new version: every entry stamped with the old one is now a miss."""

    tags: Sequence[str]
    tokens: Sequence[bytes]

    kind = "pipeline"

    def pipeline(self) -> list[Command]:
        return [("SET", tag, token) for tag, token in zip(self.tags, self.tokens, strict=True)]

    def parse(self, reply: Any) -> None:
        return None

    def apply(self, store: Store) -> None:
        for tag, token in zip(self.tags, self.tokens, strict=True):
            store.write(tag, token, None)
