"""A forwarding ASGI app under ``ResponseCacheMiddleware``: the cache the suite tests.

Every request goes to the suite's origin server (``CONFORMANCE_ORIGIN``) as it came, and
its answer comes back as the origin sent it, so what the suite sees is the middleware's
behaviour alone. The middleware runs with the documented "follow the origin" options
(:data:`FOLLOW_THE_ORIGIN`). The cache is ``CONFORMANCE_CACHE_URL`` (default
``memory://``, private to this process: every run starts cold).

Usage::

    CONFORMANCE_ORIGIN=http://127.0.0.1:8000 python loadtests/conformance/app.py 8080
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Final

import httpx

# Run as a script: the repository's cachekit, not an installed one, is the one tested.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from cachekit import Cache, LocalCache
from cachekit.middleware import ResponseCacheMiddleware
from cachekit.middleware.capture import Message, Receive, Scope, Send

__all__ = ["FOLLOW_THE_ORIGIN", "app", "forward"]

FOLLOW_THE_ORIGIN: Final[dict[str, Any]] = {
    "ttl": None,
    "statuses": tuple(s for s in range(200, 600) if s not in (206, 304)),
    "credential_cookies": (),
    "share_authorized": True,
    "client_refresh": True,
}
"""The options of a standards-following shared cache (README, "Following the origin")."""

_HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
    }
)

_origin = os.environ.get("CONFORMANCE_ORIGIN", "http://127.0.0.1:8000").rstrip("/")
# A new connection per request: the origin closes idle ones, and a request sent on a
# connection it just closed fails (a 502 here, a flaky score).
_client = httpx.AsyncClient(timeout=30.0, limits=httpx.Limits(max_keepalive_connections=0))


async def forward(scope: Scope, receive: Receive, send: Send) -> None:
    """Send the request to the origin unchanged; send its answer back unchanged."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message: Message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    target = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string", b"")
    url = _origin + target.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
    headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP_BY_HOP]
    request = _client.build_request(scope["method"], url, content=body)
    # Only what the client sent (httpx adds Accept-Encoding, User-Agent ... by default).
    request.headers = httpx.Headers([*headers, (b"host", request.url.netloc)])
    if body:
        request.headers["content-length"] = str(len(body))
    try:
        response = await _client.send(request, stream=True)
    except httpx.HTTPError:
        await send({"type": "http.response.start", "status": 502, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    try:
        content = b"".join([part async for part in response.aiter_raw()])
    except httpx.HTTPError:
        content = None
    finally:
        await response.aclose()
    if content is None:  # the origin closed mid-body: so do we
        raise ConnectionError("origin closed the connection")
    # Connection stays: it tells the cache which headers not to store (RFC 9110 7.6.1).
    out = [
        (k.lower(), v)
        for k, v in response.headers.raw
        if k.lower() == b"connection" or k.lower() not in _HOP_BY_HOP
    ]
    await send({"type": "http.response.start", "status": response.status_code, "headers": out})
    await send({"type": "http.response.body", "body": content})


# CONFORMANCE_NEAR=1: the cache gets a near cache, so hot responses are served from it.
_local = LocalCache(max_entries=1000, ttl=5) if os.environ.get("CONFORMANCE_NEAR") else None
_cache = Cache.from_url(os.environ.get("CONFORMANCE_CACHE_URL", "memory://"), local=_local)
app = ResponseCacheMiddleware(forward, cache=_cache, **FOLLOW_THE_ORIGIN)


if __name__ == "__main__":
    import uvicorn

    # No Date or Server of uvicorn's own: the origin's pass through, as a proxy's would.
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_level="warning",
        date_header=False,
        server_header=False,
    )
