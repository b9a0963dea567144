"""The cart and the login: a server-side session holds who the visitor is.

The cart's owner is ``user:<name>`` once logged in, else an anonymous id
(``anon:<random>``) kept in the session, created by the first change of the cart (a
visitor who only looks gets no session and no cookie). Logging in merges the anonymous
cart into the user's (summed, committed in SQL) and then regenerates the session id, so
an id planted before login is worthless after it.

Bodies are checked by cachekit's ``CartLimits`` before any I/O (422 on bad input); a SKU
must name a product of the catalog (checked through the cached product read). A cart
database outage is a 503 with nothing changed.

Routes: ``GET /cart``, ``POST /cart/items`` ``{"sku", "qty"}``, ``PATCH /cart/items/{sku}``
``{"qty"}``, ``DELETE /cart/items/{sku}``, ``POST /login`` ``{"user"}``, ``POST /logout``.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cachekit.sessions import load_session, regenerate_session
from demo_app.db import id_of_sku
from demo_app.errors import InvalidInput, parse_object
from demo_app.shop import Shop

__all__ = ["cart_owner", "cart_routes", "current_user", "ensure_cart_owner"]

_USER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


async def current_user(request: Request) -> str | None:
    """The logged-in user's name, or ``None``."""
    session = await load_session(request)
    user = session.get("user")
    return user if isinstance(user, str) else None


async def cart_owner(request: Request) -> str | None:
    """Whose cart this request sees: the user's, the anonymous one, or none yet."""
    session = await load_session(request)
    user = session.get("user")
    if isinstance(user, str):
        return f"user:{user}"
    anonymous = session.get("anon")
    return anonymous if isinstance(anonymous, str) else None


async def ensure_cart_owner(request: Request) -> str:
    """:func:`cart_owner`, making an anonymous owner (and so a session) when there is none."""
    owner = await cart_owner(request)
    if owner is None:
        owner = f"anon:{secrets.token_urlsafe(16)}"
        request.session["anon"] = owner  # loaded by cart_owner: no I/O here
    return owner


def cart_routes(shop: Shop) -> list[Route]:
    """The JSON cart, login and logout routes of ``shop``."""
    carts, catalog = shop.carts, shop.catalog
    limits = carts.limits

    async def known(sku: str) -> str:
        product_id = id_of_sku(sku)
        if product_id is None or await catalog.product(product_id) is None:
            raise InvalidInput(f"no product has the SKU {sku!r}")
        return sku

    async def answer(request: Request, items: dict[str, int]) -> Response:
        return JSONResponse({"user": await current_user(request), "items": items})

    async def get_cart(request: Request) -> Response:
        owner = await cart_owner(request)
        return await answer(request, {} if owner is None else await carts.get(owner))

    async def add_item(request: Request) -> Response:
        sku, qty = limits.line(await request.body())
        await known(sku)
        owner = await ensure_cart_owner(request)
        return await answer(request, await carts.add(owner, sku, qty))

    async def set_item(request: Request) -> Response:
        sku, qty = limits.line(await request.body(), sku=request.path_params["sku"])
        await known(sku)
        owner = await ensure_cart_owner(request)
        return await answer(request, await carts.set(owner, sku, qty))

    async def remove_item(request: Request) -> Response:
        sku = limits.sku(request.path_params["sku"])
        owner = await cart_owner(request)
        return await answer(request, {} if owner is None else await carts.remove(owner, sku))

    async def login(request: Request) -> Response:
        user = _user(parse_object(await request.body(), allowed={"user"}))
        session = await load_session(request)
        anonymous = session.get("anon")
        target = f"user:{user}"
        # Merge first: if the cart's database is down the login fails with nothing
        # changed, session included. The merge empties the source in the same
        # transaction, so a retried login adds nothing twice.
        if isinstance(anonymous, str):
            items = await carts.merge(anonymous, target)
        else:
            items = await carts.get(target)
        await regenerate_session(request)
        session.pop("anon", None)
        session["user"] = user
        return JSONResponse({"user": user, "items": items})

    async def logout(request: Request) -> Response:
        session = await load_session(request)
        session.clear()
        return JSONResponse({"user": None, "items": {}})

    return [
        Route("/cart", get_cart, methods=["GET"]),
        Route("/cart/items", add_item, methods=["POST"]),
        Route("/cart/items/{sku}", set_item, methods=["PATCH"]),
        Route("/cart/items/{sku}", remove_item, methods=["DELETE"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]


def _user(data: dict[str, Any]) -> str:
    user = data.get("user")
    if type(user) is not str or not _USER.fullmatch(user):
        raise InvalidInput("user must be 1 to 64 letters, digits, '.', '_', '@' or '-'")
    return user
