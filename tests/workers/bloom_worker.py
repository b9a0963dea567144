"""A separate process for ``tests/bloom/test_bloom.py``.

Run as ``python -m tests.workers.bloom_worker MODE ...``.

Modes:

* ``offsets`` - read one JSON object from stdin, ``{"geometries": [[capacity, error_rate],
  ...], "items": [[kind, value], ...]}`` (kind ``int`` with a decimal string, ``str``, or
  ``bytes`` with hex), and print one JSON object: ``hash_probe`` (this process's
  ``hash("probe")``, to show its hash seed differs from the parent's) and ``offsets``
  (one list per geometry, one list of bit offsets per item).
* ``add URL PREFIX NAME CAPACITY ERROR_RATE`` - declare the filter, load it (which opens
  the connections and starts the notification subscription), print ``ready``, read one
  JSON list of identifiers from stdin, ``add_many`` them and print one JSON object:
  ``added`` (how many were new) and the wall-clock times ``t0`` and ``t1`` around the call.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from cachekit import Cache
from cachekit.bloom.state import Geometry, offsets


def decode_item(kind: str, value: str) -> object:
    """An item from its JSON form (``[kind, value]``)."""
    if kind == "int":
        return int(value)
    if kind == "bytes":
        return bytes.fromhex(value)
    if kind == "str":
        return value
    raise SystemExit(f"unknown item kind {kind!r}")


def compute_offsets(request: dict[str, Any]) -> dict[str, Any]:
    items = [decode_item(kind, value) for kind, value in request["items"]]
    geometries = [Geometry.of(capacity, rate) for capacity, rate in request["geometries"]]
    return {
        "hash_probe": hash("probe"),
        "offsets": [[offsets(geometry, item) for item in items] for geometry in geometries],
    }


def add(url: str, prefix: str, name: str, capacity: int, error_rate: float) -> dict[str, Any]:
    cache = Cache.from_url(url, prefix=prefix)
    bloom = cache.bloom(name, capacity=capacity, error_rate=error_rate)
    try:
        bloom.sync.contains("warm-up")  # loads the mirror, starts the subscription
        print("ready", flush=True)
        ids: list[object] = json.loads(sys.stdin.readline())
        t0 = time.time()
        added = bloom.sync.add_many(ids)
        t1 = time.time()
        return {"added": added, "t0": t0, "t1": t1}
    finally:
        cache.sync.close()


def main(argv: list[str]) -> None:
    mode, *rest = argv
    if mode == "offsets":
        result = compute_offsets(json.loads(sys.stdin.read()))
    elif mode == "add":
        url, prefix, name, capacity, error_rate = rest
        result = add(url, prefix, name, int(capacity), float(error_rate))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
