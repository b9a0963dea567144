"""A worker for ``tests/sessions/test_sessions.py``: one session, written from many processes.

Run as ``python -m tests.workers.session_worker MODE CONFIG_JSON`` from the project root. The worker
builds its own :class:`~cachekit.Cache` and :class:`~cachekit.sessions.RedisSessionStore` on
the given Redis and prefix, loads the shared session once (connections warm), pushes its pid
onto the ``ready`` list, blocks on ``BLPOP go`` so that every worker starts at once, then
runs its mode through the store's blocking API and prints one JSON line.

Modes:

* ``merge`` - ``writes`` rounds of load, change, save: each round sets this worker's own
  key ``w<worker>:<i>``, sets the key ``last`` that every worker fights over, and deletes
  this worker's key of the round before when ``i`` is a multiple of 3. Prints the keys it
  expects to survive (its own) and whether every save found the record.
* ``until-gone`` - load, set an own key, save, until a load or save finds no record (the
  test logs the session out meanwhile). Prints how many saves succeeded.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import redis

from cachekit import Cache
from cachekit.sessions import RedisSessionStore


def merge(store: RedisSessionStore, sid: str, worker: int, writes: int) -> dict[str, Any]:
    kept: dict[str, int] = {}
    lost = 0
    for i in range(writes):
        record = store.sync.load(sid)
        if record is None:
            lost += 1
            continue
        data = dict(record.data)
        data[f"w{worker}:{i}"] = i
        data["last"] = worker
        kept[f"w{worker}:{i}"] = i
        if i % 3 == 0 and i > 0:
            del data[f"w{worker}:{i - 1}"]
            del kept[f"w{worker}:{i - 1}"]
        if store.sync.save(record, data) is None:
            lost += 1
    return {"kept": kept, "lost": lost}


def until_gone(store: RedisSessionStore, sid: str, worker: int) -> dict[str, Any]:
    saved = 0
    for i in range(1_000_000):
        record = store.sync.load(sid)
        if record is None:
            break
        data = dict(record.data)
        data[f"w{worker}:{i}"] = i
        if store.sync.save(record, data) is None:
            break
        saved += 1
    return {"saved": saved}


def main() -> None:
    mode, cfg = sys.argv[1], json.loads(sys.argv[2])
    if mode not in ("merge", "until-gone"):
        raise SystemExit(f"unknown mode {mode!r}")
    # Patient timeouts: a busy machine must not turn a save into an error here.
    cache = Cache.from_url(
        cfg["url"],
        prefix=cfg["prefix"],
        socket_timeout=10,
        socket_connect_timeout=10,
        pool_timeout=10,
    )
    store = RedisSessionStore(cache)
    raw = redis.Redis.from_url(cfg["url"])
    try:
        if store.sync.load(cfg["sid"]) is None:  # warms the connection and the script
            raise SystemExit("the shared session is missing")
        raw.rpush(cfg["ready"], os.getpid())
        if raw.blpop([cfg["go"]], timeout=30) is None:
            raise SystemExit("never told to go")
        if mode == "merge":
            result = merge(store, cfg["sid"], cfg["worker"], cfg["writes"])
        else:
            result = until_gone(store, cfg["sid"], cfg["worker"])
        print(json.dumps(result))
    finally:
        raw.close()  # the cache's own connections end with the process


if __name__ == "__main__":
    main()
