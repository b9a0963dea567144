"""The demo's configuration: a frozen value object, read from the environment once.

=================  ==========================================================  ==============
variable           meaning                                                     default
=================  ==========================================================  ==============
``PORT``           TCP port to serve on                                        8000
``HOST``           address to bind                                             127.0.0.1
``REDIS_URL``      the Redis or Valkey to cache in                             an embedded
                                                                               Valkey server
``DATABASE_URL``   SQLAlchemy URL (``postgresql+psycopg://...``, or            a new SQLite
                   ``sqlite+aiosqlite:///shop.db``); a bare ``postgresql://``  file in a temp
                   or ``sqlite://`` gets the async driver                      dir
``DB_LATENCY_MS``  simulated latency added to every SQL statement              0
``SEED_PRODUCTS``  catalog size when the product table is empty                10000
``CACHE_PREFIX``   first segment of every Redis key                            demo
``PRODUCT_TTL``    seconds a product stays fresh in the cache                  60
``PRODUCT_STALE``  seconds after that a stale product is served while one      30
                   rebuild runs
``LISTING_TTL``    seconds a catalog page stays fresh                          30
``DEMO_PROTECTIONS`` which protections product reads use: ``all``, ``none``   all
                   (a plain TTL cache) or a comma-separated list of
                   ``bloom``, ``null``, ``lock``, ``jitter``, ``stale``
=================  ==========================================================  ==============

Usage::

    settings = Settings.from_env()
    settings = Settings(redis_url="redis://127.0.0.1:6379/0", seed_products=100)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["PROTECTIONS", "Settings", "async_database_url", "parse_protections"]

T = TypeVar("T", int, float)

PROTECTIONS: frozenset[str] = frozenset({"bloom", "null", "lock", "jitter", "stale"})
"""What product reads can be protected by: the Bloom gate, null caching, the lease lock,
TTL jitter and stale-while-rebuild (logical expiry)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything the demo shop can be told; see the module table for the variables.

    ``redis_url=None`` starts an embedded Valkey server; ``database_url=None`` creates a
    fresh SQLite file in a temporary directory, removed at shutdown.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    redis_url: str | None = None
    database_url: str | None = None
    db_latency_ms: float = 0.0
    seed_products: int = 10_000
    prefix: str = "demo"
    product_ttl: float = 60.0
    product_stale: float = 30.0
    product_null_ttl: float = 10.0
    listing_ttl: float = 30.0
    page_size: int = 24
    bloom_capacity: int = 1_000_000
    bloom_error_rate: float = 0.001
    sample_interval: float = 1.0
    protections: frozenset[str] = PROTECTIONS

    def __post_init__(self) -> None:
        unknown = self.protections - PROTECTIONS
        if unknown:
            raise ValueError(f"unknown protections {sorted(unknown)}; known: {sorted(PROTECTIONS)}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"PORT must be 0-65535, not {self.port}")
        if self.db_latency_ms < 0 or self.seed_products < 0:
            raise ValueError("DB_LATENCY_MS and SEED_PRODUCTS must not be negative")
        if min(self.product_ttl, self.listing_ttl, self.sample_interval) <= 0:
            raise ValueError("PRODUCT_TTL and LISTING_TTL must be positive")
        if self.product_stale < 0:
            raise ValueError("PRODUCT_STALE must not be negative")
        if self.page_size < 1:
            raise ValueError("page_size must be at least 1")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``environ`` (default ``os.environ``); empty values count as unset.

        Raises ``ValueError`` naming the variable when a value does not parse.
        """
        env = {k: v for k, v in (os.environ if environ is None else environ).items() if v}
        base = cls()
        return cls(
            host=env.get("HOST", base.host),
            port=_number(env, "PORT", int, base.port),
            redis_url=env.get("REDIS_URL"),
            database_url=env.get("DATABASE_URL"),
            db_latency_ms=_number(env, "DB_LATENCY_MS", float, base.db_latency_ms),
            seed_products=_number(env, "SEED_PRODUCTS", int, base.seed_products),
            prefix=env.get("CACHE_PREFIX", base.prefix),
            product_ttl=_number(env, "PRODUCT_TTL", float, base.product_ttl),
            product_stale=_number(env, "PRODUCT_STALE", float, base.product_stale),
            listing_ttl=_number(env, "LISTING_TTL", float, base.listing_ttl),
            protections=parse_protections(env.get("DEMO_PROTECTIONS", "all")),
        )

    @property
    def public_url(self) -> str:
        """Where a browser on this machine reaches the shop."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host  # noqa: S104
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"


def _number(env: Mapping[str, str], name: str, kind: Callable[[str], T], default: T) -> T:
    raw = env.get(name)
    if raw is None:
        return default
    try:
        return kind(raw.replace("_", ""))
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None


def parse_protections(value: str) -> frozenset[str]:
    """``all``, ``none`` or a comma-separated list of :data:`PROTECTIONS`.

    Usage::

        parse_protections("bloom, lock")      # frozenset({'bloom', 'lock'})
    """
    words = {word.strip().lower() for word in value.split(",") if word.strip()}
    if words == {"all"}:
        return PROTECTIONS
    if words in ({"none"}, set()):
        return frozenset()
    if not words <= PROTECTIONS:
        raise ValueError(
            f"DEMO_PROTECTIONS={value!r}: use all, none or some of {', '.join(sorted(PROTECTIONS))}"
        )
    return frozenset(words)


def async_database_url(url: str) -> str:
    """``url`` with an async driver: aiosqlite for SQLite, psycopg 3 for PostgreSQL.

    Usage::

        async_database_url("postgresql://postgres@db/shop")  # 'postgresql+psycopg://...'
    """
    for bare, driver in (
        ("postgresql://", "postgresql+psycopg://"),
        ("postgres://", "postgresql+psycopg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(bare):
            return driver + url[len(bare) :]
    return url
