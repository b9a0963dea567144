"""``create_app(settings)``: the demo shop as a Starlette app, started by its lifespan.

:class:`~cachekit.sessions.SessionMiddleware` wraps the whole app (``request.session``
in Redis; the cookie holds only the id). :class:`~cachekit.middleware.ResponseCacheMiddleware`
wraps the ``/products`` listing routes, inside it, as it should sit inside
authentication (see :mod:`demo_app.product_routes`); requests carrying a cookie go around
it, so a visitor's session is never shared.

Usage::

    app = create_app(Settings(redis_url="redis://127.0.0.1:6379/0"))
    uvicorn.run(app)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route

from cachekit.sessions import RedisSessionStore, SessionMiddleware
from demo_app.cart_routes import cart_routes
from demo_app.dashboard import dashboard_endpoints
from demo_app.errors import HANDLERS
from demo_app.metrics import metrics_endpoint
from demo_app.pages import make_templates, page_routes
from demo_app.product_routes import product_routes
from demo_app.settings import Settings
from demo_app.shop import Shop

__all__ = ["create_app"]


def create_app(settings: Settings | None = None) -> Starlette:
    """The shop for ``settings`` (default: from the environment); no I/O until started.

    The lifespan starts the shop (embedded Valkey if needed, schema, seed, Bloom filter)
    and stops it on shutdown. ``app.state.shop`` is the :class:`~demo_app.shop.Shop`.
    """
    settings = settings if settings is not None else Settings.from_env()
    shop = Shop.build(settings)
    templates = make_templates()
    dashboard, dashboard_data = dashboard_endpoints(shop.sampler, templates, settings.protections)
    routes: list[BaseRoute] = [
        *page_routes(shop, templates),
        *product_routes(shop),
        *cart_routes(shop),
        Route("/dashboard", dashboard, methods=["GET"]),
        Route("/dashboard/data", dashboard_data, methods=["GET"]),
        Route("/metrics", metrics_endpoint(shop.registry), methods=["GET"]),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await shop.start()
        try:
            yield
        finally:
            await shop.stop()

    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(SessionMiddleware, store=RedisSessionStore(shop.cache)),
        ],
        exception_handlers=dict(HANDLERS),
        lifespan=lifespan,
    )
    app.state.shop = shop
    return app
