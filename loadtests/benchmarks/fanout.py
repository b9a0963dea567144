"""Fan-out benchmark: what a fill costs Redis when N processes listen for notifications.

A private server; ``--subscribers`` (50, 100, 200) notification listeners of real
``Cache`` instances, 50 to a process, each started as a process's first wait starts it;
one writer process doing ``--fills`` cold misses of ``@cache.cached`` (lease, load, fill),
each on a key nobody waits on. Per fill: the messages the listeners were handed (counted
inside each subscriber process), the server's CPU (``INFO cpu`` ``used_cpu_sys`` +
``used_cpu_user`` deltas, per 1,000 fills) and the writer's p50/p99 (the whole miss:
GET, lease, fill). Waiters are not part of it: what a fill with waiters costs is
counted by ``tests/test_fanout.py``.

``--tree NAME=PATH`` (repeatable) runs the same measurement against other checkouts of
cachekit (say ``--tree before=/work/wt/fanout-base``, a worktree of the previous commit):
every tree's subscribers and writer import cachekit from that tree, and the trees take
turns within each round (rotated), so their figures come from the same run.

Usage::

    .venv/bin/python -m loadtests fanout       # results: loadtests/results/fanout.json
    .venv/bin/python -m loadtests fanout --tree before=../base --rounds 3 --markdown
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]
PER_PROCESS = 50  # listeners per subscriber process


# ----------------------------------------------------------------- worker processes
# Run as ``python fanout.py <role> ...`` with the tree under test first on sys.path: they
# import nothing but cachekit and redis-py.


def _counting() -> list[int]:
    """Count every key or topic message a listener hands to its waiters (this process)."""
    import importlib

    try:  # this tree; a checkout from before the layers became folders has it at the top
        notify = importlib.import_module("cachekit.drivers.notify")
    except ImportError:
        notify = importlib.import_module("cachekit.notify")

    count = [0]
    original = notify.Waiters.notify

    def notify_counted(self: Any, key: str) -> None:
        count[0] += 1
        original(self, key)

    notify.Waiters.notify = notify_counted
    return count


def _subscriber(url: str, prefix: str, listeners: int) -> None:
    """Start ``listeners`` caches' notification listeners; answer ``count`` with the count."""
    from cachekit import Cache

    count = _counting()
    caches = [Cache.from_url(url, prefix=prefix) for _ in range(listeners)]
    for cache in caches:
        binding = cache._binding
        listener = None if binding is None else binding.listener
        if listener is not None and listener.ensure_started():
            listener.ready.wait(2.0)
    _serve(lambda: count[0])


def _serve(count: Any) -> None:
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "count":
            print(count(), flush=True)
        elif line.strip() == "quit":
            return


def _writer(url: str, prefix: str, fills: int) -> None:
    """Do ``fills`` cold misses; print their latencies (s) as JSON."""
    from cachekit import Cache

    cache = Cache.from_url(url, prefix=prefix)

    @cache.cached(ttl=600, key="fill:{n}", jitter=0)
    def load(n: int) -> int:
        return n

    for n in range(20):  # warm: connections, scripts loaded
        load(-1 - n)
    print("warm", flush=True)
    seconds: list[float] = []
    sys.stdin.readline()  # go
    for n in range(fills):
        started = time.perf_counter()
        load(n)
        seconds.append(time.perf_counter() - started)
    print(json.dumps(seconds), flush=True)


# ----------------------------------------------------------------------------- driver


class _Proc:
    def __init__(self, tree: Path, *args: str) -> None:
        self.role = args[0]
        env = dict(os.environ, PYTHONPATH=str(tree))
        self.p = subprocess.Popen(
            [sys.executable, str(HERE), *args],
            cwd=tree,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def say(self, line: str) -> None:
        stdin: IO[str] = self.p.stdin  # type: ignore[assignment]
        stdin.write(line + "\n")
        stdin.flush()

    def hear(self) -> str:
        stdout: IO[str] = self.p.stdout  # type: ignore[assignment]
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"{self.role} worker ended (rc {self.p.wait()})")
        return line.strip()

    def close(self) -> None:
        if self.p.poll() is None:
            try:
                self.say("quit")
                self.p.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.p.kill()
                self.p.wait()


def _cpu(r: Any) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def measure(tree: Path, url: str, subscribers: int, fills: int) -> dict[str, float]:
    """One measurement: ``subscribers`` listeners and a writer of ``fills`` fills."""
    import redis

    from loadtests.harness.tables import percentile

    prefix = f"fanout-{secrets.token_hex(4)}"
    with ExitStack() as stack:
        procs: list[_Proc] = []
        left = subscribers
        while left > 0:
            n = min(PER_PROCESS, left)
            left -= n
            proc = _Proc(tree, "subscriber", url, prefix, str(n))
            stack.callback(proc.close)
            procs.append(proc)
        for proc in procs:
            if proc.hear() != "ready":
                raise RuntimeError("a worker did not start")
        writer = _Proc(tree, "writer", url, prefix, str(fills))
        stack.callback(writer.close)
        if writer.hear() != "warm":
            raise RuntimeError("the writer did not warm up")
        time.sleep(0.2)
        r = redis.Redis.from_url(url)
        stack.callback(r.close)

        def heard() -> int:
            total = 0
            for proc in procs:
                proc.say("count")
                total += int(proc.hear())
            return total

        before, cpu0 = heard(), _cpu(r)
        out0 = int(r.info("stats")["total_net_output_bytes"])
        started = time.perf_counter()
        writer.say("go")
        line = writer.hear()
        elapsed = time.perf_counter() - started
        seconds = json.loads(line)
        time.sleep(0.3)  # the last messages reach the subscribers
        cpu1 = _cpu(r)
        out1 = int(r.info("stats")["total_net_output_bytes"])
        messages = heard() - before
    return {
        "messages_per_fill": messages / fills,
        "redis_cpu_ms_per_1000_fills": (cpu1 - cpu0) * 1000 / fills * 1000,
        "net_out_bytes_per_fill": (out1 - out0) / fills,
        "p50_ms": percentile(seconds, 50) * 1000,
        "p99_ms": percentile(seconds, 99) * 1000,
        "fills_per_s": fills / elapsed,
    }


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m loadtests fanout``."""
    from loadtests.harness import RESULTS
    from loadtests.harness.args import bench_parser, parse, write_json
    from loadtests.harness.rounds import rotation
    from loadtests.harness.servers import PrivateServer, server_binary
    from loadtests.harness.tables import (
        environment,
        environment_line,
        markdown_table,
        text_table,
    )

    parser = bench_parser(
        "fanout",
        "what a fill costs Redis with N notification listeners",
        rounds=3,
        json=RESULTS / "fanout.json",
        markdown=True,
        url=False,
    )
    parser.add_argument("--subscribers", default="50,100,200", help="listener counts")
    parser.add_argument("--fills", type=int, default=2000, help="fills per measurement")
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="another checkout of cachekit to measure in the same run (repeatable)",
    )
    args = parse(parser, argv, at_least_1=("rounds", "fills"))
    trees = {"this": ROOT} | {
        name: Path(path).resolve() for name, _, path in (t.partition("=") for t in args.tree)
    }
    counts = [int(n) for n in args.subscribers.split(",")]
    import redis

    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    with PrivateServer(binary=server_binary(args.server)) as server:
        with redis.Redis.from_url(server.url) as r:
            env = environment(
                r.info("server"),
                server.url,
                packages=["redis", "hiredis"],
                details={"load": os.getloadavg().__repr__()},
            )
        print(environment_line(env), flush=True)
        for round_ in range(args.rounds):
            for subscribers in counts:
                for name in rotation(list(trees), round_):
                    figures = measure(trees[name], server.url, subscribers, args.fills)
                    runs.setdefault((name, subscribers), []).append(figures)
                    print(f"round {round_ + 1} {name} {subscribers}: {figures}", flush=True)
    table = []
    results: dict[str, Any] = {"environment": env, "fills": args.fills}
    results["runs"] = {f"{name} {n}": rows for (name, n), rows in runs.items()}
    for (name, n), rows in sorted(runs.items(), key=lambda item: (item[0][1], item[0][0])):
        median = {k: sorted(row[k] for row in rows)[len(rows) // 2] for k in rows[0]}
        table.append(
            {
                "code": name,
                "subscribers": str(n),
                "messages/fill": f"{median['messages_per_fill']:.1f}",
                "Redis CPU ms/1000 fills": f"{median['redis_cpu_ms_per_1000_fills']:.0f}",
                "bytes out/fill": f"{median['net_out_bytes_per_fill']:.0f}",
                "p50 ms": f"{median['p50_ms']:.2f}",
                "p99 ms": f"{median['p99_ms']:.2f}",
            }
        )
    results["table"] = table
    print(markdown_table(table, {"code"}) if args.markdown else text_table(table))
    write_json(args.json, results)


if __name__ == "__main__":
    role, *rest = sys.argv[1:]
    if role == "subscriber":
        _subscriber(rest[0], rest[1], int(rest[2]))
    elif role == "writer":
        _writer(rest[0], rest[1], int(rest[2]))
    else:
        sys.exit(f"unknown role {role!r}")
