"""The background refresh of a stale response (stale-while-revalidate).

A hit on a stale entry inside its stale-while-revalidate window is served at once;
:func:`spawn_refresh` then starts one refresh of it, fleet-wide (the lease of
:func:`~cachekit.middleware.flow.refresh`), running the app on a copy of the request
without the client's conditions, so that its answer is complete and storable.

Usage::

    await spawn_refresh(app, options, scope, binding, target, hit)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

from cachekit.drivers.binding import Binding
from cachekit.flow.effects import Flow, Spawn
from cachekit.middleware.capture import Answer, Receive, Scope, Send
from cachekit.middleware.directives import CONDITIONAL, Exchange, refusal
from cachekit.middleware.entry import Entry, RequestKeys
from cachekit.middleware.flow import Hit
from cachekit.middleware.options import Options, RouteOptions, route_options
from cachekit.middleware.storing import build_entry, collect
from cachekit.middleware.targeted import response_directives
from cachekit.middleware.writes import refresh
from cachekit.stats import LogOnce

__all__ = ["spawn_refresh"]

_log = LogOnce(logging.getLogger("cachekit"))
_REFRESH_TIMEOUT: Final = 60.0


async def spawn_refresh(
    app: Callable[[Scope, Receive, Send], Awaitable[None]],
    options: Options,
    request: Scope,
    binding: Binding,
    target: RequestKeys,
    hit: Hit,
) -> None:
    """Start one background refresh of ``hit``; never raises."""
    ctx = binding.ctx
    request_headers = request.get("headers") or []
    headers = [(k, v) for k, v in request_headers if k.lower() not in CONDITIONAL]
    scope: Scope = {**request, "method": "GET", "headers": headers}

    async def load() -> tuple[Answer | None, RouteOptions | None]:
        answer = await asyncio.wait_for(
            collect(app, scope, options.max_body_size), _REFRESH_TIMEOUT
        )
        return answer, route_options(scope)

    def build(result: Any) -> tuple[str, Entry] | bool:
        answer, route = result
        if answer is None:
            return True  # too large
        if (route is not None and not route.enabled) or (options.only_marked and route is None):
            return True
        exchange = Exchange(statuses=options.statuses, max_body_size=options.max_body_size)
        if answer.status >= 500:
            return False  # stale-if-error: keep serving what we have
        cc = response_directives(answer.headers, options.targets)[0]
        if refusal(answer.status, answer.headers, exchange, cc) is not None:
            return True
        return build_entry(options, answer, request_headers, target, route, ctx.clock.time())

    def spawn() -> Flow[None]:
        yield Spawn(hit.key, refresh(ctx, options.flow, target, hit, options.flow.lock_ttl, build))

    try:
        await binding.aio.drive(spawn(), load)
    except Exception as exc:
        _log.warning(
            ("http", "refresh", type(exc)), "cachekit: response cache refresh failed: %r", exc
        )
