"""Every error cachekit raises, under one root.

The hierarchy::

    * CacheKitError
      x ConfigurationError      (also a ValueError)
        - NotConfigured         the Cache was used before configure()
      x KeyTemplateError        (also a TypeError) an argument cannot form a key
      x SerializationError      a value cannot be encoded by the chosen serializer
        - Uncacheable           it would not come back equal and of the same type, or
                                it is larger than max_value_size: stored nowhere
      x BackendError            the storage layer answered with an error
        - BackendUnavailable    it could not be reached, or did not answer in time
          · BackendTimeout      it did not answer within the time budget
          · CircuitOpen         not called at all: its circuit breaker is open
      x LockError
        - LockTimeout           the wait for a lock ran out
        - LockNotOwnedError     the lock was lost or released by someone else
      x SessionError            a session cannot be stored (not JSON, too large)
      x CartError
        - InvalidCartInput      (also a ValueError) a bad owner, SKU or quantity, or a
                                limit reached: nothing was changed (a 4xx)
        - CartUnavailable       the cart's database failed: nothing was changed (a 503)

Errors of the layer below (redis-py, OSError) are translated in exactly one place,
:func:`cachekit.backends.redis.translate_errors`, and always chained with ``from``.

Usage::

    try:
        await cache.set("k", 1)
    except BackendUnavailable:
        ...   # Redis is down; cache reads fail open on their own
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BackendTimeout",
    "BackendUnavailable",
    "CacheKitError",
    "CartError",
    "CartUnavailable",
    "CircuitOpen",
    "ConfigurationError",
    "InvalidCartInput",
    "KeyTemplateError",
    "LockError",
    "LockNotOwnedError",
    "LockTimeout",
    "NotConfigured",
    "SerializationError",
    "SessionError",
    "Uncacheable",
]


class CacheKitError(Exception):
    """Root of every exception cachekit raises.

    Usage::

        try:
            value = cache.sync.get("k")
        except CacheKitError:
            value = None
    """


class ConfigurationError(CacheKitError, ValueError):
    """A setting, URL or decorator argument is invalid; the message says which and why."""


class NotConfigured(ConfigurationError):
    """A :class:`~cachekit.Cache` declared with ``Cache()`` was used before ``configure()``."""


class KeyTemplateError(CacheKitError, TypeError):
    """A key template or a call's arguments cannot produce a cache key."""


class SerializationError(CacheKitError):
    """A value cannot be encoded (or a stored payload decoded) by the chosen serializer."""


class Uncacheable(SerializationError):
    """A value that is not stored, because it would not come back as it went in.

    Raised by ``cache.set`` (and counted as ``uncacheable`` by decorated functions, which
    return such a value uncached): a value of a type the format cannot give back (a
    dataclass without a ``type=``, a tuple, a ``datetime`` in an unannotated result), one
    that does not match its annotation, an ORM instance, or one over ``max_value_size``.
    The message says how to fix it.

    Usage::

        try:
            await cache.set("order:1", order)
        except Uncacheable:
            await cache.set("order:1", order, type=Order)
    """

    def __init__(self, problem: str, fix: str = "", *, needs_type: bool = False) -> None:
        super().__init__(f"{problem}: {fix}" if fix else problem)
        self.problem = problem
        self.fix = fix
        self.needs_type = needs_type  # naming the value's type would make it cacheable

    def describe(self, where: str) -> str:
        """The message for a result of ``where`` (a function's name)."""
        fix = self.fix.replace("{function}", where)
        return f"{where} returned {self.problem}" + (f": {fix}" if fix else "")


class BackendError(CacheKitError):
    """The storage backend answered with an error."""


class BackendUnavailable(BackendError):
    """The backend could not be reached or did not answer within its time budget."""


class BackendTimeout(BackendUnavailable):
    """The backend did not answer within its time budget."""


class CircuitOpen(BackendUnavailable):
    """The backend was not called: its circuit breaker is open after repeated failures.

    Usage::

        except CircuitOpen:
            ...   # Redis failed moments ago; cachekit retries by itself after the cool-down
    """


class LockError(CacheKitError):
    """Base class of the lock errors."""

    def __init__(self, message: str, *, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name


class LockTimeout(LockError):
    """The lock was not acquired before the wait ran out."""


class LockNotOwnedError(LockError):
    """The lock being released or extended is no longer held by this owner."""


class SessionError(CacheKitError):
    """A session's data cannot be stored: a value is not JSON, or the record is too large."""


class CartError(CacheKitError):
    """Base class of the cart errors."""


class InvalidCartInput(CartError, ValueError):
    """An owner, SKU or quantity is invalid, or a cart limit was reached; nothing changed.

    Usage::

        try:
            await cart.add(owner, sku, qty)
        except InvalidCartInput as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
    """


class CartUnavailable(CartError):
    """The cart's database could not be reached or failed; nothing was changed.

    Usage::

        except CartUnavailable:
            return JSONResponse({"error": "try again"}, status_code=503)
    """
