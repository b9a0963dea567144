"""``ResponseCacheMiddleware``: whole HTTP responses cached in Redis, safely, for any ASGI app.

Usage::

    from cachekit.middleware import ResponseCacheMiddleware, purge

    app.add_middleware(ResponseCacheMiddleware, cache=cache, ttl=60)
    await purge(cache, "/products")     # every variant and query of /products
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from datetime import timedelta
from typing import Literal

from cachekit.cache import Cache
from cachekit.config import seconds_or_zero, to_seconds
from cachekit.exceptions import ConfigurationError
from cachekit.middleware.capture import Receive, Scope, Send
from cachekit.middleware.directives import DEFAULT_BYPASS_HEADERS, DEFAULT_ENCODINGS, lower_names
from cachekit.middleware.flow import ResponsePolicy
from cachekit.middleware.invalidation import invalidate, purge_all
from cachekit.middleware.near import NEAR_MAX_SIZE
from cachekit.middleware.options import Options
from cachekit.middleware.responder import Responder, State
from cachekit.middleware.targeted import DEFAULT_TARGETS
from cachekit.middleware.types import ASGIApp

__all__ = ["GENERATION_TTL", "ResponseCacheMiddleware", "purge"]

GENERATION_TTL = 3600.0
"""Seconds a path's invalidation token lives; when it lapses, that path's entries miss once."""


class ResponseCacheMiddleware:
    """Pure ASGI middleware that stores whole GET responses and serves them again.

    Follows RFC 9111 as a shared cache: it honours ``Cache-Control`` (``no-store``,
    ``private``, ``no-cache``, ``s-maxage``, ``max-age``, ``stale-while-revalidate``,
    ``stale-if-error``) and ``Vary``; never stores ``Set-Cookie``, partial, streamed-out
    or oversized responses; never answers ``Authorization`` requests from the cache unless
    the response was public; and invalidates a path when an unsafe method succeeds on it.
    Responses carry ``X-Cache: HIT | MISS | STALE | BYPASS`` and ``Age`` when served from
    the cache. Redis failing means ``BYPASS``: the app answers, never a cache error.

    Put it *after* (inside) authentication middleware (R9), so that what it stores has
    already passed the app's access checks.

    Usage::

        app.add_middleware(ResponseCacheMiddleware, cache=cache, ttl=60, stale_while_revalidate=30)

    **Parameters:**

    * **cache** - the :class:`~cachekit.Cache` to store in (its prefix and client).
    * **ttl** - seconds fresh when the response states no ``s-maxage``/``max-age``/``Expires``
      (a default lifetime, per route with ``@cacheable(ttl=...)``). ``None``: follow the
      origin: only responses that state their own freshness are reused without asking the
      app again (a standards-following shared cache, RFC 9111).
    * **statuses** - the statuses stored (default: 200 only; 206 never).
    * **max_body_size** - larger bodies stream through unstored (default 1 MiB).
    * **stale_while_revalidate** - seconds a stale response is served while one refresh
      runs in the background, fleet-wide (a response's own directive wins).
    * **stale_if_error** - seconds a stale response is served while the app fails (5xx or
      an exception).
    * **hit_for_miss** - seconds an uncacheable answer is remembered, so requests for it
      go straight to the app instead of queueing for one that will never be stored.
    * **lock_wait** - how long concurrent misses of one response wait for the one running
      the app, before running it themselves (default 5 s).
    * **lock_ttl** - the lease of the request running the app; renewed while it runs.
    * **credential_cookies** - cookie names that make a request personal, so it bypasses
      the cache (``"*"``, the default: any cookie). List your session cookies to cache
      pages for visitors who carry only harmless cookies.
    * **bypass_headers** - request headers whose presence bypasses the cache, because apps
      read them but they are not keyed (default: ``X-Forwarded-Host`` and friends, R7).
    * **key_headers** - request headers always keyed, as if every response varied on them
      (key ``X-Forwarded-Proto`` here when a trusted proxy always sets it).
    * **encodings** - the codings the app may produce; ``Vary: Accept-Encoding`` keys
      only on which of these a client accepts, so there is one variant per coding.
    * **share_authorized** - store responses to requests with ``Authorization`` when
      they say ``public`` or ``s-maxage`` (per route: ``@cacheable(share_authorized=True)``).
    * **only_marked** - store only responses of endpoints marked ``@cacheable``.
    * **client_refresh** - honour a client's ``Cache-Control: no-cache`` by refreshing the
      entry; off by default, since it would let any client defeat the cache.
    * **coalesce** - concurrent misses of one response run the app once (default on).
    * **targeted_fields** - targeted cache-control fields (RFC 9213) that replace
      ``Cache-Control`` and ``Expires`` for this cache, most specific first: the first
      present and valid one wins (default ``Cachekit-Cache-Control``, then
      ``CDN-Cache-Control``; ``()`` to obey ``Cache-Control`` only).
    * **heuristic** - with no default lifetime (``ttl=None``), a response stating no
      freshness but a ``Last-Modified`` is fresh for this fraction of its age (RFC 9111
      section 4.2.2; ``0.1`` is usual, at most a day). Default 0: never guess.
    * **near** - when the cache has a near cache (``Cache(local=LocalCache(...))``), serve
      fresh hot responses from it, with no round trip (default on; without ``local=`` it
      does nothing). A copy is dropped when any of its keys is written, by any process,
      so it is late by at most one invalidation's delivery (:mod:`cachekit.middleware.near`).
    * **near_max_size** - the largest stored entry, in bytes, kept in the near cache
      (default 64 KiB): the near cache bounds its number of entries, not their size.
    * **share_reads** - concurrent requests for one page share its Redis read (one round
      trip per batch under load), each still answered from a read sent after it arrived,
      so nothing invalidated before a request arrived is served to it
      (:mod:`cachekit.middleware.batch`; default on). Without a near cache only.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        cache: Cache,
        ttl: float | timedelta | None = 60,
        statuses: Collection[int] = (200,),
        max_body_size: int = 1 << 20,
        stale_while_revalidate: float | timedelta = 0,
        stale_if_error: float | timedelta = 0,
        hit_for_miss: float | timedelta = 10,
        lock_wait: float | timedelta = 5,
        lock_ttl: float | timedelta = 10,
        credential_cookies: Collection[str] | Literal["*"] = "*",
        bypass_headers: Collection[str] = DEFAULT_BYPASS_HEADERS,
        key_headers: Collection[str] = (),
        encodings: Collection[str] = DEFAULT_ENCODINGS,
        share_authorized: bool = False,
        only_marked: bool = False,
        client_refresh: bool = False,
        coalesce: bool = True,
        targeted_fields: Sequence[str] = DEFAULT_TARGETS,
        heuristic: float = 0.0,
        near: bool = True,
        near_max_size: int = NEAR_MAX_SIZE,
        share_reads: bool = True,
    ) -> None:
        if 206 in statuses:
            raise ConfigurationError("206 responses are never stored: remove it from statuses")
        if not 0 <= heuristic <= 1:
            raise ConfigurationError("heuristic is a fraction between 0 and 1 (RFC 9111: 0.1)")
        if max_body_size < 0:
            raise ConfigurationError("max_body_size must be >= 0")
        if near_max_size < 0:
            raise ConfigurationError("near_max_size must be >= 0")
        keyed = lower_names(key_headers)
        self.app = app
        self.cache = cache
        self.options = Options(
            ttl=to_seconds(ttl, name="ttl") or 0.0,
            statuses=frozenset(statuses),
            max_body_size=max_body_size,
            stale_while_revalidate=seconds_or_zero(
                stale_while_revalidate, "stale_while_revalidate"
            ),
            stale_if_error=seconds_or_zero(stale_if_error, "stale_if_error"),
            credential_cookies=credential_cookies
            if credential_cookies == "*"
            else frozenset(credential_cookies),
            bypass_headers=frozenset(
                n.encode("latin-1") for n in lower_names(bypass_headers) if n not in keyed
            ),
            key_headers=keyed,
            share_authorized=share_authorized,
            only_marked=only_marked,
            client_refresh=client_refresh,
            coalesce=coalesce,
            heuristic=heuristic,
            near=near,
            share_reads=share_reads,
            targets=tuple(
                dict.fromkeys(n.strip().lower().encode("latin-1") for n in targeted_fields)
            ),
            flow=ResponsePolicy(
                lock_ttl=to_seconds(lock_ttl, name="lock_ttl") or 10.0,
                lock_wait=seconds_or_zero(lock_wait, "lock_wait"),
                hit_for_miss=seconds_or_zero(hit_for_miss, "hit_for_miss"),
                generation_ttl=GENERATION_TTL,
                encodings=lower_names(encodings),
                near_max_size=near_max_size,
            ),
        )
        if not math.isfinite(self.options.ttl):
            raise ConfigurationError("ttl must be finite")
        # Hints shared by all requests, never a source of truth (every read is checked):
        # which variant each URL served last (one GET per hit instead of two), and the
        # keys of recent URLs (no digests per hit).
        self._state = State(app, cache.bound, cache.counters, self.options, {}, {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await Responder(self._state, scope, receive, send).run()


async def purge(cache: Cache, *paths: str) -> None:
    """Make the stored responses of ``paths`` (all of them, when none is given) a miss.

    With paths: every variant and every query string of each path, on every host, in
    O(1) per path; never raises for Redis being down (the change is retried in the
    background). With none: every key of the response cache is removed, a SCAN batch at
    a time; this raises :class:`~cachekit.exceptions.BackendError` if Redis fails
    meanwhile (call it again: it is idempotent).

    Usage::

        await purge(cache, "/products", "/products/5")
        await purge(cache)                      # everything the response cache stored
    """
    binding = cache.bound()
    if not paths:
        await binding.aio.drive(purge_all(binding.ctx))
        return
    settings = ResponsePolicy(
        lock_ttl=10.0,
        lock_wait=0.0,
        hit_for_miss=0.0,
        generation_ttl=GENERATION_TTL,
        encodings=DEFAULT_ENCODINGS,
    )
    await binding.aio.drive(invalidate(binding.ctx, settings, paths))
