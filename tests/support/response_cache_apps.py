"""A small Starlette app for the response-cache tests, and a client driving it in-process.

Every route counts its calls, so a test can tell a response the app made from one the
cache replayed. Routes take their behaviour from the query string where that keeps the
app small (``?cc=...`` sets Cache-Control, ``?vary=...`` sets Vary).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from cachekit import Cache
from cachekit.middleware import ResponseCacheMiddleware, cacheable, never_cache

BASE_URL = "http://shop.test"


class Shop:
    """The app under test and how often each of its routes ran."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.delay = 0.0
        self.fail = False
        self.version = 0
        self.called = asyncio.Event()  # set by every route's first line

    def routes(self) -> list[Route]:
        return [
            Route("/page", self.page, methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]),
            Route("/slow", self.page),
            Route("/me", self.me),
            Route("/cookie", self.cookie),
            Route("/big", self.big),
            Route("/chunks", self.chunks),
            Route("/events", self.events),
            Route("/broken", self.broken),
            Route("/status/{code:int}", self.status),
            Route("/marked", self.marked),
            Route("/unmarked", self.unmarked),
            Route("/secret", self.secret),
            Route("/text", self.text),
        ]

    def _count(self, request: Request) -> int:
        self.called.set()
        self.calls[request.url.path] += 1
        return self.calls[request.url.path]

    def _headers(self, request: Request) -> dict[str, str]:
        headers = {}
        if cc := request.query_params.get("cc"):
            headers["cache-control"] = cc
        if vary := request.query_params.get("vary"):
            headers["vary"] = vary
        return headers

    async def page(self, request: Request) -> Response:
        n = self._count(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            return PlainTextResponse("app down", status_code=503)
        lang = request.headers.get("x-lang", "")
        body = f"page {request.url.path} {request.url.query} v{self.version} #{n} {lang}"
        return PlainTextResponse(body, headers=self._headers(request))

    async def me(self, request: Request) -> Response:
        self._count(request)
        who = request.headers.get("authorization", "anonymous")
        return PlainTextResponse(f"profile of {who}", headers=self._headers(request))

    async def cookie(self, request: Request) -> Response:
        n = self._count(request)
        response = PlainTextResponse(f"welcome #{n}")
        response.set_cookie("sid", f"secret-{n}")
        return response

    async def big(self, request: Request) -> Response:
        self._count(request)
        return Response(b"x" * int(request.query_params.get("size", "5000")))

    async def chunks(self, request: Request) -> Response:
        n = self._count(request)
        fail = request.query_params.get("abort") == "1"

        async def body() -> AsyncIterator[bytes]:
            for i in range(4):
                if fail and i == 2:
                    raise RuntimeError("the app gave up half way")
                yield f"chunk {i} of call {n};".encode()

        return StreamingResponse(body(), media_type="text/plain")

    async def events(self, request: Request) -> Response:
        n = self._count(request)

        async def body() -> AsyncIterator[bytes]:
            yield f"data: event of call {n}\n\n".encode()

        return StreamingResponse(body(), media_type="text/event-stream")

    async def broken(self, request: Request) -> Response:
        self._count(request)
        if self.fail:
            raise RuntimeError("the app broke")
        return PlainTextResponse(f"fine v{self.version}", headers=self._headers(request))

    async def status(self, request: Request) -> Response:
        self._count(request)
        code = int(request.path_params["code"])
        return PlainTextResponse(f"status {code}", status_code=code)

    @cacheable(ttl=120)
    async def marked(self, request: Request) -> Response:
        n = self._count(request)
        return PlainTextResponse(f"marked #{n}")

    async def unmarked(self, request: Request) -> Response:
        n = self._count(request)
        return PlainTextResponse(f"unmarked #{n}")

    @never_cache
    async def secret(self, request: Request) -> Response:
        n = self._count(request)
        return PlainTextResponse(f"secret #{n}")

    async def text(self, request: Request) -> Response:
        n = self._count(request)
        # A compressing origin declares Vary on every variant (RFC 9110 12.5.5), identity
        # too; Starlette's GZipMiddleware does so itself only from 0.46 on.
        return PlainTextResponse(
            f"{'lorem ipsum ' * 100} #{n}", headers={"Vary": "Accept-Encoding"}
        )


def build_app(shop: Shop, cache: Cache, *, gzip: bool = False, **options: Any) -> Starlette:
    """The shop behind the response cache (and, inside it, optionally GZip)."""
    middleware = [Middleware(ResponseCacheMiddleware, cache=cache, **options)]
    if gzip:
        middleware.append(Middleware(GZipMiddleware, minimum_size=10))
    return Starlette(routes=shop.routes(), middleware=middleware)


@asynccontextmanager
async def client_for(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client that calls ``app`` in-process."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
        yield client
