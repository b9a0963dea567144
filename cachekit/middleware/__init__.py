"""HTTP response caching for ASGI apps, safe by RFC 9111.

Usage::

    from cachekit.middleware import ResponseCacheMiddleware, cacheable, never_cache, purge

    app.add_middleware(ResponseCacheMiddleware, cache=cache, ttl=60)
    await purge(cache, "/products")
"""

from __future__ import annotations

from cachekit.middleware.options import RouteOptions, cacheable, never_cache
from cachekit.middleware.response_cache import ResponseCacheMiddleware, purge

__all__ = ["ResponseCacheMiddleware", "RouteOptions", "cacheable", "never_cache", "purge"]
