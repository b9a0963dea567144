"""The product JSON API: reads through the cache, writes that invalidate after commit.

* ``GET /products?page=N`` - a catalog page, stored whole by the response-cache
  middleware (``X-Cache: MISS``, then ``HIT``). The middleware wraps the ``/products``
  routes only, not the whole app: it must look in Redis before the router has picked an
  endpoint, so around the whole app every other GET (a product id, a page, the
  dashboard's poll) would pay a lookup and count as a miss, even with ``only_marked``.
* ``GET /products/{id}`` - one product through :attr:`Catalog.product` (Bloom gate, null
  caching, lease lock, jitter, stale-while-rebuild); 404 when there is none.
* ``POST /products``, ``PUT /products/{id}``, ``DELETE /products/{id}`` - writes. After the
  commit, ``invalidate_on_commit`` drops ``product:<id>`` and the ``catalog`` tag and adds
  a new id to the Bloom filter. The middleware invalidates the stored responses of the
  path written to: a POST to ``/products`` refreshes the listing by itself; a PUT or
  DELETE on ``/products/5`` purges ``/products`` explicitly.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, Router

from cachekit.middleware import ResponseCacheMiddleware, cacheable, purge
from demo_app.catalog import parse_page, parse_product
from demo_app.db import MAX_ID
from demo_app.shop import Shop

__all__ = ["product_routes"]


def _missing(product_id: int) -> Response:
    return JSONResponse({"error": f"no product {product_id}"}, status_code=404)


def product_routes(shop: Shop) -> list[BaseRoute]:
    """The JSON product routes of ``shop``."""
    catalog, cache = shop.catalog, shop.cache

    @cacheable(ttl=shop.settings.listing_ttl)
    async def list_products(request: Request) -> Response:
        number = parse_page(request.query_params.get("page"))
        return JSONResponse(await catalog.page(number))

    async def create_product(request: Request) -> Response:
        product = await catalog.create(parse_product(await request.body(), partial=False))
        location = f"/products/{product['id']}"
        return JSONResponse(product, status_code=201, headers={"Location": location})

    async def get_product(request: Request) -> Response:
        product_id: int = request.path_params["product_id"]
        # Ids beyond an INTEGER column never exist; the database would reject the query.
        product = await catalog.product(product_id) if product_id <= MAX_ID else None
        return _missing(product_id) if product is None else JSONResponse(product)

    async def update_product(request: Request) -> Response:
        product_id: int = request.path_params["product_id"]
        product = await catalog.update(
            product_id, parse_product(await request.body(), partial=True)
        )
        if product is None:
            return _missing(product_id)
        await purge(cache, "/products")
        return JSONResponse(product)

    async def delete_product(request: Request) -> Response:
        product_id: int = request.path_params["product_id"]
        if not await catalog.delete(product_id):
            return _missing(product_id)
        await purge(cache, "/products")
        return Response(status_code=204)

    listing = Router(
        [
            Route("/products", list_products, methods=["GET"]),
            Route("/products", create_product, methods=["POST"]),
        ]
    )
    # A successful POST to /products invalidates the stored pages of /products by itself.
    listing_cache = ResponseCacheMiddleware(listing, cache=cache, ttl=shop.settings.listing_ttl)
    return [
        Route("/products", listing_cache),
        Route("/products/{product_id:int}", get_product, methods=["GET"]),
        Route("/products/{product_id:int}", update_product, methods=["PUT"]),
        Route("/products/{product_id:int}", delete_product, methods=["DELETE"]),
    ]
