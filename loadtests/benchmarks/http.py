"""Response-cache benchmark: uvicorn servers under wrk, with and without the middleware.

What it measures
----------------
Throughput and latency percentiles of real HTTP traffic against one uvicorn process per
contender, each serving a small Starlette app:

* **no cache** - ``GET /slow``, whose handler sleeps ``--handler-ms`` (20 ms), no middleware;
* **cachekit** - the same route behind ``ResponseCacheMiddleware`` (every request a HIT),
  on ``Cache.from_url`` defaults: a read (one EVALSHA) per batch of concurrent requests,
  each batch's read sent after its requests arrived (``share_reads``);
* **cachekit near** - the same, on a cache with a near cache
  (``local=LocalCache(max_entries=1000, ttl=5)``): hot HITs are served from it, no round
  trip (the run checks that they were);
* **cashews** - the same route behind cashews' ``@cache(ttl=...)`` on the endpoint (it
  pickles the Starlette ``Response``; cashews has no ASGI response-cache middleware,
  and fastapi-cache2 needs FastAPI, which is not installed). Its decorator shares one
  GET among concurrent calls with the same key: in-process, 16 concurrent callers sent
  about one GET per 16 requests, so its figure is that of a coalescing cache;
* **trivial** - ``GET /trivial`` on the uncached app: an empty handler, no cache, the
  floor any cached response is compared with.

Targets: from issue 6, cachekit's HIT throughput is at least 5x that of **no cache**, and
its p50 latency at most 1.3x that of **trivial**; from issue 19, its throughput is at
least that of **cashews**. Every ratio comes from the same run, for both cachekit
contenders. The report also records the load average before and after the run (other
processes share the CPUs; rounds are interleaved so that ratios hold better than
absolute figures).

How
---
Each contender runs in its own ``uvicorn`` process (one worker, default event loop) on a
free port; the caches share one Redis. Each is warmed, then ``--rounds`` rounds follow;
in each, every contender gets ``--duration`` seconds of ``wrk --latency`` with
``--connections`` connections, in an order that rotates from round to round so a noisy
moment hits all alike. A contender's figures are the medians over rounds. wrk is a
closed-loop generator (a fixed number of connections, each sending its next request when
the last answer arrives), so latencies include queueing at that concurrency. The run
checks what it measured: the cached handlers ran only during warm-up, and cachekit's
responses said ``X-Cache: HIT``. Everything (wrk, uvicorn, Redis) shares this machine's
CPUs; the report records how many.

Usage::

    .venv/bin/python -m loadtests http
    .venv/bin/python -m loadtests http --rounds 5 --duration 5 --connections 32
    REDIS_URL=redis://127.0.0.1:6379/1 .venv/bin/python -m loadtests http

Needs ``wrk`` on ``PATH`` (``apt-get install wrk``). With nothing answering at the URL,
a private Redis-compatible server is started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import redis
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from loadtests.harness import RESULTS
from loadtests.harness.args import bench_parser, parse, write_json
from loadtests.harness.rounds import interleaved
from loadtests.harness.servers import delete_run_keys, free_port, redis_server
from loadtests.harness.tables import environment, environment_line, text_table

ROOT = Path(__file__).resolve().parents[2]  # the repository, for uvicorn --app-dir
CONTENDERS = ("no cache", "cachekit", "cachekit near", "cashews", "trivial")
_VARIANT = {
    "no cache": "none",
    "cachekit": "cachekit",
    "cachekit near": "cachekit-near",
    "cashews": "cashews",
    "trivial": "none",
}
_PATH = dict.fromkeys(CONTENDERS, "/slow") | {"trivial": "/trivial"}
_CACHEKIT = ("cachekit", "cachekit near")
BODY = b'{"products": [' + b",".join(b'{"id": %d, "name": "p%d"}' % (i, i) for i in range(20))
BODY += b"]}"

# --------------------------------------------------------------------------- the served app


def create_app() -> Starlette:
    """The app one uvicorn process serves; ``BENCH_*`` environment variables pick it."""
    variant = os.environ["BENCH_VARIANT"]
    url = os.environ["BENCH_REDIS_URL"]
    prefix = os.environ["BENCH_PREFIX"]
    delay = float(os.environ["BENCH_HANDLER_MS"]) / 1000
    calls = {"slow": 0, "local_hits": 0}

    async def slow(request: Request) -> Response:
        calls["slow"] += 1
        await asyncio.sleep(delay)
        return Response(BODY, media_type="application/json")

    async def trivial(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def count(request: Request) -> Response:
        if stats is not None:
            calls["local_hits"] = stats()["local_hits"]
        # no-store: the response cache in front must not answer this from a stored copy
        return JSONResponse(calls, headers={"cache-control": "no-store"})

    stats: Callable[[], dict[str, int]] | None = None
    endpoint = slow
    middleware: list[Middleware] = []
    if variant in ("cachekit", "cachekit-near"):
        from cachekit import Cache, LocalCache
        from cachekit.middleware import ResponseCacheMiddleware

        local = LocalCache(max_entries=1000, ttl=5) if variant == "cachekit-near" else None
        cache = Cache.from_url(url, prefix=prefix, local=local)
        stats = cache.stats
        middleware.append(Middleware(ResponseCacheMiddleware, cache=cache, ttl=3600))
    elif variant == "cashews":
        from cashews import cache as cashews_cache

        cashews_cache.setup(url, client_side=False)
        endpoint = cashews_cache(ttl="1h", key=f"{prefix}:cashews:slow")(slow)
    routes = [Route("/slow", endpoint), Route("/trivial", trivial), Route("/calls", count)]
    return Starlette(routes=routes, middleware=middleware)


# --------------------------------------------------------------------------- running it


@contextmanager
def serve(variant: str, redis_url: str, prefix: str, handler_ms: float) -> Iterator[str]:
    """A uvicorn process serving ``variant``; its base URL."""
    port = free_port()
    env = {
        **os.environ,
        "BENCH_VARIANT": variant,
        "BENCH_REDIS_URL": redis_url,
        "BENCH_PREFIX": prefix,
        "BENCH_HANDLER_MS": str(handler_ms),
    }
    command = [sys.executable, "-m", "uvicorn", "loadtests.benchmarks.http:create_app", "--factory"]
    command += ["--app-dir", str(ROOT), "--port", str(port), "--log-level", "warning"]
    command += ["--no-access-log"]
    process = subprocess.Popen(command, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(base + "/trivial", timeout=1):  # noqa: S310
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"uvicorn ({variant}) did not start") from None
                time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def fetch(url: str) -> tuple[dict[str, str], bytes]:
    """Headers and body of a GET (for warm-up and checks)."""
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310
        return {k.lower(): v for k, v in response.headers.items()}, response.read()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk(url: str, *, connections: int, duration: float, threads: int) -> dict[str, float]:
    """One wrk run: requests/s, latency percentiles in ms, and error counts."""
    seconds = max(1, round(duration))
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    for p in ("50", "90", "99"):
        found = re.search(rf"^\s+{p}%\s+(\S+)", out, re.MULTILINE)
        result[f"p{p}_ms"] = _ms(found.group(1)) if found else float("nan")
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    result["non_2xx"] = float(errors.group(1)) if errors else 0.0
    result["socket_errors"] = 1.0 if socket_errors else 0.0
    return result


def run(args: argparse.Namespace, redis_url: str) -> dict[str, Any]:
    prefix = f"bench-rc-{secrets.token_hex(4)}"
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in CONTENDERS}
    load_before = os.getloadavg()
    with ExitStack() as stack:
        bases = {
            variant: stack.enter_context(serve(variant, redis_url, prefix, args.handler_ms))
            for variant in sorted(set(_VARIANT.values()))
        }
        for name in CONTENDERS:  # warm: prime the caches and the interpreters
            for _ in range(20):
                fetch(bases[_VARIANT[name]] + _PATH[name])
            wrk(bases[_VARIANT[name]] + _PATH[name], connections=4, duration=1, threads=1)
        warm = {v: json.loads(fetch(bases[v] + "/calls")[1]) for v in bases}
        for r, name in interleaved(CONTENDERS, args.rounds):
            url = bases[_VARIANT[name]] + _PATH[name]
            rounds[name].append(
                wrk(url, connections=args.connections, duration=args.duration, threads=1)
            )
            print(f"round {r + 1} {name}: {rounds[name][-1]}", file=sys.stderr, flush=True)
        answers = {name: fetch(bases[_VARIANT[name]] + "/slow") for name in _CACHEKIT}
        after = {v: json.loads(fetch(bases[v] + "/calls")[1]) for v in bases}
    load_after = os.getloadavg()
    checks = {f"{name} answered HIT": _hit(*answers[name]) for name in _CACHEKIT}
    for name in (*_CACHEKIT, "cashews"):
        variant = _VARIANT[name]
        checks[f"{name} handler ran only while warming"] = (
            after[variant]["slow"] == warm[variant]["slow"]
        )
    # Nine in ten of its HITs came from the near cache: three local hits (keys) per response.
    near_hits = after["cachekit-near"]["local_hits"] - warm["cachekit-near"]["local_hits"]
    near_rps = statistics.fmean(r["rps"] for r in rounds["cachekit near"])
    near_requests = near_rps * args.duration * args.rounds
    checks["cachekit near served its HITs from the near cache"] = (
        near_hits >= 3 * 0.9 * near_requests
    )
    summary = {
        name: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        for name, runs in rounds.items()
    }
    admin = redis.Redis.from_url(redis_url)
    try:
        info = admin.info("server")
        delete_run_keys(admin, prefix)
    finally:
        admin.close()
    base, trivial, cashews = summary["no cache"], summary["trivial"], summary["cashews"]
    ratios: dict[str, float] = {}
    targets: dict[str, bool] = {}
    for name in _CACHEKIT:
        ck = summary[name]
        per_round = [
            a["rps"] / b["rps"] for a, b in zip(rounds[name], rounds["cashews"], strict=True)
        ]
        ratios |= {
            f"throughput {name} / no cache (target >= 5)": ck["rps"] / base["rps"],
            f"throughput {name} / cashews (target >= 1.0)": ck["rps"] / cashews["rps"],
            f"throughput {name} / cashews, median of rounds": statistics.median(per_round),
            f"p50 latency {name} / trivial (target <= 1.3)": ck["p50_ms"] / trivial["p50_ms"],
            f"p99 latency {name} / trivial": ck["p99_ms"] / trivial["p99_ms"],
        }
        targets |= {
            f"{name} throughput >= 5x no cache": ck["rps"] >= 5 * base["rps"],
            f"{name} throughput >= 1.0x cashews": ck["rps"] >= cashews["rps"],
            f"{name} latency <= 1.3x trivial (p50)": ck["p50_ms"] <= 1.3 * trivial["p50_ms"],
        }
    return {
        "environment": environment(
            info,
            redis_url,
            packages=["cachekit", "starlette", "uvicorn", "cashews", "redis", "hiredis"],
            details={
                "load generator": "wrk (closed loop)",
                "wrk": _wrk_version(),
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "load average before / after": f"{load_before[0]:.2f} / {load_after[0]:.2f}",
            },
        ),
        "settings": {
            "handler_ms": args.handler_ms,
            "connections": args.connections,
            "duration_s": args.duration,
            "rounds": args.rounds,
        },
        "results": summary,
        "rounds": rounds,
        "ratios": ratios,
        "targets_met": targets,
        "checks": checks,
    }


def _hit(headers: dict[str, str], body: bytes) -> bool:
    return headers.get("x-cache") == "HIT" and body == BODY


def _wrk_version() -> str:
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).split("\n")[0].strip()


def report(result: dict[str, Any]) -> str:
    table = [
        {
            "contender": name,
            "req/s": f"{row['rps']:.0f}",
            "p50 ms": f"{row['p50_ms']:.2f}",
            "p90 ms": f"{row['p90_ms']:.2f}",
            "p99 ms": f"{row['p99_ms']:.2f}",
            "non-2xx": f"{row['non_2xx']:.0f}",
        }
        for name, row in result["results"].items()
    ]
    lines = ["environment: " + environment_line(result["environment"])]
    lines.append("settings: " + ", ".join(f"{k} {v}" for k, v in result["settings"].items()))
    lines += ["", text_table(table), ""]
    lines += [f"{name}: {value:.2f}" for name, value in result["ratios"].items()]
    lines += [
        f"target {name}: {'met' if ok else 'MISSED'}" for name, ok in result["targets_met"].items()
    ]
    lines += [f"check {name}: {'ok' if ok else 'FAILED'}" for name, ok in result["checks"].items()]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(
        "http",
        __doc__.split("\n")[0] if __doc__ else "",
        rounds=3,
        json=RESULTS / "response_cache.json",
    )
    parser.add_argument("--handler-ms", type=float, default=20.0, help="handler sleep (20)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (16)")
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run (3)")
    parser.add_argument(
        "--steps",
        action="store_true",
        help="instead: CPU per step of a HIT, in-process (loadtests/benchmarks/http_steps.py)",
    )
    return parse(parser, argv, at_least_1=("rounds", "connections", "duration"))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.steps:
        from loadtests.benchmarks import http_steps

        with redis_server(args.url, args.server) as url:
            steps = asyncio.run(http_steps.measure(url, rounds=args.rounds))
        print(http_steps.report(steps))
        write_json(args.json.with_name("response_cache_steps.json"), steps)
        return
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    with redis_server(args.url, args.server) as url:
        result = run(args, url)
    print(report(result))
    write_json(args.json, result)
    if not all(result["checks"].values()):
        raise SystemExit(1)
