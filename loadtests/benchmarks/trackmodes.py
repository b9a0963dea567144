"""BCAST prefix tracking against default (per-key) tracking, for the near cache's channel.

The near cache follows writes with ``CLIENT TRACKING ON BCAST PREFIX <prefix>:``: every
process is sent every write under the prefix. Default tracking (``CLIENT TRACKING ON``,
what ``REDIRECT <id>`` would give the data connections) sends a process only the keys it
has read since their last invalidation, at the price of a server-side table of who read
what. This measures both on one private server with ``--clients`` tracking connections
(50, 100, 200), each standing for an app process that keeps its own hot set (``--hot``
keys drawn from a Zipf distribution over ``--keys``) and re-reads what it lost; a writer
sets ``--writes`` keys from the same distribution, ``--batch`` per pipeline (1: one per
event-loop turn of the server, as independent requests make them). Per mode: invalidation
messages per write, keys pushed per write, server CPU per 1,000 writes (writes, pushes and
re-reads together), and the tracking table (keys and memory).

Usage::

    .venv/bin/python -m loadtests trackmodes          # results: loadtests/results/trackmodes.json
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Sequence
from typing import Any

import redis
import redis.connection

from loadtests.harness import RESULTS
from loadtests.harness.args import bench_parser, parse, write_json
from loadtests.harness.tables import environment, environment_line, text_table
from tests.support.servers import PrivateServer, server_binary

PREFIX = "tm"


class Client:
    """One tracking connection (RESP3) and the hot set it keeps; counts what it is sent."""

    def __init__(self, port: int, mode: str, hot: set[str]) -> None:
        connection: Any = redis.connection.Connection
        self.conn = connection(port=port, protocol=3, socket_timeout=10)
        self.conn.connect()
        self.messages = self.keys = 0
        self.conn._parser.set_invalidation_push_handler(self._on_push)
        self.hot, self.lost = hot, set(hot)
        args = ("BCAST", "PREFIX", f"{PREFIX}:") if mode == "bcast" else ()
        self.call("CLIENT", "TRACKING", "ON", *args)

    def _on_push(self, message: Any) -> None:
        self.messages += 1
        keys = [k.decode() for k in message[1] or ()]
        self.keys += len(keys)
        self.lost.update(key for key in keys if key in self.hot)

    def call(self, *args: Any) -> Any:
        self.conn.send_command(*args)
        return self.conn.read_response()

    def drain(self) -> None:
        while self.conn.can_read(timeout=0):
            self.conn.read_response(push_request=True)

    def reread(self) -> None:
        """Read back every hot key it lost (so default tracking follows it again)."""
        if self.lost:
            keys = sorted(self.lost)
            self.lost.clear()
            for key in keys:
                self.conn.send_command("GET", key)
            for _ in keys:
                self.conn.read_response()
            self.drain()


def cpu(admin: redis.Redis) -> float:
    info = admin.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def measure(port: int, mode: str, clients: int, args: Any) -> dict[str, float]:
    admin = redis.Redis(port=port)
    admin.flushall()
    cdf = list(itertools.accumulate(1 / r**args.zipf for r in range(1, args.keys + 1)))
    rng = random.Random(1)

    def draw() -> str:
        return f"{PREFIX}:{{k{bisect.bisect_left(cdf, rng.random() * cdf[-1])}}}"

    with admin.pipeline(transaction=False) as pipe:
        for n in range(args.keys):
            pipe.set(f"{PREFIX}:{{k{n}}}", "v")
        pipe.execute()
    memory = admin.info("memory")["used_memory"]
    fleet = []
    for _ in range(clients):
        hot: set[str] = set()
        while len(hot) < args.hot:
            hot.add(draw())
        fleet.append(Client(port, mode, hot))
    for client in fleet:
        client.reread()
    tracked = admin.info("stats").get("tracking_total_keys", 0)
    table = admin.info("memory")["used_memory"] - memory
    before, messages, keys = cpu(admin), 0, 0
    for client in fleet:
        client.messages = client.keys = 0
    writes = [draw() for _ in range(args.writes)]
    for first in range(0, len(writes), args.batch):
        with admin.pipeline(transaction=False) as pipe:
            for key in writes[first : first + args.batch]:
                pipe.set(key, "w")
            pipe.execute()
        for client in fleet:
            client.drain()
            client.reread()
    spent = cpu(admin) - before
    for client in fleet:
        messages += client.messages
        keys += client.keys
        client.conn.disconnect()
    admin.close()
    return {
        "messages_per_write": messages / len(writes),
        "keys_per_write": keys / len(writes),
        "server_cpu_ms_per_1000_writes": spent * 1000 / len(writes) * 1000,
        "tracked_keys": float(tracked),
        "tracking_table_kib": table / 1024,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = bench_parser(
        "trackmodes",
        "BCAST prefix tracking vs default per-key tracking: messages, server CPU, memory.",
        json=RESULTS / "trackmodes.json",
        url=False,
    )
    parser.add_argument("--clients", default="50,100,200", help="tracking connections (50,100,200)")
    parser.add_argument("--keys", type=int, default=10_000, help="keys under the prefix (10,000)")
    parser.add_argument("--hot", type=int, default=500, help="keys each process keeps (500)")
    parser.add_argument("--writes", type=int, default=2000, help="writes per measurement (2000)")
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent (1.1)")
    parser.add_argument(
        "--batch",
        type=int,
        default=1,
        help="writes per pipeline (1: one per event-loop turn, as separate requests make them;"
        " BCAST merges the keys of one turn into one message)",
    )
    args = parse(parser, argv, at_least_1=("keys", "hot", "writes", "batch"))
    counts = [int(n) for n in args.clients.split(",")]
    rows, results = [], []
    with PrivateServer(binary=server_binary(args.server)) as server:
        admin = redis.Redis(port=server.port)
        env = environment(admin.info("server"), server.url, packages=("redis", "hiredis"))
        admin.close()
        print(environment_line(env), flush=True)
        for clients in counts:
            for mode in ("bcast", "default"):
                got = measure(server.port, mode, clients, args)
                results.append({"clients": clients, "mode": mode, **got})
                rows.append({
                    "clients": str(clients),
                    "mode": mode,
                    "msgs/write": f"{got['messages_per_write']:.1f}",
                    "keys/write": f"{got['keys_per_write']:.1f}",
                    "cpu ms/1k writes": f"{got['server_cpu_ms_per_1000_writes']:.0f}",
                    "tracked keys": f"{got['tracked_keys']:.0f}",
                    "table KiB": f"{got['tracking_table_kib']:.0f}",
                })  # fmt: skip
                print(text_table(rows[-1:]), flush=True)
    print(text_table(rows))
    names = ("clients", "keys", "hot", "writes", "zipf", "batch")
    settings = {k: getattr(args, k) for k in names}
    write_json(args.json, {"environment": env, "settings": settings, "results": results})
