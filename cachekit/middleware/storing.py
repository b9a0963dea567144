"""From what the app answered to what is stored: :func:`build_entry` and :func:`collect`.

Usage::

    answer = await collect(app, scope, max_body_size=1 << 20)
    built = build_entry(options, answer, request_headers, target, route, now)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

from cachekit.middleware.capture import Answer, Message, Receive, Scope, Send
from cachekit.middleware.directives import (
    HOP_BY_HOP,
    Headers,
    freshness,
    header,
    parse_vary,
    stale_windows,
)
from cachekit.middleware.entry import Entry, RequestKeys, content_etag, vary_values
from cachekit.middleware.httpdates import initial_age, parse_age, parse_http_date
from cachekit.middleware.options import Options, RouteOptions
from cachekit.middleware.targeted import response_directives

__all__ = ["HEURISTIC_MAX", "HEURISTIC_STATUSES", "build_entry", "collect", "freshened"]

HEURISTIC_STATUSES: Final = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
"""Statuses heuristically cacheable (RFC 9110 section 15.1); others only when ``public``."""
HEURISTIC_MAX: Final = 86400.0
"""A heuristic lifetime is at most a day, however old ``Last-Modified`` is."""

_NOT_REPLAYED: Final = HOP_BY_HOP | {b"set-cookie", b"x-cache", b"age"}
_NOT_UPDATED: Final = frozenset(
    {b"content-length", b"content-encoding", b"content-range", b"content-md5", b"etag"}
)
"""Fields a 304 never changes in the stored response: they describe its body (RFC 9111 3.2)."""


def freshened(entry: Entry, not_modified: Headers) -> Answer:
    """The stored response with the header fields of a ``304`` that validated it (4.3.4).

    Each field the 304 carries replaces the stored one (all its lines), except those
    describing the body; ``Set-Cookie`` is never stored. The stored ETag of our own
    (a content hash) is dropped, so the answer tells again whether the app sent one.
    """
    names = {k.lower() for k, _ in not_modified} - _NOT_UPDATED
    kept = [
        (k, v)
        for k, v in entry.headers
        if k.lower() not in names and (entry.origin_etag or k.lower() != b"etag")
    ]
    kept += [(k, v) for k, v in not_modified if k.lower() in names]
    return Answer(entry.status, tuple(kept), entry.body)


def heuristic_lifetime(
    status: int, cc: Mapping[str, str | None], headers: Headers, fraction: float, now: float
) -> float:
    """A lifetime guessed from ``Last-Modified`` (RFC 9111 section 4.2.2), or 0.

    Only for a response without explicit freshness: ``fraction`` of the time since it was
    last modified (as of its ``Date``), at most :data:`HEURISTIC_MAX`.
    """
    if "max-age" in cc or "s-maxage" in cc or header(headers, b"expires") is not None:
        return 0.0
    if status not in HEURISTIC_STATUSES and "public" not in cc:
        return 0.0
    modified = parse_http_date(header(headers, b"last-modified"), now)
    if modified is None:
        return 0.0
    date = parse_http_date(header(headers, b"date"), now)
    return min(max(0.0, ((now if date is None else date) - modified) * fraction), HEURISTIC_MAX)


def build_entry(
    options: Options,
    answer: Answer,
    request_headers: Headers,
    target: RequestKeys,
    route: RouteOptions | None,
    now: float,
) -> tuple[str, Entry] | bool:
    """``(entry key, entry)`` for a complete, storable answer; ``True`` when it has no life.

    (``True``: remember the URL as hit-for-miss, as for any uncacheable answer.)
    """
    cc, targeted = response_directives(answer.headers, options.targets)
    # A targeted field replaces Expires as well as Cache-Control (RFC 9213 section 2.1).
    timing = [(k, v) for k, v in answer.headers if not targeted or k.lower() != b"expires"]
    default = route.ttl if route is not None and route.ttl is not None else options.ttl
    if default <= 0 and options.heuristic > 0:
        default = heuristic_lifetime(answer.status, cc, timing, options.heuristic, now)
    # Fresh for its lifetime less the age it arrived with (RFC 9111 section 4.2.3).
    age = initial_age(
        age=parse_age(header(answer.headers, b"age")),
        date=parse_http_date(header(answer.headers, b"date"), now),
        now=now,
    )
    ttl = freshness(cc, timing, default, now) - age
    if "no-cache" in cc:  # stored, but revalidated with the app on every use (5.2.2.4)
        ttl = 0.0
    swr, sie = stale_windows(cc, options.stale_while_revalidate, options.stale_if_error)
    origin_etag = header(answer.headers, b"etag") is not None
    revalidatable = origin_etag or header(answer.headers, b"last-modified") is not None
    if ttl <= 0 and swr <= 0 and sie <= 0 and not revalidatable:
        return True
    names = parse_vary(header(answer.headers, b"vary"))
    values = vary_values(names, request_headers, options.flow.encodings)
    connection = {
        name.strip().lower().encode("latin-1")
        for name in (header(answer.headers, b"connection") or "").split(",")
    }
    kept = [(k, v) for k, v in answer.headers if k.lower() not in _NOT_REPLAYED | connection]
    etag = header(answer.headers, b"etag")
    if etag is None:
        etag = content_etag(answer.body)
        kept.append((b"etag", etag.encode("latin-1")))
    entry = Entry(
        status=answer.status,
        headers=tuple(kept),
        body=answer.body,
        etag=etag,
        url=target.url,
        vary=values,
        shared_authorized="public" in cc or "s-maxage" in cc,
        created=now,
        expires=now + ttl,
        stale_while_revalidate=swr,
        stale_if_error=sie,
        age=age,
        origin_etag=origin_etag,
    )
    return target.variant_key(values), entry


async def collect(
    app: Callable[[Scope, Receive, Send], Awaitable[None]], scope: Scope, max_body_size: int
) -> Answer | None:
    """Run the app on a synthetic request; its complete answer, or ``None`` if too large."""
    start: Message = {}
    parts: list[bytes] = []
    size = 0
    complete = False
    sent_request = False

    async def receive() -> Message:
        nonlocal sent_request
        if not sent_request:
            sent_request = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # no disconnect ever comes; the timeout bounds the run
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        nonlocal size, complete
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            body = message.get("body", b"")
            size += len(body)
            if size <= max_body_size:
                parts.append(body)
            complete = not message.get("more_body", False)

    await app(scope, receive, send)
    if not start or not complete:
        raise RuntimeError("the app did not complete its response")
    if size > max_body_size:
        return None
    headers = tuple((bytes(k), bytes(v)) for k, v in start.get("headers", ()))
    return Answer(int(start["status"]), headers, b"".join(parts))
