"""The cachekit demo shop: a Starlette shop on SQLAlchemy, cached with cachekit.

``python -m demo_app`` (or ``make demo``) serves it and prints its URL. With nothing
configured it starts an embedded Valkey server and a fresh SQLite database seeded with
10,000 products; ``REDIS_URL``, ``DATABASE_URL``, ``DB_LATENCY_MS``, ``SEED_PRODUCTS`` and
``PORT`` change that (see :mod:`demo_app.settings`).

What it shows: product reads through ``@cache.cached`` with every protection (Bloom gate,
null caching, lease lock, TTL jitter, stale-while-rebuild), catalog pages through the
response-cache middleware, a cart in a server-side session, writes that invalidate after
commit, ``/metrics`` for Prometheus and a live ``/dashboard``.

Usage::

    from demo_app import Settings, create_app

    app = create_app(Settings(redis_url="redis://127.0.0.1:6379/0", seed_products=1000))
"""

from demo_app.app import create_app
from demo_app.settings import Settings

__all__ = ["Settings", "create_app"]
