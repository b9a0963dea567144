"""Interleaved rounds: every contender once per round, taking turns going first.

On a shared, noisy machine a slow moment should hit every contender in turn, not one of
them for its whole run; so each round runs them all, rotated by the round's index. Only
ratios within one run mean anything.

Usage::

    for _, contender in interleaved(contenders, rounds=10, collect=True):
        contender.samples.append(time_it(contender.call))
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence
from typing import TypeVar

__all__ = ["interleaved", "rotation"]

T = TypeVar("T")


def rotation(items: Sequence[T], round_index: int) -> list[T]:
    """``items`` rotated left by ``round_index``: round ``r`` starts with item ``r % n``."""
    if not items:
        return []
    k = round_index % len(items)
    return [*items[k:], *items[:k]]


def interleaved(
    items: Sequence[T], rounds: int, *, collect: bool = False
) -> Iterator[tuple[int, T]]:
    """``(round, item)`` for every round and item, each round in :func:`rotation` order.

    With ``collect``, garbage is collected before each item: nobody pays for the garbage
    of the one before.
    """
    for r in range(rounds):
        for item in rotation(items, r):
            if collect:
                gc.collect()
            yield r, item
