"""cachekit: caching for Python web apps on Redis or Valkey.

Cache-aside decorators for ``def`` and ``async def``, with a raw API on both faces, that
keep the database safe from the classic cache failures.

Usage::

    from cachekit import Cache

    cache = Cache.from_url("redis://127.0.0.1:6379/0")

    @cache.cached(ttl=300, key="product:{product_id}")
    async def get_product(product_id: int) -> dict[str, object] | None: ...
"""

from cachekit.bloom.filter import Bloom, SyncBloom
from cachekit.cache import Cache
from cachekit.decorators import AsyncCachedFunction, Decorator, SyncCachedFunction
from cachekit.exceptions import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    CacheKitError,
    CartError,
    CartUnavailable,
    CircuitOpen,
    ConfigurationError,
    InvalidCartInput,
    KeyTemplateError,
    LockError,
    LockNotOwnedError,
    LockTimeout,
    NotConfigured,
    SerializationError,
    SessionError,
    Uncacheable,
)
from cachekit.flow.effects import MISSING
from cachekit.lock import Lock, SyncLock
from cachekit.near.local import LocalCache
from cachekit.serializers import (
    JsonSerializer,
    Keyring,
    MsgpackSerializer,
    PickleSerializer,
    Serializer,
)
from cachekit.sync import SyncCache

__version__ = "0.1.0"

__all__ = [
    "MISSING",
    "AsyncCachedFunction",
    "BackendError",
    "BackendTimeout",
    "BackendUnavailable",
    "Bloom",
    "Cache",
    "CacheKitError",
    "CartError",
    "CartUnavailable",
    "CircuitOpen",
    "ConfigurationError",
    "Decorator",
    "InvalidCartInput",
    "JsonSerializer",
    "KeyTemplateError",
    "Keyring",
    "LocalCache",
    "Lock",
    "LockError",
    "LockNotOwnedError",
    "LockTimeout",
    "MsgpackSerializer",
    "NotConfigured",
    "PickleSerializer",
    "SerializationError",
    "Serializer",
    "SessionError",
    "SyncBloom",
    "SyncCache",
    "SyncCachedFunction",
    "SyncLock",
    "Uncacheable",
    "__version__",
]
