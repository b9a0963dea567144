"""One request through the response cache: :class:`Responder` decides, serves or records.

The middleware makes one :class:`Responder` per HTTP request and forgets it afterwards;
all state of a request lives here, none on the middleware (as Starlette's GZip
middleware does it). The order of business:

1. unsafe methods go to the app and, on a non-error status, invalidate their path before
   the response leaves (RFC 9111 section 4.4);
2. requests the cache must not answer or learn from (credential cookies, ``Range``,
   unkeyed override headers such as ``X-Forwarded-Host``, a body: ``Content-Length``
   above 0 or ``Transfer-Encoding``) go to the app: ``BYPASS``;
3. otherwise the lookup flow decides: a stored response (``HIT`` or ``STALE``, with
   ``Age``, a 304 for a matching ``If-None-Match``, no body for HEAD), or the app
   (``MISS``), whose response is stored if the rules allow.

Nothing the cache does can change a status: every cache failure ends in the app's own
answer, and the app's own exceptions propagate unchanged.

Usage::

    await Responder(middleware_state, scope, receive, send).run()
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Final

from cachekit.drivers.binding import Binding
from cachekit.exceptions import BackendError
from cachekit.middleware.background import spawn_refresh
from cachekit.middleware.batch import SharedReads
from cachekit.middleware.capture import (
    Capture,
    Message,
    Receive,
    Scope,
    Send,
    not_modified,
    with_headers,
)
from cachekit.middleware.directives import (
    CONDITIONAL,
    Exchange,
    Headers,
    etag_matches,
    header,
    parse_cache_control,
    refusal,
)
from cachekit.middleware.entry import Entry, RequestKeys, VaryValues
from cachekit.middleware.flow import (
    Ask,
    Direct,
    Hit,
    Lead,
    lookup,
)
from cachekit.middleware.invalidation import write_through
from cachekit.middleware.near import Read
from cachekit.middleware.options import UNSAFE_EXEMPT, Options, route_options
from cachekit.middleware.storing import build_entry, freshened
from cachekit.middleware.targeted import response_directives
from cachekit.middleware.writes import give_up, store
from cachekit.near.local import LocalCache
from cachekit.stats import LogOnce, Stats

__all__ = ["Responder", "State"]

logger = logging.getLogger("cachekit")
_log = LogOnce(logger)
# Refusals caused by the request, not by what the app answers for the URL: not remembered.
_REQUEST_REFUSALS: Final = frozenset({"not-stored", "request-no-store", "authorization"})
_MEMO_MAX: Final = 4096
_MEMO_URL_MAX: Final = 2048


def _bounded_put(memo: MutableMapping[Any, Any], key: Any, value: Any) -> None:
    if len(memo) >= _MEMO_MAX:
        memo.clear()  # a hint only: losing it costs a digest or one extra GET per URL
    memo[key] = value


@dataclass(frozen=True, slots=True)
class State:
    """What every responder of one middleware shares: app, cache, options, key guesses."""

    app: Callable[[Scope, Receive, Send], Awaitable[None]]
    bound: Callable[[], Binding]
    stats: Stats  # the cache's, reachable even while it is not configured
    options: Options
    guesses: MutableMapping[str, tuple[VaryValues, str]]  # URL record key -> its last variant
    targets: MutableMapping[tuple[Any, ...], RequestKeys]  # request URL parts -> its keys
    reads: SharedReads = field(default_factory=SharedReads)  # concurrent requests' reads


def _cache_failed(what: str, exc: BaseException) -> None:
    _log.warning(("http", what, type(exc)), "cachekit: response cache %s failed: %r", what, exc)


class Responder:
    """The cache's handling of one HTTP request (see the module docstring)."""

    def __init__(self, state: State, scope: Scope, receive: Receive, send: Send) -> None:
        self.state = state
        self.options = state.options
        self.scope = scope
        self.receive = receive
        self.send = send
        self.headers: Headers = scope.get("headers") or []
        self.seen: dict[bytes, list[bytes]] = {}  # by lower-case name, filled by _must_bypass

    async def run(self) -> None:
        method = self.scope.get("method", "GET")
        if method not in UNSAFE_EXEMPT:
            await write_through(
                self.state.app,
                self.state.bound,
                self.options.flow,
                self.scope,
                self.receive,
                self.send,
            )
            return
        if method not in ("GET", "HEAD") or self._must_bypass():
            await self._bypass()
            return
        try:
            binding = self.state.bound()
            target = self._target(binding)
            near = binding.local if self.options.near else None
            guess = self.state.guesses.get(target.record) or ((), target.variant_key(()))
            read = None
            if near is None and self.options.share_reads:
                read = await self.state.reads.read(
                    binding.aio, self.options.flow, target, guess[1], self.state.stats
                )
            outcome = await binding.aio.drive(
                lookup(binding.ctx, self.options.flow, self._ask(target, near, guess, read))
            )
        except Exception as exc:  # the cache must never fail a request: serve it uncached
            _cache_failed("lookup", exc)
            await self._bypass()
            return
        if isinstance(outcome, Hit):
            self._remember(target, outcome.entry, outcome.key)
            await self._serve(binding, outcome.entry, stale=outcome.stale)
            if outcome.refresh:
                await spawn_refresh(
                    self.state.app, self.options, self.scope, binding, target, outcome
                )
            return
        await self._run_app(binding, target, outcome)

    # ---------------------------------------------------------------- the request

    def _must_bypass(self) -> bool:
        """Whether the cache must stay out of this request; also indexes its headers."""
        options, seen = self.options, self.seen
        for name, value in self.headers:
            lowered = name.lower()
            if lowered in options.bypass_headers or lowered == b"range":
                return True
            # A GET with a body: the key ignores the body, the app may not (issue 16).
            if lowered == b"transfer-encoding" or (
                lowered == b"content-length" and value.strip() not in (b"0", b"")
            ):
                return True
            if lowered == b"cookie" and self._credential_cookie(value):
                return True
            seen.setdefault(lowered, []).append(value)
        return False

    def _header(self, name: bytes) -> str | None:
        """:func:`~cachekit.middleware.directives.header` from the index (GET and HEAD)."""
        values = self.seen.get(name)
        return None if values is None else b", ".join(values).decode("latin-1")

    def _credential_cookie(self, value: bytes) -> bool:
        names = self.options.credential_cookies
        if names == "*":
            return bool(value.strip())
        for pair in value.decode("latin-1").split(";"):
            if pair.partition("=")[0].strip() in names:
                return True
        return False

    def _request_cc(self) -> dict[str, str | None]:
        return parse_cache_control(header(self.headers, b"cache-control"))

    def _target(self, binding: Binding) -> RequestKeys:
        scope = self.scope
        host = self._header(b"host")
        if host is None:
            server = scope.get("server") or ("", None)
            host = f"{server[0]}:{server[1]}" if server[1] else str(server[0])
        path = str(scope.get("path", "/"))
        raw_path = bytes(scope.get("raw_path") or path.encode("utf-8", "surrogateescape"))
        extra = (
            b"".join(
                b"\n%s=%s"
                % (
                    name.encode("latin-1"),
                    (self._header(name.encode("latin-1")) or "").encode("latin-1"),
                )
                for name in self.options.key_headers
            )
            if self.options.key_headers
            else b""
        )
        keyspace, query = binding.ctx.keyspace, bytes(scope.get("query_string", b""))
        scheme = str(scope.get("scheme", "http"))
        # The keys are digests, so a URL seen recently reuses its RequestKeys; long URLs are
        # not remembered, which bounds the memo's memory.
        memo_key = (keyspace.prefix, scheme, host, raw_path, query, path, extra)
        target = self.state.targets.get(memo_key)
        if target is None:
            target = RequestKeys.of(
                keyspace, scheme, host.encode("latin-1"), raw_path, query, path, extra
            )
            if len(target.url) <= _MEMO_URL_MAX:
                _bounded_put(self.state.targets, memo_key, target)
        return target

    def _ask(
        self,
        target: RequestKeys,
        near: LocalCache | None,
        guess: tuple[VaryValues, str],
        read: Read | BackendError | None,
    ) -> Ask:
        seen = self.seen  # most requests carry neither field: nothing to parse
        cc = parse_cache_control(self._header(b"cache-control")) if b"cache-control" in seen else {}
        reload = self.options.client_refresh and (
            "no-cache" in cc or "no-cache" in (self._header(b"pragma") or "").lower()
        )
        get = self.scope.get("method") == "GET"
        return Ask(
            target=target,
            headers=self.headers,
            authorized=b"authorization" in seen,
            # HEAD and no-store requests never store, so they must not lead either.
            coalesce=get and self.options.coalesce and "no-store" not in cc,
            guess=guess,
            reload=reload,
            near=near,
            read=read,
        )

    def _remember(self, target: RequestKeys, entry: Entry, key: str) -> None:
        guess = self.state.guesses.get(target.record)
        if guess is None or guess[1] != key:
            _bounded_put(self.state.guesses, target.record, (entry.vary, key))

    # ---------------------------------------------------------------- answers

    async def _bypass(self) -> None:
        self.state.stats.incr("http_bypasses")

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = with_headers(message, [(b"x-cache", b"BYPASS")], frozenset({b"x-cache"}))
            await self.send(message)

        await self.state.app(self.scope, self.receive, send)

    async def _serve(self, binding: Binding, entry: Entry, *, stale: bool) -> None:
        await self._send_entry(self.send, binding, entry, stale=stale)

    async def _send_entry(
        self,
        send: Send,
        binding: Binding,
        entry: Entry,
        *,
        stale: bool,
        label: bytes | None = None,
        extra: Headers = (),
    ) -> None:
        age = entry.current_age(binding.ctx.clock.time())
        label = label or (b"STALE" if stale else b"HIT")
        extra = [(b"x-cache", label), (b"age", b"%d" % age), *extra]
        if b"if-none-match" in self.seen and etag_matches(
            self._header(b"if-none-match"), entry.etag
        ):
            await send(not_modified(entry.headers, extra))
            await send({"type": "http.response.body", "body": b""})
            return
        headers = [*entry.headers, *extra]
        await send({"type": "http.response.start", "status": entry.status, "headers": headers})
        body = b"" if self.scope.get("method") == "HEAD" else entry.body
        await send({"type": "http.response.body", "body": body})

    async def _run_app(self, binding: Binding, target: RequestKeys, outcome: Lead | Direct) -> None:
        ctx, options = binding.ctx, self.options
        lead = outcome if isinstance(outcome, Lead) else None
        storing = lead is not None or (isinstance(outcome, Direct) and outcome.store)
        storing = (
            storing and self.scope.get("method") == "GET" and "no-store" not in self._request_cc()
        )
        stamp = outcome.stamp
        failed = isinstance(outcome, Direct) and outcome.failed
        if failed:
            self.state.stats.incr("http_bypasses")  # Redis failed: the cache was not consulted
        scope = self.scope
        seen = outcome.seen
        # A stored response with validators is revalidated: the app may answer 304.
        validators = seen.validators() if storing and seen is not None else []
        if validators or (storing and any(name.lower() in CONDITIONAL for name, _ in self.headers)):
            # The app must answer in full (or 304 to our own validators) so there is
            # something to store; we answer the client's condition ourselves.
            headers = [(k, v) for k, v in self.headers if k.lower() not in CONDITIONAL]
            scope = {**self.scope, "headers": [*headers, *validators]}
        gave_up = False

        async def release(remember: bool) -> None:
            nonlocal gave_up
            if not gave_up:
                gave_up = True
                try:
                    await binding.aio.drive(
                        give_up(ctx, options.flow, target, stamp, lead, remember)
                    )
                except Exception as exc:
                    _cache_failed("release", exc)

        def decide(status: int, headers: Headers) -> str | None:
            route = route_options(scope)
            if (route is not None and not route.enabled) or (options.only_marked and route is None):
                return "route"
            if not storing:
                return "not-stored"
            exchange = Exchange(
                authorized=header(self.headers, b"authorization") is not None,
                shareable_authorized=options.share_authorized
                or (route is not None and route.share_authorized),
                statuses=options.statuses,
                max_body_size=options.max_body_size,
            )
            return refusal(
                status, headers, exchange, response_directives(headers, options.targets)[0]
            )

        async def refused(reason: str) -> None:
            await release(remember=storing and reason not in _REQUEST_REFUSALS)

        fallback = None
        if seen is not None and ctx.clock.time() < seen.expires + seen.stale_if_error:
            stale_entry = seen

            async def fallback_send(send: Send) -> None:
                ctx.stats.incr("stale_hits")
                await self._send_entry(send, binding, stale_entry, stale=True)

            fallback = fallback_send
        capture = Capture(
            self.send,
            decide=decide,
            on_refusal=refused,
            max_body_size=options.max_body_size,
            x_cache=b"BYPASS" if failed else b"MISS",
            if_none_match=header(self.headers, b"if-none-match") if storing else None,
            fallback=fallback,
        )
        not_modified: list[Headers] = []

        async def app_send(message: Message) -> None:
            if not_modified:
                return  # the 304's (empty) body
            start = message["type"] == "http.response.start"
            if validators and start and int(message["status"]) == 304:
                not_modified.append(list(message.get("headers", ())))
                return
            await capture.send(message)

        try:
            await self.state.app(scope, self.receive, app_send)
        except Exception:
            await release(remember=False)
            if capture.replaced:
                return
            if fallback is not None and not capture.started:
                await fallback(self.send)  # stale-if-error: the app failed, the copy did not
                return
            raise
        if not_modified and seen is not None:
            await self._freshen(binding, target, seen, not_modified[0], stamp, lead, release)
            return
        await capture.finish()
        if gave_up or not capture.storable:
            return
        if not capture.complete:
            await release(remember=False)  # an aborted body is never stored
            return
        try:
            built = build_entry(
                options,
                capture.answer(),
                self.headers,
                target,
                route_options(scope),
                ctx.clock.time(),
            )
            if isinstance(built, bool):
                await release(remember=built)
                return
            key, entry = built
            await binding.aio.drive(store(ctx, target, key, entry, stamp, lead))
            self._remember(target, entry, key)
        except Exception as exc:
            _cache_failed("store", exc)
            await release(remember=False)

    async def _freshen(
        self,
        binding: Binding,
        target: RequestKeys,
        seen: Entry,
        headers: Headers,
        stamp: int,
        lead: Lead | None,
        release: Callable[[bool], Awaitable[None]],
    ) -> None:
        """The app said 304 to our validators: update, store and serve the stored response."""
        ctx = binding.ctx
        ctx.stats.incr("http_revalidations")
        entry = seen
        try:
            built = build_entry(
                self.options,
                freshened(seen, headers),
                self.headers,
                target,
                route_options(self.scope),
                ctx.clock.time(),
            )
            if isinstance(built, bool):
                await release(False)
            else:
                key, entry = built
                await binding.aio.drive(store(ctx, target, key, entry, stamp, lead))
                self._remember(target, entry, key)
        except Exception as exc:
            _cache_failed("store", exc)
            await release(False)
        # Set-Cookie of the 304 is for this client only: sent, never stored.
        cookies = [(k, v) for k, v in headers if k.lower() == b"set-cookie"]
        await self._send_entry(
            self.send, binding, entry, stale=False, label=b"REVALIDATED", extra=cookies
        )
