"""Making stored responses misses: per path in O(1), everything by scan, and write-through.

Every key of a path carries a stamp of the path's generation (:mod:`.entry`).
:func:`invalidate` gives paths new generations, so all their entries (any host, query or
variant) stop matching at once; :func:`purge_all` removes the response cache's keys.
:func:`write_through` sends an unsafe request (POST, PUT, PATCH, DELETE and any method
whose safety is unknown) to the app and, when it succeeds, invalidates its target and
the ``Location``/``Content-Location`` it names on this host (RFC 9111 section 4.4).

Usage::

    await face.drive(invalidate(ctx, settings, ["/products"]))
    await write_through(app, cache.bound, settings, scope, receive, send)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from urllib.parse import unquote, urlsplit

from cachekit.backends.ops.responses import RenewGenerations, ScanKeys, UnlinkEach
from cachekit.drivers.binding import Binding
from cachekit.flow.context import Context, new_token
from cachekit.flow.effects import Flow, Forget
from cachekit.flow.raw import deferrable
from cachekit.middleware.capture import Message, Receive, Scope, Send, with_headers
from cachekit.middleware.directives import Headers, header
from cachekit.middleware.entry import GENERATION_SUFFIX, http_pattern, path_home
from cachekit.middleware.flow import ResponsePolicy
from cachekit.middleware.types import ASGIApp
from cachekit.stats import LogOnce

__all__ = ["invalidate", "purge_all", "write_through"]

_log = LogOnce(logging.getLogger("cachekit"))


def invalidate(ctx: Context, settings: ResponsePolicy, paths: Iterable[str]) -> Flow[None]:
    """Make every stored response of ``paths`` a miss, in O(1) per path.

    Never raises: when Redis cannot be reached the change is retried in the background.
    """
    keys = sorted({path_home(ctx.keyspace, path) + GENERATION_SUFFIX for path in paths})
    if keys:
        tokens = [new_token() for _ in keys]
        yield from deferrable(ctx, RenewGenerations(keys, tokens, settings.generation_ttl))
        yield Forget(None)  # which flights belong to these paths is unknown: detach them all


def purge_all(ctx: Context) -> Flow[int]:
    """Remove every key of the response cache, a SCAN batch at a time; how many were seen.

    A fill racing with it cannot leave an entry that is served afterwards: every
    generation alive when the scan began is removed by it (SCAN returns every key that
    exists throughout), and a generation created later is a new random token, which no
    entry stamped before could carry. Such an entry may stay in Redis until its TTL,
    unserved. Raises :class:`~cachekit.exceptions.BackendError` if Redis fails meanwhile.
    """
    pattern = http_pattern(ctx.keyspace)
    cursor, seen = 0, 0
    while True:
        cursor, keys = yield ScanKeys(cursor, pattern)
        if keys:
            seen += len(keys)
            yield UnlinkEach(keys)
        if cursor == 0:
            break
    yield Forget(None)
    return seen


async def write_through(
    app: ASGIApp,
    bound: Callable[[], Binding],
    settings: ResponsePolicy,
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    """Run the app on an unsafe request; on a non-error status, invalidate before answering.

    The invalidation happens before the response starts, so a client that reads the
    resource right after its write never gets the old copy. Never fails the request.
    """
    done = False

    async def send_after_invalidating(message: Message) -> None:
        nonlocal done
        if message["type"] == "http.response.start" and not done:
            done = True
            if int(message["status"]) < 400:
                await _invalidate(bound, settings, scope, message.get("headers", ()))
            message = with_headers(message, [(b"x-cache", b"BYPASS")], frozenset({b"x-cache"}))
        await send(message)

    await app(scope, receive, send_after_invalidating)


async def _invalidate(
    bound: Callable[[], Binding], settings: ResponsePolicy, scope: Scope, response_headers: Headers
) -> None:
    """Invalidate the request's path, and ``Location``/``Content-Location`` on this host."""
    paths = [str(scope.get("path", "/"))]
    host = (header(scope.get("headers") or [], b"host") or "").lower()
    for name in (b"location", b"content-location"):
        value = header(response_headers, name)
        if value:
            parts = urlsplit(value)
            same_host = not parts.netloc or parts.netloc.lower() == host
            if parts.path.startswith("/") and same_host:
                paths.append(unquote(parts.path))
    try:
        binding = bound()
        await binding.aio.drive(invalidate(binding.ctx, settings, paths))
    except Exception as exc:  # the cache must never fail a request
        _log.warning(
            ("http", "invalidation", type(exc)),
            "cachekit: response cache invalidation failed: %r",
            exc,
        )
