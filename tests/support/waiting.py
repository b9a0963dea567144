"""Waiting for something another thread, task or process makes true, bounded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

WAIT = 10.0  # generous: a loaded CI machine can be slow, and a pass returns at once


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Yield to the loop until ``condition()`` holds (bounded by :data:`WAIT`)."""
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT}s: {what}")
        await asyncio.sleep(0.002)


def eventually_sync(condition: Callable[[], bool], what: str) -> None:
    """Sleep until ``condition()`` holds (bounded by :data:`WAIT`)."""
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT}s: {what}")
        time.sleep(0.002)
