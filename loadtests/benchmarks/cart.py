"""Cart and session benchmark: what Redis in front of SQL buys per request, and what a
session read costs.

What it measures
----------------
Requests to small Starlette apps, driven in-process through ``httpx.ASGITransport`` (the
same client and framework cost for every contender), in one run:

cart (``DB_LATENCY_MS`` of simulated latency before every SQL statement, default 5)
    * **sql get** / **sql add** - a cart kept only in SQL: ``GET /cart`` reads the
      tables, ``POST /cart/items`` runs the same transaction cachekit's store runs
      (``CartTables``), with no Redis at all;
    * **cachekit get** / **cachekit add** - ``CartStore``: reads served by the Redis
      copy, adds committed in SQL and then written to Redis.

session (no database)
    * **no sessions** - a JSON route with no session middleware;
    * **sessions, untouched** - ``SessionMiddleware`` installed, the route never reads the
      session (it must cost nothing: the record is loaded lazily);
    * **session read** - the route awaits ``load_session(request)`` with a live session
      cookie: one Redis round trip (which also restarts the idle timeout).

How
---
Every contender is warmed up, then ``--rounds`` rounds run; in each, every contender of a
group serves ``--requests`` requests from ``--concurrency`` concurrent clients, in an
order that rotates from round to round. A contender's figures are the medians over rounds
of its throughput and mean latency, and p50/p99 over all its requests. Only ratios within
the same run mean anything. Targets: a cart get at least 5x faster than SQL's.

The run checks what it measured: the SQL statements counted per request (so the Redis
path really skipped SQL on reads), every add is in SQL and in Redis at the end, and every
session-read request really saw its session.

Usage::

    .venv/bin/python -m loadtests cart
    DB_LATENCY_MS=5 .venv/bin/python -m loadtests cart --rounds 5 --requests 400 \\
        --json loadtests/results/cart.json

``REDIS_URL`` and ``DATABASE_URL`` pick the servers (default: a private embedded Valkey
and a SQLite file in a temporary directory).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx
import redis
from sqlalchemy import Engine, MetaData, select
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cachekit import Cache, InvalidCartInput
from cachekit.sessions import CartStore, RedisSessionStore, SessionMiddleware, load_session
from cachekit.sessions.cart_rules import Add, CartLimits
from cachekit.sessions.cart_sql import CartSql
from loadtests.harness.args import bench_parser, parse, write_json
from loadtests.harness.rounds import rotation
from loadtests.harness.servers import delete_run_keys, redis_server
from loadtests.harness.simdb import counted_engine
from loadtests.harness.tables import environment, environment_line, percentile, text_table

TARGET_GET = 5.0  # cachekit's cart get at least this many times faster than SQL's
SKUS = 150  # distinct SKUs one client adds per round (under the 200 limit)


@dataclass
class Result:
    """What one contender measured over every round."""

    name: str
    group: str
    throughput: list[float] = field(default_factory=list)
    means: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    statements: int = 0
    requests: int = 0

    def row(self, baseline: Result) -> dict[str, str]:
        mean = statistics.median(self.means)
        return {
            "contender": self.name,
            "req/s": f"{statistics.median(self.throughput):,.0f}",
            "mean ms": f"{mean * 1e3:.2f}",
            "p50 ms": f"{percentile(self.latencies, 50) * 1e3:.2f}",
            "p99 ms": f"{percentile(self.latencies, 99) * 1e3:.2f}",
            "SQL/request": f"{self.statements / max(1, self.requests):.2f}",
            "vs baseline": f"{statistics.median(baseline.means) / mean:.2f}x faster",
        }


Call = Callable[[httpx.AsyncClient, int], Awaitable[None]]


@dataclass
class Contender:
    """A named way of serving one kind of request."""

    name: str
    group: str
    client: httpx.AsyncClient
    call: Call
    reset: Callable[[], Awaitable[None]] | None = None


def cart_apps(cache: Cache, engine: Engine, metadata: MetaData) -> tuple[Starlette, Starlette]:
    """The cachekit cart app and the SQL-only app: the same routes, the same SQL."""
    cart = CartStore(cache, engine, metadata=metadata)
    tables, sql, limits = cart.tables, CartSql(engine), CartLimits()

    async def kit_get(request: Request) -> JSONResponse:
        return JSONResponse(await cart.get(request.path_params["owner"]))

    async def kit_add(request: Request) -> JSONResponse:
        try:
            sku, qty = limits.line(await request.body())
            return JSONResponse(await cart.add(request.path_params["owner"], sku, qty))
        except InvalidCartInput as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)

    async def sql_get(request: Request) -> JSONResponse:
        record = await sql.arun(partial(tables.read, owner=request.path_params["owner"]))
        return JSONResponse(record.items)

    async def sql_add(request: Request) -> JSONResponse:
        try:
            sku, qty = limits.line(await request.body())
            change = partial(
                tables.change, owner=request.path_params["owner"], change=Add(sku, qty)
            )
            return JSONResponse((await sql.arun(change)).items)
        except InvalidCartInput as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)

    def app(get: Any, add: Any) -> Starlette:
        return Starlette(
            routes=[
                Route("/cart/{owner}", get),
                Route("/cart/{owner}/items", add, methods=["POST"]),
            ]
        )

    return app(kit_get, kit_add), app(sql_get, sql_add)


def session_apps(cache: Cache) -> dict[str, Starlette]:
    """No sessions; sessions installed but untouched; a session read."""
    store = RedisSessionStore(cache)

    async def plain(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def read(request: Request) -> JSONResponse:
        session = await load_session(request)
        return JSONResponse({"ok": True, "user": session.get("user")})

    async def login(request: Request) -> JSONResponse:
        (await load_session(request))["user"] = "bench"
        return JSONResponse({"ok": True})

    with_sessions = [Middleware(SessionMiddleware, store=store)]
    return {
        "no sessions": Starlette(routes=[Route("/", plain)]),
        "sessions, untouched": Starlette(routes=[Route("/", plain)], middleware=with_sessions),
        "session read": Starlette(
            routes=[Route("/", read), Route("/login", login, methods=["POST"])],
            middleware=with_sessions,
        ),
    }


async def run_round(
    contender: Contender, result: Result, requests: int, concurrency: int, counter: list[int]
) -> None:
    """``requests`` requests from ``concurrency`` clients; SQL counted after the reset."""
    if contender.reset is not None:
        await contender.reset()
    statements = counter[0]
    latencies: list[float] = []
    per_client = requests // concurrency

    async def client(index: int) -> None:
        for i in range(per_client):
            began = time.perf_counter()
            await contender.call(contender.client, index * per_client + i)
            latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(concurrency)))
    elapsed = time.perf_counter() - began
    result.throughput.append(len(latencies) / elapsed)
    result.means.append(statistics.fmean(latencies))
    result.latencies += latencies
    result.requests += len(latencies)
    result.statements += counter[0] - statements


async def measure(args: argparse.Namespace, redis_url: str, db_url: str) -> dict[str, Any]:
    run = f"bench-cart-{uuid.uuid4().hex[:8]}"
    cache = Cache.from_url(redis_url, prefix=run, max_connections=64)
    counter = [0]
    engine = counted_engine(db_url, counter, latency=args.db_latency_ms / 1000)
    metadata = MetaData()
    kit_app, sql_app = cart_apps(cache, engine, metadata)
    CartSql(engine).run(metadata.create_all)
    clients: list[httpx.AsyncClient] = []

    def client_for(app: Starlette) -> httpx.AsyncClient:
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b")
        clients.append(client)
        return client

    per_client = args.requests // args.concurrency
    # Each app its own carts: the SQL-only app changes SQL behind Redis's back.
    kit_client, sql_client = client_for(kit_app), client_for(sql_app)
    owners = {
        client: [f"{run}-{tag}-{c}" for c in range(args.concurrency)]
        for client, tag in ((kit_client, "kit"), (sql_client, "sql"))
    }

    def checked(response: httpx.Response) -> httpx.Response:
        if response.status_code != 200:
            raise SystemExit(f"{response.request.url}: {response.status_code} {response.text}")
        return response

    async def get(client: httpx.AsyncClient, n: int) -> None:
        checked(await client.get(f"/cart/{owners[client][n // per_client]}"))

    async def add(client: httpx.AsyncClient, n: int) -> None:
        body = {"sku": f"SKU-{n % per_client % SKUS}", "qty": 1}
        checked(await client.post(f"/cart/{owners[client][n // per_client]}/items", json=body))

    cart = CartStore(cache, engine, metadata=MetaData())

    def resetting(client: httpx.AsyncClient, stock: bool) -> Callable[[], Awaitable[None]]:
        async def reset() -> None:
            for owner in owners[client]:
                await cart.clear(owner)
                if stock:
                    await cart.set(owner, "SKU-A", 2)
                    await cart.set(owner, "SKU-B", 1)

        return reset

    groups: dict[str, list[Contender]] = {
        "cart get": [
            Contender("sql get", "cart get", sql_client, get, resetting(sql_client, True)),
            Contender("cachekit get", "cart get", kit_client, get, resetting(kit_client, True)),
        ],
        "cart add": [
            Contender("sql add", "cart add", sql_client, add, resetting(sql_client, False)),
            Contender("cachekit add", "cart add", kit_client, add, resetting(kit_client, False)),
        ],
    }
    session_clients = {name: client_for(app) for name, app in session_apps(cache).items()}
    checked(await session_clients["session read"].post("/login"))
    seen: list[int] = [0]

    async def plain(client: httpx.AsyncClient, n: int) -> None:
        checked(await client.get("/"))

    async def session_read(client: httpx.AsyncClient, n: int) -> None:
        user = checked(await client.get("/")).json()["user"]  # awaited before the +=
        seen[0] += user == "bench"

    groups["session"] = [
        Contender("no sessions", "session", session_clients["no sessions"], plain),
        Contender("sessions, untouched", "session", session_clients["sessions, untouched"], plain),
        Contender("session read", "session", session_clients["session read"], session_read),
    ]
    results = {c.name: Result(c.name, c.group) for cs in groups.values() for c in cs}
    try:
        for contenders in groups.values():  # warm-up: pools, scripts, SQL connections
            for contender in contenders:
                warm = Result("warm", "")
                await run_round(contender, warm, args.concurrency, args.concurrency, counter)
        seen[0] = 0
        for round_no in range(args.rounds):
            for contenders in groups.values():
                for contender in rotation(contenders, round_no):
                    result = results[contender.name]
                    await run_round(contender, result, args.requests, args.concurrency, counter)
            print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        checks = await verify(cache, engine, owners[kit_client], seen[0], results)
    finally:
        for client in clients:
            await client.aclose()
        with redis.Redis.from_url(redis_url) as admin:
            delete_run_keys(admin, run, pattern="{run}:*")
        await cache.close()
        metadata.drop_all(engine)
        engine.dispose()
    return {"results": results, "checks": checks}


async def verify(
    cache: Cache, engine: Engine, owners: list[str], seen: int, results: dict[str, Result]
) -> dict[str, str]:
    """That the measured paths did what they claim."""
    cart = CartStore(cache, engine, metadata=MetaData())
    problems = []
    with engine.connect() as conn:
        items = cart.tables.items
        for owner in owners:
            in_sql = dict(
                conn.execute(select(items.c.sku, items.c.qty).where(items.c.owner == owner)).all()
            )
            if in_sql != await cart.get(owner):
                problems.append(f"{owner}: SQL and Redis differ")
    reads = results["session read"]
    if seen != reads.requests:
        problems.append(f"session read saw its session in {seen} of {reads.requests} requests")
    kit_get = results["cachekit get"]
    return {
        "sql == redis for every cart": "yes" if not problems else "; ".join(problems),
        "SQL statements per cachekit get": f"{kit_get.statements / max(1, kit_get.requests):.3f}",
        "session reads that saw the session": f"{seen} of {reads.requests}",
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = bench_parser("cart", __doc__.split("\n\n")[0], rounds=5)
    parser.add_argument("--requests", type=int, default=200, help="per contender per round")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="clients at once (the load generator shares the loop: above ~4 it measures itself)",
    )
    parser.add_argument(
        "--db-latency-ms", type=float, default=float(os.environ.get("DB_LATENCY_MS", "5"))
    )
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    args = parse(parser, argv, at_least_1=("rounds", "requests", "concurrency"))
    with (
        tempfile.TemporaryDirectory(prefix="bench-cart-") as tmp,
        redis_server(args.url, args.server, shared_note="other clients may add load") as url,
    ):
        db_url = args.database_url or f"sqlite:///{tmp}/cart.db"
        db_url = db_url.replace("postgresql://", "postgresql+psycopg://", 1)
        outcome = asyncio.run(measure(args, url, db_url))
        with redis.Redis.from_url(url) as admin:
            info = admin.info("server")
        env = environment(
            info,
            url,
            packages=["redis", "hiredis", "sqlalchemy", "starlette", "httpx"],
            details={
                "database": db_url.split(":", 1)[0],
                "DB_LATENCY_MS": f"{args.db_latency_ms:g}",
                "rounds x requests x concurrency": (
                    f"{args.rounds} x {args.requests} x {args.concurrency}"
                ),
            },
        )
    results: dict[str, Result] = outcome["results"]
    report: dict[str, Any] = {"environment": env, "checks": outcome["checks"], "groups": {}}
    baselines = {"cart get": "sql get", "cart add": "sql add", "session": "no sessions"}
    for group, baseline in baselines.items():
        rows = [r.row(results[baseline]) for r in results.values() if r.group == group]
        report["groups"][group] = rows
        print(f"\n{group} (baseline: {baseline})\n{text_table(rows)}")
    get_ratio = statistics.median(results["sql get"].means) / statistics.median(
        results["cachekit get"].means
    )
    # Serving cost from throughput (the loop is the bottleneck); latency also queues.
    read_cost = 1 / statistics.median(results["session read"].throughput) - 1 / statistics.median(
        results["no sessions"].throughput
    )
    report["verdict"] = {
        "cart get vs SQL": f"{get_ratio:.1f}x faster (target >= {TARGET_GET:g}x): "
        + ("met" if get_ratio >= TARGET_GET else "MISSED"),
        "session read cost per request (event-loop time)": f"{read_cost * 1e6:+.0f} us",
    }
    print("\nenvironment: " + environment_line(env))
    for name, value in {**outcome["checks"], **report["verdict"]}.items():
        print(f"{name}: {value}")
    write_json(args.json, report)
