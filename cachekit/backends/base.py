"""SyncBackend and AsyncBackend: the same operations, run blocking or on an event loop.

Usage::

    def read(backend: SyncBackend) -> bytes | None:
        return backend.run(Get("p:{k}"))
"""

from __future__ import annotations

from typing import Protocol, TypeVar

from cachekit.backends.ops import Op

__all__ = ["AsyncBackend", "SyncBackend"]

T = TypeVar("T")


class SyncBackend(Protocol):
    """Runs :class:`~cachekit.backends.ops.Op` s and blocks for the answer.

    Errors are raised as :class:`~cachekit.exceptions.BackendError` subclasses only.
    """

    def run(self, op: Op[T]) -> T:
        """Perform ``op`` and return its result."""
        ...

    def close(self) -> None:
        """Release connections; the backend may not be used afterwards."""
        ...


class AsyncBackend(Protocol):
    """Runs :class:`~cachekit.backends.ops.Op` s on the event loop.

    Errors are raised as :class:`~cachekit.exceptions.BackendError` subclasses only.
    """

    async def run(self, op: Op[T]) -> T:
        """Perform ``op`` and return its result."""
        ...

    async def close(self) -> None:
        """Release connections; the backend may not be used afterwards."""
        ...
