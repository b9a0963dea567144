"""FastAPI: the recipe of the docs' FastAPI page (docs/guide/fastapi.md), run as a user runs it.

A decorated function called from a route with dependencies, a cached Pydantic model as the
route's ``response_model`` (a hit returns the model, not a dict), the response cache and
sessions as middleware, and ``configure()`` / ``close()`` in the lifespan.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import httpx
import pydantic
import pytest
from fastapi import Depends, FastAPI, HTTPException, Request

from cachekit import Cache
from cachekit.middleware import ResponseCacheMiddleware
from cachekit.sessions import RedisSessionStore, SessionMiddleware
from cachekit.testing import assert_hits


class Product(pydantic.BaseModel):
    id: int
    name: str
    price: float


DATABASE = {1: Product(id=1, name="Widget", price=9.5), 2: Product(id=2, name="Gadget", price=3)}


def currency(request: Request) -> str:
    """A dependency: FastAPI resolves postponed annotations in the module's globals."""
    return request.headers.get("x-currency", "EUR")


def build_app(url: str, prefix: str, loads: list[int]) -> tuple[FastAPI, Cache]:
    """The app of the recipe: ``cache = Cache()`` at import, configured in the lifespan."""
    cache = Cache()

    @cache.cached(ttl=60, key="product:{product_id}", null_ttl=10)
    async def get_product(product_id: int) -> Product | None:
        loads.append(product_id)
        return DATABASE.get(product_id)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        cache.configure(url, prefix=prefix)
        yield
        await cache.close()

    app = FastAPI(lifespan=lifespan)
    app.add_middleware(ResponseCacheMiddleware, cache=cache, ttl=30)
    app.add_middleware(SessionMiddleware, store=RedisSessionStore(cache))

    @app.get("/products/{product_id}", response_model=Product)
    async def read_product(product_id: int, cur: Annotated[str, Depends(currency)]) -> Product:
        product = await get_product(product_id)
        if product is None:
            raise HTTPException(status_code=404, detail="no such product")
        assert type(product) is Product  # hits too: the annotation is the schema
        return product

    @app.post("/cart/{product_id}")
    async def add(product_id: int, request: Request) -> dict[str, int]:
        cart = request.session.setdefault("cart", {})
        cart[str(product_id)] = cart.get(str(product_id), 0) + 1
        return dict(cart)

    @app.get("/cart")
    async def show(request: Request) -> dict[str, int]:
        return dict(request.session.get("cart", {}))

    app.state.get_product = get_product
    return app, cache


@pytest.fixture(params=["memory", "redis"])
def backend_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    return "memory://" if request.param == "memory" else redis_url


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan, through httpx's ASGI transport."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as client:
            yield client


async def test_cached_model_behind_response_model(backend_url: str, prefix: str) -> None:
    loads: list[int] = []
    app, cache = build_app(backend_url, prefix, loads)
    async with running(app) as client:
        first = await client.get("/products/1")
        assert first.status_code == 200
        assert first.json() == {"id": 1, "name": "Widget", "price": 9.5}
        assert first.headers["x-cache"] == "MISS"
        again = await client.get("/products/1")
        assert again.headers["x-cache"] == "HIT"  # the response cache answered
        # The decorated function on its own: a hit returns the model.
        with assert_hits(cache, hits=1, misses=0):
            hit = await app.state.get_product(1)
        assert hit == DATABASE[1]
        assert type(hit) is Product
        assert (await client.get("/products/3")).status_code == 404
        assert loads == [1, 3]


async def test_sessions_on_fastapi(backend_url: str, prefix: str) -> None:
    app, _ = build_app(backend_url, prefix, [])
    async with running(app) as client:
        assert (await client.post("/cart/1")).json() == {"1": 1}
        assert (await client.post("/cart/1")).json() == {"1": 2}
        assert (await client.get("/cart")).json() == {"1": 2}
        cookie = client.cookies.get("session")
        assert cookie is not None
    # Another client (no cookie) has an empty cart.
    app2, _ = build_app(backend_url, prefix, [])
    async with running(app2) as other:
        assert (await other.get("/cart")).json() == {}


async def test_lifespan_closes_and_reconfigures(prefix: str, redis_url: str) -> None:
    """Two lifespans in a row (a test client per test) each configure the cache anew."""
    loads: list[int] = []
    app, cache = build_app(redis_url, prefix, loads)
    for _ in range(2):
        async with running(app) as client:
            assert (await client.get("/products/2")).status_code == 200
    assert loads == [2]  # the second lifespan read what the first one stored
    assert cache.stats()["hits"] >= 1
