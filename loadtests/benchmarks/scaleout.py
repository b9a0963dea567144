"""Scale-out benchmark: the near cache on a 3-primary Redis Cluster, across processes.

Two measurements, on a private Cluster of 3 primaries (no replicas) started for the run:

* **Hit throughput and p99, near cache off and on.** ``--processes`` worker processes
  (4) each hold two caches on the same keys, one plain and one with a
  :class:`~cachekit.near.local.LocalCache`, and call ``cache.sync.get`` in a closed loop for
  ``--seconds`` per round on keys drawn from a Zipf distribution (``--keys`` keys,
  exponent ``--zipf``), every key present. The two modes alternate in interleaved rounds
  (``--rounds``); throughput is the calls of all workers per second of a round, p50/p99
  over every call of the mode.
* **Invalidation delay.** The coordinator writes a key that every worker holds locally
  and each worker reports when its layer dropped it: the delay from the write's
  acknowledgement to that moment (p50, max over ``--trials`` writes x workers), on the
  Cluster (keys on every primary in turn) and, in the same run, on one private server.

Usage::

    .venv/bin/python -m loadtests scaleout          # results: loadtests/results/scaleout.json
    .venv/bin/python -m loadtests scaleout --rounds 2 --seconds 1 --trials 10 --json /tmp/s.json
"""

from __future__ import annotations

import bisect
import itertools
import math
import os
import random
import secrets
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

from redis.cluster import ClusterNode, RedisCluster

from cachekit import Cache
from cachekit.near.local import LocalCache
from loadtests.harness import RESULTS
from loadtests.harness.args import bench_parser, parse, write_json
from loadtests.harness.fleet import Fleet, receive
from loadtests.harness.rounds import rotation
from loadtests.harness.tables import environment, environment_line, percentile, text_table
from tests.support.servers import PrivateCluster, PrivateServer, server_binary

MODES = ("near off", "near on")


def product(n: int) -> dict[str, Any]:
    """The cached value: a small product record."""
    return {"id": n, "name": f"Widget {n}", "price": 9.99, "tags": ["a", "b"]}


def zipf_cdf(keys: int, exponent: float) -> list[float]:
    """The cumulative weights of ranks 1..keys under Zipf(``exponent``)."""
    return list(itertools.accumulate(1.0 / (rank**exponent) for rank in range(1, keys + 1)))


# --------------------------------------------------------------------------- workers


def worker_main(spec: dict[str, Any], conn: Connection) -> None:
    """One app process: a plain cache and a near-cached one on the same keys."""
    try:
        serve(spec, conn)
    except BaseException:
        import traceback

        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def serve(spec: dict[str, Any], conn: Connection) -> None:
    local = LocalCache(max_entries=spec["keys"] + 100, ttl=30)
    caches = {
        "near off": Cache.from_url(spec["url"], prefix=spec["prefix"]),
        "near on": Cache.from_url(spec["url"], prefix=spec["prefix"], local=local),
    }
    conn.send(("ready", {"near": local.wait_ready(30)}))
    cdf, rng = zipf_cdf(spec["keys"], spec["zipf"]), random.Random(spec["seed"])
    names = [f"p{bisect.bisect_left(cdf, rng.random() * cdf[-1])}" for _ in range(50_000)]
    while (message := receive(conn, 600))[0] != "stop":
        if message[0] == "run":
            conn.send(("result", timed(caches[message[1]], names, message[2])))
        elif message[0] == "arm":  # hold `name` locally as `old`, then time its invalidation
            name, old = message[1], message[2]
            held = f"{spec['prefix']}:{{{name}}}"
            get = caches["near on"].sync.get
            give_up = time.monotonic() + 5
            while get(name) != old or local.lookup(held) is None:
                if time.monotonic() > give_up:
                    raise RuntimeError(f"{name} was not kept locally")
            conn.send(("armed", {}))
            give_up = time.monotonic() + 5
            while local.lookup(held) is not None and time.monotonic() < give_up:
                time.sleep(0.0002)  # not a spin: 4 workers on 2 cores leave the channel CPU
            conn.send(("seen", {"at": time.monotonic(), "ready": local.ready}))
    for cache in caches.values():
        cache.sync.close()


def timed(cache: Cache, names: list[str], seconds: float) -> dict[str, Any]:
    """``cache.sync.get`` on ``names`` in a closed loop: calls, and latencies in 0.1 µs."""
    get, clock = cache.sync.get, time.perf_counter_ns
    histogram: Counter[int] = Counter()
    calls, end = 0, clock() + int(seconds * 1e9)
    for name in itertools.cycle(names):
        start = clock()
        if get(name) is None:
            raise RuntimeError(f"{name} missed: every key should be there")
        now = clock()
        histogram[(now - start) // 100] += 1
        calls += 1
        if now >= end:
            break
    return {"calls": calls, "histogram": dict(histogram)}


def quantile(histogram: Counter[int], q: float) -> float:
    """The ``q`` quantile (0..1) of a 0.1 µs histogram, in µs."""
    rank, seen = q * sum(histogram.values()), 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            return bucket / 10
    return math.nan


# --------------------------------------------------------------------------- coordinator


def throughput(fleet: Fleet, rounds: int, seconds: float) -> dict[str, dict[str, Any]]:
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    histograms: dict[str, Counter[int]] = {mode: Counter() for mode in MODES}
    for r in range(rounds):
        for mode in rotation(MODES, r):
            fleet.broadcast(("run", mode, seconds))
            results = fleet.collect("result", timeout=seconds + 120)
            calls = sum(result["calls"] for result in results)
            rates[mode].append(calls / seconds)
            for result in results:
                histograms[mode].update({int(b): n for b, n in result["histogram"].items()})
            print(f"  round {r + 1} {mode}: {calls / seconds:,.0f} gets/s", flush=True)
    return {
        mode: {
            "gets_per_s": statistics.median(rates[mode]),
            "gets_per_s_rounds": [round(rate) for rate in rates[mode]],
            "p50_us": quantile(histograms[mode], 0.50),
            "p99_us": quantile(histograms[mode], 0.99),
            "calls": sum(histograms[mode].values()),
        }
        for mode in MODES
    }


def invalidation_delays(
    fleet: Fleet, writer: Cache, names: Sequence[str], trials: int
) -> dict[str, Any]:
    """Write keys every worker holds; the delays (ms) until each worker's layer drops them."""
    for name in names:
        writer.sync.set(name, 0, ttl=3600)
    delays: list[float] = []
    for trial in range(1, trials + 1):
        name = names[trial % len(names)]
        fleet.broadcast(("arm", name, writer.sync.get(name)))
        fleet.collect("armed", timeout=30)
        writer.sync.set(name, trial, ttl=3600)
        acknowledged = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process
        for seen in fleet.collect("seen", timeout=30):
            if not seen["ready"]:
                raise RuntimeError("a worker's near cache lost its channel during the trials")
            delays.append(max(0.0, seen["at"] - acknowledged) * 1000)
    delays.sort()
    return {
        "samples": len(delays),
        "p50_ms": round(statistics.median(delays), 3),
        "p99_ms": round(percentile(delays, 99), 3),
        "max_ms": round(delays[-1], 3),
    }


def one_name_per_primary(cluster: Any, prefix: str, primaries: int) -> list[str]:
    """Logical keys whose slots are served by different primaries, one each."""
    found: dict[str, str] = {}
    for n in range(10_000):
        owner = cluster.get_node_from_key(f"{prefix}:{{fleet{n}}}")
        found.setdefault(owner.name, f"fleet{n}")
        if len(found) == primaries:
            break
    return list(found.values())


def run_fleet(url: str, args: Any, prefix: str) -> Fleet:
    specs = [
        {"url": url, "prefix": prefix, "keys": args.keys, "zipf": args.zipf, "seed": index}
        for index in range(args.processes)
    ]
    return Fleet(worker_main, specs, "scaleout")


def main(argv: Sequence[str] | None = None) -> None:
    parser = bench_parser(
        "scaleout",
        "The near cache on a 3-primary Cluster: hit throughput and p99 on/off, invalidation delay.",
        rounds=3,
        json=RESULTS / "scaleout.json",
        url=False,
    )
    parser.add_argument("--processes", type=int, default=4, help="worker processes (4)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per round (3)")
    parser.add_argument("--keys", type=int, default=1000, help="distinct keys (1000)")
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent (1.1)")
    parser.add_argument("--trials", type=int, default=50, help="invalidation writes (50)")
    args = parse(parser, argv, at_least_1=("rounds", "processes", "keys", "trials"))
    binary = server_binary(args.server)
    prefix = f"so{secrets.token_hex(4)}"
    results: dict[str, Any] = {}
    cluster = PrivateCluster(masters=3).start()
    try:
        node: Any = ClusterNode
        raw = RedisCluster(startup_nodes=[node("127.0.0.1", n.port) for n in cluster.nodes])
        info = raw.info("server", target_nodes=RedisCluster.RANDOM)
        env = environment(
            info,
            cluster.url,
            packages=("redis", "hiredis"),
            details={"cluster": "3 primaries, no replicas", "load": _load()},
        )
        print(environment_line(env), flush=True)
        seed = Cache.from_url(cluster.url, prefix=prefix)
        for n in range(args.keys):
            seed.sync.set(f"p{n}", product(n), ttl=3600)
        seed.sync.close()
        with run_fleet(cluster.url, args, prefix) as fleet:
            ready = fleet.collect("ready", timeout=120)
            if not all(r["near"] for r in ready):
                raise RuntimeError("a worker's near cache did not get its channels up")
            print(f"hit throughput, {args.processes} processes, Zipf({args.zipf}) over "
                  f"{args.keys} keys:", flush=True)  # fmt: skip
            results["throughput"] = throughput(fleet, args.rounds, args.seconds)
            writer = Cache.from_url(cluster.url, prefix=prefix)
            results["invalidation_cluster"] = invalidation_delays(
                fleet, writer, one_name_per_primary(raw, prefix, 3), args.trials
            )
            writer.sync.close()
        raw.close()
    finally:
        cluster.stop()
    with PrivateServer(binary=binary) as server, run_fleet(server.url, args, prefix) as fleet:
        fleet.collect("ready", timeout=120)
        writer = Cache.from_url(server.url, prefix=prefix)
        results["invalidation_standalone"] = invalidation_delays(
            fleet, writer, ["fleet0"], args.trials
        )
        writer.sync.close()
    report(results, env, args)


def report(results: dict[str, Any], env: dict[str, str], args: Any) -> None:
    rows = []
    for mode, data in results["throughput"].items():
        rows.append({
            "mode": mode,
            "gets/s": f"{data['gets_per_s']:,.0f}",
            "p50 us": f"{data['p50_us']:.1f}",
            "p99 us": f"{data['p99_us']:.1f}",
        })  # fmt: skip
    print(text_table(rows))
    on, off = results["throughput"]["near on"], results["throughput"]["near off"]
    results["ratio_gets_per_s"] = on["gets_per_s"] / off["gets_per_s"]
    print(f"near on / off: {results['ratio_gets_per_s']:.1f}x gets/s")
    for where in ("cluster", "standalone"):
        d = results[f"invalidation_{where}"]
        print(f"invalidation delay ({where}, {d['samples']} samples): p50 {d['p50_ms']:.2f} ms, "
              f"p99 {d['p99_ms']:.2f} ms, max {d['max_ms']:.2f} ms")  # fmt: skip
    settings = {
        k: getattr(args, k) for k in ("processes", "seconds", "keys", "zipf", "trials", "rounds")
    }
    write_json(args.json, {"environment": env, "settings": settings, **results})


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} {five:.2f} (1, 5 min)"
