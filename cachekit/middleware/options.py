"""The response cache's settings, and the per-route opt-in and opt-out markers.

Routes are marked on their endpoint, never matched by path or file extension (R6): the
mark is read from ``scope["endpoint"]``, which Starlette's router sets on the scope the
middleware handed down, so it is known when the app starts its response.

Usage::

    @cacheable(ttl=300)
    async def catalog(request: Request) -> Response: ...

    @never_cache
    async def account(request: Request) -> Response: ...
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar, overload

from cachekit.middleware.capture import Scope
from cachekit.middleware.flow import ResponsePolicy

__all__ = ["Options", "RouteOptions", "cacheable", "never_cache", "route_options"]

F = TypeVar("F", bound=Callable[..., Any])
_MARK: Final = "__cachekit_response_cache__"
UNSAFE_EXEMPT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "CONNECT"})
"""Methods that never invalidate; every other one (even unknown ones) does (RFC 9111 4.4)."""


@dataclass(frozen=True, slots=True)
class RouteOptions:
    """How one route is cached: ``enabled``, its default ``ttl``, ``share_authorized``."""

    enabled: bool = True
    ttl: float | None = None
    share_authorized: bool = False


@overload
def cacheable(endpoint: F, /) -> F: ...
@overload
def cacheable(*, ttl: float | None = None, share_authorized: bool = False) -> Callable[[F], F]: ...
def cacheable(
    endpoint: F | None = None, /, *, ttl: float | None = None, share_authorized: bool = False
) -> F | Callable[[F], F]:
    """Mark an endpoint as cacheable (required when the middleware has ``only_marked``).

    **Parameters:**

    * **ttl** - this route's freshness when the response states none (default: the
      middleware's ``ttl``).
    * **share_authorized** - responses to requests with ``Authorization`` may be stored
      and served to others, when the response itself says ``public`` or ``s-maxage``.

    Usage::

        @cacheable(ttl=300)
        async def catalog(request): ...
    """
    options = RouteOptions(ttl=ttl, share_authorized=share_authorized)

    def mark(fn: F) -> F:
        setattr(fn, _MARK, options)
        return fn

    return mark(endpoint) if endpoint is not None else mark


def never_cache(endpoint: F) -> F:
    """Mark an endpoint whose responses are never stored.

    Usage::

        @never_cache
        async def account(request): ...
    """
    setattr(endpoint, _MARK, RouteOptions(enabled=False))
    return endpoint


def route_options(scope: Scope) -> RouteOptions | None:
    """The marks of the endpoint the router chose for ``scope``, if any."""
    endpoint = scope.get("endpoint")
    if endpoint is None:
        return None
    options = getattr(endpoint, _MARK, None)
    return options if isinstance(options, RouteOptions) else None


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """Every setting of :class:`~cachekit.middleware.ResponseCacheMiddleware`, checked."""

    ttl: float
    statuses: frozenset[int]
    max_body_size: int
    stale_while_revalidate: float
    stale_if_error: float
    credential_cookies: Collection[str] | Literal["*"]
    bypass_headers: frozenset[bytes]
    key_headers: tuple[str, ...]
    share_authorized: bool
    only_marked: bool
    client_refresh: bool
    coalesce: bool
    targets: tuple[bytes, ...] = ()
    heuristic: float = 0.0
    near: bool = True
    share_reads: bool = True
    flow: ResponsePolicy
