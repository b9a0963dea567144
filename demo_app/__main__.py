"""``python -m demo_app``: serve the shop with uvicorn and print its URL, once.

The URL line (``cachekit demo: http://127.0.0.1:8000``) is printed when the server is
listening, so a script can wait for it and then connect. Ctrl-C or SIGTERM shut the shop
down cleanly: the cache is closed, the engine disposed of, the embedded Valkey stopped.
A shop that cannot start (a port in use, a database that does not answer) exits with
uvicorn's status 3 after logging why.
"""

from __future__ import annotations

import dataclasses
import socket
import sys

import uvicorn

from demo_app.app import create_app
from demo_app.settings import Settings

__all__ = ["DemoServer", "main"]


class DemoServer(uvicorn.Server):
    """uvicorn's server, announcing the shop's URL on stdout once it listens."""

    def __init__(self, config: uvicorn.Config, settings: Settings) -> None:
        super().__init__(config)
        self.settings = settings

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start as uvicorn does, then print the one URL line."""
        await super().startup(sockets=sockets)
        if self.started:
            print(f"cachekit demo: {self.url()}", flush=True)

    def url(self) -> str:
        """The URL of the port actually bound (``PORT=0`` picks a free one)."""
        for listener in self.servers:
            for sock in listener.sockets:
                port = int(sock.getsockname()[1])
                return dataclasses.replace(self.settings, port=port).public_url
        return self.settings.public_url


def main() -> int:
    """Entry point; the exit status."""
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"cachekit demo: {exc}", file=sys.stderr)
        return 2
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="warning",  # the URL line is the one line a person needs
        lifespan="on",
    )
    try:
        DemoServer(config, settings).run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its clean shutdown
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
