"""Where the CPU of a response-cache HIT goes: per step, in-process, no HTTP server.

``python -m loadtests http --steps`` drives the benchmark's own apps (:mod:`.http`)
in-process and reports CPU microseconds per request (``time.process_time``: the work of
this process, not the waits), as medians of interleaved rounds:

* **under load** - 16 concurrent callers, as wrk's 16 connections: each layer of the HIT
  alone, from a raw redis-py ``EVALSHA`` of the same script up to the whole middleware,
  so the difference between two rows is what the layer between them costs;
* **steps** - the middleware's own steps on a steady HIT, one call at a time, no I/O.

Usage::

    python -m loadtests http --steps
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from loadtests.harness.tables import text_table

SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/slow",
    "raw_path": b"/slow",
    "query_string": b"",
    "root_path": "",
    "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk"), (b"accept", b"*/*")],
    "client": ("127.0.0.1", 5555),
    "server": ("127.0.0.1", 8000),
}


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _discard(message: Any) -> None:
    return None


def _call(app: Any, path: str) -> Callable[[], Awaitable[None]]:
    scope = {**SCOPE, "path": path, "raw_path": path.encode()}
    return lambda: app(dict(scope), _receive, _discard)


async def _loaded(call: Callable[[], Awaitable[Any]], n: int, callers: int = 16) -> float:
    """CPU microseconds per call with ``callers`` concurrent callers."""

    async def caller() -> None:
        for _ in range(n // callers):
            await call()

    start = time.process_time_ns()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return (time.process_time_ns() - start) / n / 1000


def _alone(step: Callable[[], Any], n: int) -> float:
    start = time.process_time_ns()
    for _ in range(n):
        step()
    return (time.process_time_ns() - start) / n / 1000


async def measure(redis_url: str, rounds: int = 5, n: int = 4000) -> dict[str, dict[str, float]]:
    """``{"under load": {row: µs}, "steps": {row: µs}}``, medians over ``rounds``."""
    from loadtests.benchmarks import http

    os.environ.update(BENCH_REDIS_URL=redis_url, BENCH_PREFIX=f"bench-steps-{secrets.token_hex(4)}")
    os.environ["BENCH_HANDLER_MS"] = "0"
    apps = {}
    for variant in ("none", "cachekit", "cachekit-near", "cashews"):
        os.environ["BENCH_VARIANT"] = variant
        apps[variant] = http.create_app()
    # The middleware alone, around the slow endpoint without Starlette's own layers.
    stack: Any = apps["cachekit"].build_middleware_stack()
    while type(stack).__name__ != "ResponseCacheMiddleware":
        stack = stack.app
    middleware = stack
    from cachekit.middleware import ResponseCacheMiddleware

    unshared = ResponseCacheMiddleware(
        middleware.app, cache=middleware.cache, ttl=3600, share_reads=False
    )
    from cachekit.backends.ops.responses import ReadResponse
    from cachekit.flow.context import new_token
    from cachekit.middleware.flow import lookup
    from cachekit.middleware.responder import Responder

    for variant in ("cachekit", "cachekit-near", "cashews"):
        for _ in range(20):
            await _call(apps[variant], "/slow")()
        await asyncio.sleep(0.2)  # the near cache's channel
    state = middleware._state
    binding = state.bound()
    face = binding.aio
    responder = Responder(state, dict(SCOPE), _receive, _discard)
    responder._must_bypass()
    target = responder._target(binding)
    guess = ((), target.variant_key(()))
    ask = responder._ask(target, None, guess, None)
    assert ask.guess is not None
    op = ReadResponse(target.generation, target.record, new_token(), 3600.0, ask.guess[1])
    backend = face._loops.get().backend
    client = backend.inner.client
    keys, args = op.script_call()
    sha = op.script.sha if op.script is not None else ""
    outcome = await face.drive(lookup(binding.ctx, middleware.options.flow, ask))
    reply = await backend.run(op)

    def flow_cpu() -> None:
        flow = lookup(binding.ctx, middleware.options.flow, ask)
        flow.send(None)
        with contextlib.suppress(StopIteration):
            flow.send(reply)

    def scan_and_key() -> None:
        fresh = Responder(state, dict(SCOPE), _receive, _discard)
        fresh._must_bypass()
        fresh._target(binding)

    loaded: dict[str, Callable[[], Awaitable[Any]]] = {
        "trivial route (Starlette, no cache)": _call(apps["none"], "/trivial"),
        "raw redis-py EVALSHA of the HIT script": lambda: client.execute_command(
            "EVALSHA", sha, len(keys), *keys, *args
        ),
        "+ cachekit backend (deadline guard, breaker)": lambda: backend.run(op),
        "+ flow drive and decisions (lookup)": lambda: face.drive(
            lookup(binding.ctx, middleware.options.flow, ask)
        ),
        "+ middleware, a read per request (share_reads=False)": _call(unshared, "/slow"),
        "middleware with shared reads (the default)": _call(middleware, "/slow"),
        "cachekit HIT in the Starlette app": _call(apps["cachekit"], "/slow"),
        "cachekit near HIT in the Starlette app": _call(apps["cachekit-near"], "/slow"),
        "cashews @cache HIT in the Starlette app": _call(apps["cashews"], "/slow"),
    }

    def assembly() -> None:
        coroutine = responder._serve(binding, outcome.entry, stale=False)
        with contextlib.suppress(StopIteration):
            coroutine.send(None)  # nothing in it waits: the sends are discarded

    alone: dict[str, Callable[[], Any]] = {
        "Responder + header scan + key (memo)": scan_and_key,
        "request directives (Ask)": lambda: responder._ask(target, None, guess, None),
        "flow CPU on the reply (decode, checks, verdict)": flow_cpu,
        "response assembly and send": assembly,
    }
    results: dict[str, dict[str, list[float]]] = {
        "under load": {k: [] for k in loaded},
        "steps": {k: [] for k in alone},
    }
    for _ in range(rounds):
        for name, call in loaded.items():
            results["under load"][name].append(await _loaded(call, n))
        for name, step in alone.items():
            results["steps"][name].append(_alone(step, n * 5))
    return {
        group: {name: statistics.median(values) for name, values in rows.items()}
        for group, rows in results.items()
    }


def report(result: dict[str, dict[str, float]]) -> str:
    lines = []
    for group, rows in result.items():
        table = [{"": k, "CPU µs/req": f"{v:.1f}"} for k, v in rows.items()]
        lines += ["", group, text_table(table)]
    return "\n".join(lines)
