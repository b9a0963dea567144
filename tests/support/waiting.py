"""Waiting for something another thread, task or process makes true, bounded.

The bounds are generous (a loaded CI machine can be slow) and never a latency claim: a
condition that holds returns at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

WAIT = 10.0


async def eventually(condition: Callable[[], bool], what: str, within: float = WAIT) -> None:
    """Yield to the loop until ``condition()`` holds; ``AssertionError`` naming ``what`` if not."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.002)


def eventually_sync(
    condition: Callable[[], bool], what: str = "the condition", within: float = WAIT
) -> None:
    """Sleep until ``condition()`` holds; ``AssertionError`` naming ``what`` if not."""
    if not holds_within(condition, within):
        raise AssertionError(f"not within {within}s: {what}")


def holds_within(condition: Callable[[], bool], within: float = WAIT) -> bool:
    """Whether ``condition()`` comes to hold within ``within`` seconds (polled)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


async def comes_true(predicate: Callable[[], Awaitable[bool]], within: float = WAIT) -> bool:
    """Whether ``await predicate()`` comes to hold within ``within`` seconds (polled)."""
    deadline = time.monotonic() + within
    while not await predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True
