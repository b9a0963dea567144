"""The shop's HTML pages (Jinja2, autoescaped): catalog, product, cart.

The pages read through the same cached functions as the JSON API, so browsing them
moves the dashboard's counters too. Buttons call the JSON API with a few lines of
``fetch`` (in ``base.html``) and reload.

Routes: ``GET /`` (``?page=N``), ``GET /product/{id}``, ``GET /cart/view``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from demo_app.cart_routes import cart_owner, current_user
from demo_app.catalog import parse_page
from demo_app.db import MAX_ID, id_of_sku
from demo_app.shop import Shop

__all__ = ["TEMPLATES_DIR", "make_templates", "page_routes", "pagination"]

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"


def make_templates() -> Jinja2Templates:
    """Templates from ``demo_app/templates`` with autoescaping on for every file."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a typo in a template fails loudly in the tests
    )
    env.filters["money"] = lambda cents: f"${cents / 100:,.2f}"
    return Jinja2Templates(env=env)


def pagination(page: int, pages: int, *, around: int = 2) -> list[int | None]:
    """The page numbers to link: first, last and ``around`` either side (``None``: a gap).

    Usage::

        pagination(7, 20)      # [1, None, 5, 6, 7, 8, 9, None, 20]
    """
    shown = {1, pages, *range(max(1, page - around), min(pages, page + around) + 1)}
    links: list[int | None] = []
    for number in sorted(shown):
        if links and links[-1] is not None and number - links[-1] > 1:
            links.append(None)
        links.append(number)
    return links


def page_routes(shop: Shop, templates: Jinja2Templates) -> list[Route]:
    """The HTML routes of ``shop``."""
    catalog, carts = shop.catalog, shop.carts

    async def render(
        request: Request, name: str, context: dict[str, Any], status: int = 200
    ) -> Response:
        owner = await cart_owner(request)
        items = {} if owner is None else await carts.get(owner)
        context = {
            "user": await current_user(request),
            "cart_count": sum(items.values()),
            **context,
        }
        return templates.TemplateResponse(request, name, context, status_code=status)

    async def catalog_page(request: Request) -> Response:
        number = parse_page(request.query_params.get("page"))
        data = await catalog.page(number)
        status = 200 if number <= data["pages"] else 404
        context = {"title": "Catalog", "data": data, "links": pagination(number, data["pages"])}
        return await render(request, "catalog.html", context, status)

    async def product_page(request: Request) -> Response:
        product_id: int = request.path_params["product_id"]
        product = await catalog.product(product_id) if product_id <= MAX_ID else None
        title = "Not found" if product is None else product["name"]
        context = {"title": title, "product": product, "product_id": product_id}
        return await render(request, "product.html", context, 200 if product else 404)

    async def cart_page(request: Request) -> Response:
        owner = await cart_owner(request)
        items = {} if owner is None else await carts.get(owner)
        lines: list[dict[str, Any]] = []
        for sku, qty in sorted(items.items()):
            product_id = id_of_sku(sku)
            product = None if product_id is None else await catalog.product(product_id)
            lines.append({"sku": sku, "qty": qty, "product": product})
        total = sum(
            line["qty"] * line["product"]["price_cents"] for line in lines if line["product"]
        )
        return await render(request, "cart.html", {"title": "Cart", "lines": lines, "total": total})

    return [
        Route("/", catalog_page, methods=["GET"]),
        Route("/product/{product_id:int}", product_page, methods=["GET"]),
        Route("/cart/view", cart_page, methods=["GET"]),
    ]
