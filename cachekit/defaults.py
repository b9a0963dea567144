"""The process-wide default cache: the one integrations use when they are given none.

:meth:`cachekit.Cache.configure` registers its cache here, so an integration declared
with ``cache=None`` (SQLAlchemy invalidation, the Prometheus collector, the command line)
uses the cache most recently configured in this process. Standard library only, so every
layer may import it.

Usage::

    from cachekit.contrib import set_default_cache

    cache = Cache.from_url(os.environ["REDIS_URL"])
    set_default_cache(cache)      # integrations declared with cache=None now use it
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cachekit.cache import Cache

__all__ = ["default_cache", "set_default_cache"]

_default_lock = threading.Lock()
_default: Cache | None = None


def set_default_cache(cache: Cache | None) -> Cache | None:
    """Make ``cache`` the one integrations use when they are given none; the previous one.

    ``None`` clears it. The latest call wins, so call it once at startup, after
    configuring the cache.

    Usage::

        cache = Cache.from_url("redis://127.0.0.1:6379/0")
        set_default_cache(cache)
    """
    global _default
    with _default_lock:
        previous, _default = _default, cache
    return previous


def default_cache() -> Cache | None:
    """The cache most recently passed to :func:`set_default_cache`, or ``None``.

    Usage::

        cache = default_cache()
        if cache is None:
            raise RuntimeError("call set_default_cache(cache) at startup")
    """
    return _default
