"""Running the app for the cache: stream its answer to the client while keeping a copy.

:class:`Capture` is the send side of one request that goes to the app. Like Starlette's
``GZipResponder`` it holds back ``http.response.start``: until it knows whether the
response may be stored (decided from the status and headers), and, for a body that comes
in one message, until it can add a content-hash ``ETag`` and answer ``If-None-Match``
with a 304. Bodies sent in several messages (``more_body``) stream through as they come;
the copy is dropped as soon as it passes ``max_body_size``, or if the body never ends.
A response that may not be stored is reported at once through ``on_refusal``, so the
lease is released before a long (event-stream) body even starts.

With a ``fallback`` (a stale entry allowed by stale-if-error), a 5xx from the app, or an
exception before it started to answer, is replaced by the stale entry.

Usage::

    capture = Capture(send, decide=decide, on_refusal=release, max_body_size=1 << 20)
    await app(scope, receive, capture.send)
    if capture.complete and capture.storable: store(capture.answer())
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from cachekit.middleware.directives import Headers, etag_matches, header
from cachekit.middleware.entry import content_etag

__all__ = ["Answer", "Capture", "Message", "Receive", "Scope", "Send", "with_headers"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_NOT_MODIFIED_HEADERS = frozenset(
    {b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary", b"x-cache"}
)


@dataclass(frozen=True, slots=True)
class Answer:
    """A complete response from the app: what an entry is built from."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


def with_headers(message: Message, extra: Headers, drop: frozenset[bytes] = frozenset()) -> Message:
    """A copy of a ``http.response.start`` message with ``extra`` headers (``drop`` removed)."""
    headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() not in drop]
    return {**message, "headers": [*headers, *extra]}


def not_modified(headers: Headers, extra: Headers) -> Message:
    """A bodiless 304 carrying the validator and caching headers of ``headers``.

    It always has a ``Cache-Control``: the response's own, else ``no-cache``, which asks
    the client to keep revalidating, as it just did, rather than guess a lifetime.
    """
    kept = [(k, v) for k, v in headers if k.lower() in _NOT_MODIFIED_HEADERS]
    if not any(k.lower() == b"cache-control" for k, _ in kept):
        kept.append((b"cache-control", b"no-cache"))
    return {"type": "http.response.start", "status": 304, "headers": [*kept, *extra]}


class Capture:
    """The send callable given to the app for one request, keeping a storable copy.

    **Parameters:**

    * **send** - the client's send.
    * **decide** - ``(status, headers) -> refusal reason or None``, called once at start.
    * **on_refusal** - awaited with the reason when the response will not be stored
      (before anything reaches the client).
    * **max_body_size** - bytes kept at most; beyond, the copy is dropped.
    * **x_cache** - the ``X-Cache`` value to send (``MISS`` or ``BYPASS``).
    * **if_none_match** - the client's ``If-None-Match``, answered when it can be.
    * **fallback** - awaited with the client's send to serve a stale entry instead of a 5xx.
    """

    def __init__(
        self,
        send: Send,
        *,
        decide: Callable[[int, Headers], str | None],
        on_refusal: Callable[[str], Awaitable[None]],
        max_body_size: int,
        x_cache: bytes = b"MISS",
        if_none_match: str | None = None,
        fallback: Callable[[Send], Awaitable[None]] | None = None,
    ) -> None:
        self._send = send
        self._decide = decide
        self._on_refusal = on_refusal
        self._max = max_body_size
        self._x_cache = x_cache
        self._if_none_match = if_none_match
        self._fallback = fallback
        self._start: Message | None = None  # held back until we know how to send it
        self._parts: list[bytes] = []
        self._size = 0
        self.started = False  # the client has received the start
        self.replaced = False  # a stale entry was served instead of the app's answer
        self.storable = True
        self.complete = False
        self.refusal: str | None = None

    async def refuse(self, reason: str) -> None:
        """Stop keeping the copy, and report why (once)."""
        if self.storable:
            self.storable = False
            self.refusal = reason
            self._parts.clear()
            await self._on_refusal(reason)

    async def send(self, message: Message) -> None:
        """The ASGI send the app calls."""
        if self.replaced:
            return  # the stale entry has been served; the app's answer goes nowhere
        kind = message["type"]
        if kind == "http.response.start":
            status = int(message["status"])
            if status >= 500 and self._fallback is not None:
                self.replaced = True
                await self.refuse("status")
                await self._fallback(self._send)
                return
            self._start = message
            reason = self._decide(status, message.get("headers", ()))
            if reason is not None:
                await self.refuse(reason)
            return
        if kind != "http.response.body" or self._start is None:
            await self._send(message)  # trailers, extensions: not ours to judge
            return
        body: bytes = message.get("body", b"")
        more = bool(message.get("more_body", False))
        if self.storable:
            self._size += len(body)
            if self._size > self._max:
                await self.refuse("too-large")
            else:
                self._parts.append(body)
        if not self.started:
            await self._send_start(first_body=body, single=not more)
            if self._answered_not_modified:
                self.complete = not more
                return
        elif self._answered_not_modified:
            self.complete = not more
            return
        await self._send(message)
        self.complete = not more

    _answered_not_modified = False

    async def _send_start(self, *, first_body: bytes, single: bool) -> None:
        start = self._start
        assert start is not None
        headers: Headers = start.get("headers", ())
        extra: list[tuple[bytes, bytes]] = [(b"x-cache", self._x_cache)]
        etag = header(headers, b"etag")
        if etag is None and single and self.storable:
            etag = content_etag(first_body)  # the same value the stored entry will carry
            extra.append((b"etag", etag.encode("latin-1")))
        self.started = True
        if single and etag is not None and etag_matches(self._if_none_match, etag):
            self._answered_not_modified = True
            await self._send(not_modified(headers, extra))
            await self._send({"type": "http.response.body", "body": b""})
            return
        await self._send(with_headers(start, extra, frozenset({b"x-cache"})))

    async def finish(self) -> None:
        """After the app returned: a start it sent without any body still reaches the client."""
        if self._start is not None and not self.started and not self.replaced:
            self.started = True
            await self._send(with_headers(self._start, [(b"x-cache", self._x_cache)]))

    def answer(self) -> Answer:
        """The complete response, for storing (only when ``complete and storable``)."""
        start = self._start
        assert start is not None
        assert self.complete
        assert self.storable
        headers = tuple((bytes(k), bytes(v)) for k, v in start.get("headers", ()))
        return Answer(int(start["status"]), headers, b"".join(self._parts))
