"""The demo shop (issue 9): every route through httpx, metrics, dashboard, ``make demo``.

Each test builds the app with ``create_app`` on the shared test Redis (under the test's own
key prefix) and the test database (``DATABASE_URL``: PostgreSQL in CI, else SQLite), starts
it through its lifespan and drives it in-process with ``httpx.ASGITransport``. The product
table is shared by the tests of a run (seeded once, when empty): a test that writes works
on a product it created itself. Carts persist in SQL, so each test logs in as a user of
its own.

The slow test runs ``make demo`` into a fresh virtualenv with nothing configured (embedded
Valkey, a fresh SQLite file, 10,000 products), waits for the printed URL, fetches the
catalog, stops the demo and checks that its Valkey server is gone.
"""

from __future__ import annotations

import asyncio
import math
import os
import queue
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from cachekit import Cache, CartUnavailable
from cachekit.contrib.prometheus import CacheCollector
from cachekit.exceptions import ConfigurationError
from demo_app import Settings, create_app
from demo_app.db import id_of_sku, sku_of
from demo_app.pages import pagination
from demo_app.settings import PROTECTIONS, async_database_url
from demo_app.shop import Shop
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
SEED = 60
ABSENT = 2_000_000_000  # a valid id no product will ever have in a test run


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def settings(redis_url: str, prefix: str, async_database_url: str) -> Settings:
    """A small shop on the test servers, under this test's key prefix."""
    return Settings(
        redis_url=redis_url,
        database_url=async_database_url,
        prefix=prefix,
        seed_products=SEED,
        bloom_capacity=20_000,
        sample_interval=0.05,
    )


async def _started(settings: Settings) -> AsyncIterator[Starlette]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Starlette]:
    async for started in _started(settings):
        yield started


def client_for(app: Starlette) -> httpx.AsyncClient:
    """A client of the app, in-process; it keeps the session cookie like a browser."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://shop.test")


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app) as c:
        yield c


def shop_of(app: Starlette) -> Shop:
    shop = app.state.shop
    assert isinstance(shop, Shop)
    return shop


def stats(app: Starlette) -> dict[str, int]:
    return shop_of(app).cache.stats()


def queries(app: Starlette) -> int:
    return shop_of(app).queries.count


def unique_user() -> str:
    return f"u{uuid.uuid4().hex[:12]}"


async def new_product(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    body = {"name": "Test Teapot", "price_cents": 1234, "stock": 3, **fields}
    response = await client.post("/products", json=body)
    assert response.status_code == 201, response.text
    product: dict[str, Any] = response.json()
    assert response.headers["location"] == f"/products/{product['id']}"
    return product


async def last_page(client: httpx.AsyncClient) -> int:
    pages: int = (await client.get("/products?page=1")).json()["pages"]
    return pages


# --------------------------------------------------------------------------- products


async def test_a_product_as_json_is_read_through_the_cache(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    first = await client.get("/products/42")
    assert first.status_code == 200
    assert first.json() == {
        "id": 42,
        "sku": "SKU-000042",
        "name": first.json()["name"],
        "description": first.json()["description"],
        "price_cents": first.json()["price_cents"],
        "stock": first.json()["stock"],
    }
    before, sql = stats(app), queries(app)
    second = await client.get("/products/42")
    assert second.json() == first.json()
    assert stats(app)["hits"] == before["hits"] + 1
    assert queries(app) == sql  # a hit costs the database nothing


async def test_a_missing_product_is_404_and_the_bloom_filter_answers_it(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    before, sql = stats(app), queries(app)
    response = await client.get(f"/products/{ABSENT}")
    assert response.status_code == 404
    assert response.json() == {"error": f"no product {ABSENT}"}
    after = stats(app)
    assert after["bloom_rejects"] == before["bloom_rejects"] + 1
    assert after["loads"] == before["loads"]
    assert after["misses"] == before["misses"]  # not even a Redis GET
    assert queries(app) == sql
    assert (await client.get("/products/99999999999")).status_code == 404  # beyond INTEGER
    assert (await client.get("/products/abc")).status_code == 404


async def test_a_deleted_product_is_null_cached(app: Starlette, client: httpx.AsyncClient) -> None:
    product = await new_product(client)
    assert (await client.delete(f"/products/{product['id']}")).status_code == 204
    # Still in the Bloom filter (it cannot forget): one load finds nothing and caches that.
    assert (await client.get(f"/products/{product['id']}")).status_code == 404
    before, sql = stats(app), queries(app)
    assert (await client.get(f"/products/{product['id']}")).status_code == 404
    assert stats(app)["null_hits"] == before["null_hits"] + 1
    assert queries(app) == sql


async def test_an_expired_product_is_served_stale_while_one_rebuild_runs(
    settings: Settings,
) -> None:
    async for app in _started(replace(settings, product_ttl=0.2, product_stale=30)):
        async with client_for(app) as client:
            first = (await client.get("/products/7")).json()
            await asyncio.sleep(0.35)  # past the TTL (jittered ±10 %), inside the stale window
            before = stats(app)
            assert (await client.get("/products/7")).json() == first
            assert stats(app)["stale_hits"] == before["stale_hits"] + 1
            for _ in range(100):  # the rebuild runs in the background
                if stats(app)["rebuilds"] > before["rebuilds"]:
                    break
                await asyncio.sleep(0.02)
            assert stats(app)["rebuilds"] == before["rebuilds"] + 1


async def test_the_catalog_listing_is_stored_by_the_response_cache(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    first = await client.get("/products?page=2")
    second = await client.get("/products?page=2")
    assert first.status_code == second.status_code == 200
    assert first.headers["x-cache"] == "MISS"
    assert second.headers["x-cache"] == "HIT"
    assert second.json() == first.json()
    page = first.json()
    assert page["page"] == 2
    assert page["per_page"] == 24
    assert [item["id"] for item in page["items"]] == list(range(25, 49))
    assert page["pages"] == math.ceil(page["total"] / 24)
    # Only the listing passes through the response cache.
    assert "x-cache" not in (await client.get("/products/1")).headers


@pytest.mark.parametrize("query", ["page=0", "page=abc", "page=-1", "page=1000001", "page=²"])
async def test_a_bad_page_number_is_422(client: httpx.AsyncClient, query: str) -> None:
    response = await client.get(f"/products?{query}")
    assert response.status_code == 422
    assert "page" in response.json()["error"]


async def test_a_new_product_is_readable_at_once_despite_the_bloom_filter(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    listing = (await client.get("/products?page=1")).json()
    assert (await client.get("/products?page=1")).headers["x-cache"] == "HIT"
    rejects = stats(app)["bloom_rejects"]
    product = await new_product(client, name="Brand New Kettle", description="shiny")
    assert product["sku"] == sku_of(product["id"])
    read = await client.get(f"/products/{product['id']}")
    assert read.status_code == 200
    assert read.json() == product
    assert stats(app)["bloom_rejects"] == rejects  # the commit added it to the filter
    # The POST to /products invalidated the stored listing by itself.
    after = await client.get("/products?page=1")
    assert after.headers["x-cache"] == "MISS"
    assert after.json()["total"] == listing["total"] + 1


async def test_put_invalidates_the_product_and_the_listing(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    product = await new_product(client)
    url = f"/products/{product['id']}"
    await client.get(url)
    assert (await client.get(url)).json()["price_cents"] == 1234  # cached now
    last = f"/products?page={await last_page(client)}"
    await client.get(last)
    assert (await client.get(last)).headers["x-cache"] == "HIT"

    response = await client.put(url, json={"price_cents": 999, "name": "Renamed"})
    assert response.status_code == 200
    assert response.json() == {**product, "price_cents": 999, "name": "Renamed"}
    assert (await client.get(url)).json() == response.json()
    listed = await client.get(last)
    assert listed.headers["x-cache"] == "MISS"
    assert response.json() in listed.json()["items"]
    # The HTML page reads the same entries.
    assert "Renamed" in (await client.get(f"/product/{product['id']}")).text


async def test_delete_invalidates_the_product_and_the_listing(client: httpx.AsyncClient) -> None:
    product = await new_product(client)
    url = f"/products/{product['id']}"
    assert (await client.get(url)).status_code == 200
    total = (await client.get("/products?page=1")).json()["total"]
    response = await client.delete(url)
    assert response.status_code == 204
    assert (await client.get(url)).status_code == 404
    listed = await client.get("/products?page=1")
    assert listed.headers["x-cache"] == "MISS"
    assert listed.json()["total"] == total - 1
    assert (await client.delete(url)).status_code == 404
    assert (await client.put(url, json={"stock": 1})).status_code == 404


@pytest.mark.parametrize(
    ("method", "body"),
    [
        ("POST", b"not json"),
        ("POST", b"[1, 2]"),
        ("POST", b'{"name": "x"}'),
        ("POST", b'{"name": "", "price_cents": 1}'),
        ("POST", b'{"name": "x", "price_cents": true}'),
        ("POST", b'{"name": "x", "price_cents": -1}'),
        ("POST", b'{"name": "x", "price_cents": 1.5}'),
        ("POST", b'{"name": "x", "price_cents": 1, "id": 5}'),
        ("POST", b'{"name": "\\u0000", "price_cents": 1}'),
        ("POST", b'{"name": "' + b"x" * 5000 + b'", "price_cents": 1}'),
        ("PUT", b"{}"),
        ("PUT", b'{"stock": "7"}'),
    ],
)
async def test_bad_product_input_is_422(
    client: httpx.AsyncClient, method: str, body: bytes
) -> None:
    url = "/products" if method == "POST" else "/products/1"
    response = await client.request(method, url, content=body)
    assert response.status_code == 422
    assert response.json()["error"]


# --------------------------------------------------------------------------- HTML pages


async def test_the_catalog_page(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    product = (await client.get("/products/1")).json()
    assert product["name"] in response.text
    assert 'href="/?page=2"' in response.text
    second = await client.get("/?page=2")
    assert 'class="current">2<' in second.text
    assert 'href="/?page=1"' in second.text
    assert (await client.get("/?page=100000")).status_code == 404
    assert (await client.get("/?page=x")).status_code == 422


async def test_the_product_page_escapes_what_it_shows(client: httpx.AsyncClient) -> None:
    product = await new_product(client, name="<script>alert(1)</script>")
    response = await client.get(f"/product/{product['id']}")
    assert response.status_code == 200
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in response.text
    assert "<script>alert(1)" not in response.text
    assert product["sku"] in response.text
    missing = await client.get(f"/product/{ABSENT}")
    assert missing.status_code == 404
    assert "Not found" in missing.text


async def test_the_cart_page(client: httpx.AsyncClient) -> None:
    empty = await client.get("/cart/view")
    assert empty.status_code == 200
    assert "Your cart is empty" in empty.text
    await client.post("/cart/items", json={"sku": "SKU-000003", "qty": 2})
    product = (await client.get("/products/3")).json()
    page = await client.get("/cart/view")
    assert product["name"] in page.text
    assert f"${2 * product['price_cents'] / 100:,.2f}" in page.text  # the total
    assert "Cart (2)" in page.text


def test_pagination_links() -> None:
    assert pagination(1, 1) == [1]
    assert pagination(1, 3) == [1, 2, 3]
    assert pagination(7, 20) == [1, None, 5, 6, 7, 8, 9, None, 20]
    assert pagination(20, 20) == [1, None, 18, 19, 20]


# --------------------------------------------------------------------------- cart


async def test_cart_add_patch_delete_get_through_the_session_cookie(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    empty = await client.get("/cart")
    assert empty.json() == {"user": None, "items": {}}
    assert "set-cookie" not in empty.headers  # looking creates no session

    added = await client.post("/cart/items", json={"sku": "SKU-000001", "qty": 2})
    assert added.status_code == 200
    assert added.json() == {"user": None, "items": {"SKU-000001": 2}}
    assert "session" in client.cookies
    sid = client.cookies["session"]
    await client.post("/cart/items", json={"sku": "SKU-000001", "qty": 1})
    await client.post("/cart/items", json={"sku": "SKU-000002", "qty": 5})
    patched = await client.patch("/cart/items/SKU-000002", json={"qty": 4})
    assert patched.json()["items"] == {"SKU-000001": 3, "SKU-000002": 4}
    deleted = await client.delete("/cart/items/SKU-000001")
    assert deleted.json()["items"] == {"SKU-000002": 4}
    assert (await client.get("/cart")).json() == {"user": None, "items": {"SKU-000002": 4}}
    assert client.cookies["session"] == sid  # one anonymous session throughout

    # Another visitor sees a cart of their own.
    async with client_for(app) as stranger:
        assert (await stranger.get("/cart")).json()["items"] == {}


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("POST", "/cart/items", b'{"sku": "SKU-000001", "qty": 0}'),
        ("POST", "/cart/items", b'{"sku": "SKU-000001", "qty": 1000}'),
        ("POST", "/cart/items", b'{"sku": "SKU-000001", "qty": "2"}'),
        ("POST", "/cart/items", b'{"sku": "SKU-000001", "qty": true}'),
        ("POST", "/cart/items", b'{"sku": "SKU-000001", "qty": 1.5}'),
        ("POST", "/cart/items", b'{"sku": "bad sku!", "qty": 1}'),
        ("POST", "/cart/items", b'{"sku": "SKU-1", "qty": 1}'),  # not the canonical SKU
        ("POST", "/cart/items", f'{{"sku": "{sku_of(ABSENT)}", "qty": 1}}'.encode()),
        ("POST", "/cart/items", b'{"sku": "SKU-000001"}'),
        ("POST", "/cart/items", b'{"sku": "SKU-000001", "qty": 1, "x": 1}'),
        ("POST", "/cart/items", b"[]"),
        ("POST", "/cart/items", b"nope"),
        ("POST", "/cart/items", b'{"sku": "SKU-000001", "qty": 1, "pad": "' + b"x" * 2000 + b'"}'),
        ("PATCH", "/cart/items/SKU-000001", b'{"qty": -1}'),
        ("PATCH", "/cart/items/SKU-000001", b'{"sku": "SKU-000001", "qty": 1}'),
        ("PATCH", "/cart/items/not%20a%20sku", b'{"qty": 1}'),
        ("DELETE", "/cart/items/not%20a%20sku", b""),
        ("POST", "/login", b'{"user": ""}'),
        ("POST", "/login", b'{"user": "a b"}'),
        ("POST", "/login", b'{"user": 5}'),
        ("POST", "/login", b'{"name": "alice"}'),
    ],
)
async def test_bad_cart_input_is_422(
    app: Starlette, client: httpx.AsyncClient, method: str, url: str, body: bytes
) -> None:
    sql = queries(app)
    response = await client.request(method, url, content=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]
    assert "set-cookie" not in response.headers
    assert queries(app) <= sql + 1  # nothing written (at most the SKU's product read)


async def test_login_merges_the_anonymous_cart_and_regenerates_the_session(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    user = unique_user()
    # The user's cart from an earlier visit.
    async with client_for(app) as earlier:
        assert (await earlier.post("/login", json={"user": user})).json()["items"] == {}
        await earlier.post("/cart/items", json={"sku": "SKU-000005", "qty": 1})

    await client.post("/cart/items", json={"sku": "SKU-000005", "qty": 2})
    await client.post("/cart/items", json={"sku": "SKU-000006", "qty": 1})
    anonymous_sid = client.cookies["session"]

    response = await client.post("/login", json={"user": user})
    assert response.status_code == 200
    assert response.json() == {"user": user, "items": {"SKU-000005": 3, "SKU-000006": 1}}
    assert client.cookies["session"] != anonymous_sid  # a new id: fixation defeated
    assert (await client.get("/cart")).json() == response.json()

    # The old id names nothing any more.
    async with client_for(app) as attacker:
        attacker.cookies.set("session", anonymous_sid, domain="shop.test")
        assert (await attacker.get("/cart")).json() == {"user": None, "items": {}}

    # A retried login adds nothing twice.
    again = await client.post("/login", json={"user": user})
    assert again.json()["items"] == {"SKU-000005": 3, "SKU-000006": 1}


async def test_logout_ends_the_session(app: Starlette, client: httpx.AsyncClient) -> None:
    user = unique_user()
    await client.post("/login", json={"user": user})
    await client.post("/cart/items", json={"sku": "SKU-000009", "qty": 1})
    sid = client.cookies["session"]

    response = await client.post("/logout")
    assert response.status_code == 200
    assert response.json() == {"user": None, "items": {}}
    assert "Max-Age=0" in response.headers["set-cookie"]
    assert "session" not in client.cookies
    assert (await client.get("/cart")).json() == {"user": None, "items": {}}
    async with client_for(app) as replay:
        replay.cookies.set("session", sid, domain="shop.test")
        assert (await replay.get("/cart")).json()["user"] is None
    # The cart is the user's, kept for the next login.
    assert (await client.post("/login", json={"user": user})).json()["items"] == {"SKU-000009": 1}


async def test_a_cart_database_outage_is_503(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async for app in _started(settings):
        carts = shop_of(app).carts

        async def down(*args: object) -> object:
            raise CartUnavailable("the cart database failed, nothing was changed")

        monkeypatch.setattr(carts.sql, "arun", down)
        async with client_for(app) as client:
            response = await client.post("/cart/items", json={"sku": "SKU-000001", "qty": 1})
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"
        assert "nothing was changed" in response.json()["error"]


# --------------------------------------------------------------------------- metrics


async def test_metrics_parse_and_count_after_traffic(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    for product_id in (1, 1, 2, ABSENT):
        await client.get(f"/products/{product_id}")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    values = {s.name: s.value for f in families.values() for s in f.samples}
    for name in stats(app):
        assert families[f"cachekit_{name}"].type == "counter"
        assert f"cachekit_{name}_total" in values
    assert values["cachekit_hits_total"] >= 1
    assert values["cachekit_bloom_rejects_total"] >= 1
    assert values["demo_db_queries_total"] > 0
    assert values["demo_db_queries_total"] == queries(app)


def test_the_collector_reads_stats_with_labels_and_checks_names() -> None:
    cache = Cache.from_url("memory://")
    cache.sync.get("absent")
    registry = CollectorRegistry()
    registry.register(CacheCollector(cache, namespace="shop", labels={"cache": "main"}))
    text = generate_latest(registry).decode()
    assert 'shop_misses_total{cache="main"} 1.0' in text
    assert "# HELP shop_hits_total Reads answered by a fresh cached value." in text
    with pytest.raises(ValueError, match="Duplicated"):
        registry.register(CacheCollector(cache, namespace="shop"))
    with pytest.raises(ConfigurationError):
        CacheCollector(cache, namespace="bad-name")
    with pytest.raises(ConfigurationError):
        CacheCollector(cache, labels={"__reserved": "x"})


async def test_two_apps_in_one_process_keep_their_own_metrics_and_caches(
    settings: Settings, prefix: str
) -> None:
    async for first in _started(settings):
        async for second in _started(replace(settings, prefix=f"{prefix}:b")):
            async with client_for(first) as a, client_for(second) as b:
                product = await new_product(a)
                await b.get(f"/products/{product['id']}")  # cached in b's cache
                await a.put(f"/products/{product['id']}", json={"stock": 99})
                assert stats(second)["hits"] == 0  # a's write and reads never touched b
                metrics_b = (await b.get("/metrics")).text
                assert "cachekit_hits_total 0.0" in metrics_b


# --------------------------------------------------------------------------- dashboard


async def test_the_dashboard_and_its_data(app: Starlette, client: httpx.AsyncClient) -> None:
    page = await client.get("/dashboard")
    assert page.status_code == 200
    for element in ("hit-ratio", "db-qps", "c-bloom_rejects", "c-stale_hits", "c-lock_waits"):
        assert f'id="{element}"' in page.text
    assert "/dashboard/data" in page.text
    for product_id in (3, 3, 3, ABSENT):
        await client.get(f"/products/{product_id}")
    await asyncio.sleep(0.2)  # a few samples (every 0.05 s in these tests)
    data = (await client.get("/dashboard/data")).json()
    assert set(stats(app)) <= set(data["counters"])
    assert data["counters"]["hits"] >= 2
    assert data["counters"]["bloom_rejects"] >= 1
    assert 0 < data["hit_ratio"] <= 1
    assert data["db_queries"] > 0
    assert data["rates"]["db_queries"] >= 0
    assert data["history"]
    assert set(data["history"][0]) == {"db_qps", "lookups", "hit_ratio"}


async def test_without_protections_the_shop_is_a_plain_ttl_cache(settings: Settings) -> None:
    async for app in _started(replace(settings, protections=frozenset())):
        async with client_for(app) as client:
            for _ in range(2):
                assert (await client.get(f"/products/{ABSENT}")).status_code == 404
            assert stats(app)["bloom_rejects"] == 0
            assert stats(app)["null_hits"] == 0
            assert stats(app)["loads"] == 2  # every lookup of a missing id reaches the database
            page = await client.get("/dashboard")
            assert "nothing (a plain TTL cache)" in page.text


# --------------------------------------------------------------------------- settings


def test_settings_from_the_environment() -> None:
    assert Settings.from_env({}) == Settings()
    s = Settings.from_env(
        {
            "PORT": "9000",
            "REDIS_URL": "redis://r:6379/1",
            "DATABASE_URL": "",
            "DB_LATENCY_MS": "2.5",
            "SEED_PRODUCTS": "1_000",
        }
    )
    assert (s.port, s.redis_url, s.database_url) == (9000, "redis://r:6379/1", None)
    assert (s.db_latency_ms, s.seed_products) == (2.5, 1000)
    with pytest.raises(ValueError, match="PORT"):
        Settings.from_env({"PORT": "http"})
    with pytest.raises(ValueError, match="SEED_PRODUCTS"):
        Settings.from_env({"SEED_PRODUCTS": "-1"})
    assert Settings.from_env({"DEMO_PROTECTIONS": "none"}).protections == frozenset()
    assert Settings.from_env({"DEMO_PROTECTIONS": "all"}).protections == PROTECTIONS
    assert Settings.from_env({"DEMO_PROTECTIONS": "Bloom, lock"}).protections == {"bloom", "lock"}
    with pytest.raises(ValueError, match="DEMO_PROTECTIONS"):
        Settings.from_env({"DEMO_PROTECTIONS": "bloom,magic"})
    assert Settings(host="0.0.0.0").public_url == "http://127.0.0.1:8000"  # noqa: S104
    assert async_database_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert async_database_url("sqlite:///x.db") == "sqlite+aiosqlite:///x.db"
    assert async_database_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"


def test_skus_name_products_in_one_spelling_only() -> None:
    assert sku_of(42) == "SKU-000042"
    assert id_of_sku("SKU-000042") == 42
    assert id_of_sku("SKU-1234567") == 1234567
    for other in ("SKU-42", "SKU-0000042", "sku-000042", "SKU-000000", "x"):
        assert id_of_sku(other) is None


async def test_db_latency_delays_every_statement(settings: Settings) -> None:
    async for app in _started(replace(settings, db_latency_ms=30)):
        async with client_for(app) as client:
            started = time.perf_counter()
            assert (await client.get("/products/11")).status_code == 200  # a miss: one SELECT
            cold = time.perf_counter() - started
            started = time.perf_counter()
            await client.get("/products/11")
            warm = time.perf_counter() - started
        assert cold >= 0.03
        assert warm < cold


# --------------------------------------------------------------------------- make demo


def _lines(stream: IO[str], into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line)


def _processes_in_group(pgid: int) -> dict[int, str]:
    """``{pid: command line}`` of the live processes of a process group."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, group = fields[0], int(fields[2])
        if group == pgid and state != "Z":
            found[int(entry.name)] = cmdline
    return found


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


@pytest.fixture
def make_demo(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str]]]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    # A fresh virtualenv, as on a user's first `make demo` (pip's cache keeps it quick).
    env.update(PORT=str(free_port()), PYTHONUNBUFFERED="1", VENV=str(tmp_path / "venv"))
    for name in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "SEED_PRODUCTS", "DB_LATENCY_MS"):
        env.pop(name, None)
    with (tmp_path / "stderr.txt").open("w") as stderr:
        process = subprocess.Popen(
            ["make", "--no-print-directory", "demo"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,  # its own process group, to find and clean up its children
        )
    assert process.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=_lines, args=(process.stdout, lines), daemon=True)
    reader.start()
    try:
        yield process, lines
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        reader.join(timeout=10)
        process.stdout.close()


@pytest.mark.slow
@pytest.mark.timeout(600)  # builds a virtualenv and installs the project first
def test_make_demo_serves_with_nothing_configured(
    make_demo: tuple[subprocess.Popen[str], queue.Queue[str]], tmp_path: Path
) -> None:
    process, lines = make_demo
    seen: list[str] = []
    deadline = time.monotonic() + 580
    while not any(line.startswith("cachekit demo: ") for line in seen):
        assert process.poll() is None, (seen, (tmp_path / "stderr.txt").read_text())
        assert time.monotonic() < deadline, seen
        try:
            seen.append(lines.get(timeout=0.5))
        except queue.Empty:
            continue
    url = next(line for line in seen if line.startswith("cachekit demo: ")).split(": ", 1)[1]
    url = url.strip()
    assert url.startswith("http://127.0.0.1:")

    catalog = httpx.get(url + "/", timeout=10)
    assert catalog.status_code == 200
    assert "10,000 products" in catalog.text
    assert httpx.get(url + "/products/10000", timeout=10).json()["sku"] == "SKU-010000"

    group = _processes_in_group(process.pid)
    valkeys = [pid for pid, cmd in group.items() if "valkey-server" in cmd]
    demos = [pid for pid, cmd in group.items() if "-m demo_app" in cmd]
    assert len(valkeys) == 1, group
    assert len(demos) == 1, group
    # Stop the demo itself (as a service manager would): its shutdown stops Valkey.
    os.kill(demos[0], signal.SIGTERM)
    process.wait(timeout=30)
    for _ in range(50):
        if _gone(valkeys[0]):
            break
        time.sleep(0.1)
    assert _gone(valkeys[0])
    assert not _processes_in_group(process.pid)
    rest = [lines.get_nowait() for _ in range(lines.qsize())]
    assert sum(line.startswith("cachekit demo:") for line in seen + rest) == 1
