"""A separate process for the lock tests: ``python -m tests.workers.lock_worker MODE ...``.

Modes:

* ``hold URL PREFIX NAME TTL`` - take the lock on the sync face, print
  ``held <token> <fence>`` and sleep until killed (the watchdog keeps renewing).
* ``contend URL PREFIX NAME ROUNDS FACE`` - print ``ready``, wait for a line on stdin,
  then take the lock ``ROUNDS`` times (``FACE`` is ``sync`` or ``async``; ttl 5, wait 10)
  and in each critical section: ``SET NX`` an "inside" marker (counting a violation when
  it was already set), read the shared counter, sleep 1 ms, write counter + 1, delete the
  marker. Prints one JSON object: the records ``[counter seen, fence, monotonic ns]``,
  the number of violations and how many acquisitions had to wait.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import redis
import redis.asyncio

from cachekit import Cache

LOCK_TTL = 5.0
LOCK_WAIT = 10.0


def hold(url: str, prefix: str, name: str, ttl: float) -> None:
    cache = Cache.from_url(url, prefix=prefix)
    lock = cache.sync.lock(name, ttl=ttl, wait=5)
    lock.acquire()
    print(f"held {lock.token.decode()} {lock.fencing_token}", flush=True)
    while True:  # until SIGKILL
        time.sleep(60)


def _keys(prefix: str) -> tuple[str, str]:
    return f"{prefix}:counter", f"{prefix}:inside"


def contend_sync(url: str, prefix: str, name: str, rounds: int) -> dict[str, Any]:
    cache = Cache.from_url(url, prefix=prefix)
    client = redis.Redis.from_url(url)
    counter, inside = _keys(prefix)
    records: list[list[int]] = []
    violations = 0
    print("ready", flush=True)
    sys.stdin.readline()
    for _ in range(rounds):
        with cache.sync.lock(name, ttl=LOCK_TTL, wait=LOCK_WAIT) as lock:
            entered = time.monotonic_ns()
            if not client.set(inside, b"1", nx=True):
                violations += 1
            seen = int(client.get(counter) or 0)
            time.sleep(0.001)
            client.set(counter, seen + 1)
            client.delete(inside)
            assert lock.fencing_token is not None
            records.append([seen, lock.fencing_token, entered])
    client.close()
    cache.sync.close()
    return {"records": records, "violations": violations, "waits": cache.stats()["lock_waits"]}


async def contend_async(url: str, prefix: str, name: str, rounds: int) -> dict[str, Any]:
    cache = Cache.from_url(url, prefix=prefix)
    client = redis.asyncio.Redis.from_url(url)
    counter, inside = _keys(prefix)
    records: list[list[int]] = []
    violations = 0
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    for _ in range(rounds):
        async with cache.lock(name, ttl=LOCK_TTL, wait=LOCK_WAIT) as lock:
            entered = time.monotonic_ns()
            if not await client.set(inside, b"1", nx=True):
                violations += 1
            seen = int(await client.get(counter) or 0)
            await asyncio.sleep(0.001)
            await client.set(counter, seen + 1)
            await client.delete(inside)
            assert lock.fencing_token is not None
            records.append([seen, lock.fencing_token, entered])
    await client.aclose()
    await cache.close()
    return {"records": records, "violations": violations, "waits": cache.stats()["lock_waits"]}


def main(argv: list[str]) -> None:
    mode, url, prefix, name, *rest = argv
    if mode == "hold":
        hold(url, prefix, name, float(rest[0]))
    elif mode == "contend":
        rounds, face = int(rest[0]), rest[1]
        if face == "sync":
            result = contend_sync(url, prefix, name, rounds)
        else:
            result = asyncio.run(contend_async(url, prefix, name, rounds))
        print(json.dumps(result), flush=True)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
