"""The response cache across OS processes: one app run per cold URL, one refresh per stale one.

Each worker (``tests/workers/response_cache_worker.py``) runs its own app instance and cache on
the shared Redis, under this test's prefix; a Redis list releases them together.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio

from cachekit import Cache
from tests.support.fleet import run_fleet
from tests.support.response_cache_apps import client_for
from tests.workers.response_cache_worker import build_app

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = 4
CALLERS = 12


def _config(redis_url: str, prefix: str, **extra: Any) -> dict[str, Any]:
    return {
        "url": redis_url,
        "prefix": prefix,
        "counter": f"{prefix}:test:runs",
        "ready": f"{prefix}:test:ready",
        "go": f"{prefix}:test:go",
        "done": f"{prefix}:test:done",
        "release": f"{prefix}:test:release",
        "callers": CALLERS,
        **extra,
    }


def _fleet(mode: str, cfg: dict[str, Any], raw: redis.Redis) -> list[dict[str, Any]]:
    """Start the workers, release them together, return their reports."""

    def release_the_refresh() -> None:
        if mode == "stale":
            for _ in range(PROCESSES):  # every caller has been answered: now refresh
                assert raw.blpop([cfg["done"]], timeout=30) is not None
            raw.rpush(cfg["release"], "go")

    argvs = [[mode, json.dumps(cfg)]] * PROCESSES
    return run_fleet(
        "tests.workers.response_cache_worker",
        argvs,
        raw,
        ready=cfg["ready"],
        go=cfg["go"],
        after_go=release_the_refresh,
    )


def _responses(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [response for report in reports for response in report["responses"]]


@pytest.mark.slow
def test_a_cold_url_runs_the_handler_once_across_processes(
    redis_url: str, prefix: str, raw_redis: redis.Redis
) -> None:
    cfg = _config(redis_url, prefix, ttl=60, load_seconds=0.2)
    reports = _fleet("herd", cfg, raw_redis)
    responses = _responses(reports)
    assert len(responses) == PROCESSES * CALLERS
    assert int(raw_redis.get(cfg["counter"]) or 0) == 1
    assert {r["status"] for r in responses} == {200}
    assert len({r["body"] for r in responses}) == 1
    assert [r["x_cache"] for r in responses].count("MISS") == 1
    assert sum(report["stats"]["http_bypasses"] for report in reports) == 0


async def _store_first_copy(cfg: dict[str, Any]) -> httpx.Response:
    cache = Cache.from_url(cfg["url"], prefix=cfg["prefix"])
    raw = redis.asyncio.Redis.from_url(cfg["url"])
    try:
        async with client_for(build_app(cache, raw, cfg)) as client:
            return await client.get("/hot")
    finally:
        await cache.close()
        await raw.aclose()


@pytest.mark.slow
def test_a_stale_url_is_refreshed_once_across_processes(
    redis_url: str, prefix: str, raw_redis: redis.Redis
) -> None:
    cfg = _config(redis_url, prefix, ttl=1, stale=600, gate=True)
    first = asyncio.run(_store_first_copy(cfg))
    assert first.headers["x-cache"] == "MISS"
    time.sleep(1.1)  # past its 1 s of freshness (a wait, not a claim about speed)
    reports = _fleet("stale", cfg, raw_redis)
    responses = _responses(reports)
    assert {r["x_cache"] for r in responses} == {"STALE"}
    assert {r["body"] for r in responses} == {first.text}
    assert int(raw_redis.get(cfg["counter"]) or 0) == 2  # the first copy, and one refresh
    assert sum(report["stats"]["rebuilds"] for report in reports) == 1
