"""Worker processes for the multi-process benchmarks (``herd``, ``consistency``).

Each worker is a ``multiprocessing`` "spawn" process running ``target(spec, conn)``, with
a pipe to the coordinator; messages are ``(kind, payload)`` tuples, and a worker that
fails sends ``("error", traceback)`` (:func:`run_worker` does that for an ``async``
body). Every wait is bounded.

Usage::

    with Fleet(worker_main, specs, "herd") as fleet:
        fleet.collect("ready", timeout=60)
        fleet.broadcast(("run", start))
        results = fleet.collect("result", timeout=120)
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import traceback
from collections.abc import Callable, Coroutine, Sequence
from contextlib import suppress
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from types import TracebackType
from typing import Any, Self

__all__ = ["Fleet", "WorkerError", "receive", "run_worker"]


class WorkerError(Exception):
    """A worker failed, died, said something unexpected or did not answer in time."""


def receive(conn: Connection, timeout: float) -> Any:
    """The coordinator's next message, waiting at most ``timeout`` seconds (worker side)."""
    if not conn.poll(timeout):
        raise TimeoutError(f"no word from the coordinator for {timeout:.0f}s")
    return conn.recv()


def run_worker(
    body: Callable[[Any, Connection], Coroutine[Any, Any, None]], spec: Any, conn: Connection
) -> None:
    """``asyncio.run(body(spec, conn))`` in a worker; a failure goes to the pipe.

    A process target must be a module-level function (spawn pickles it), so each benchmark
    has its own ``def worker_main(spec, conn): run_worker(serve, spec, conn)``.
    """
    try:
        asyncio.run(body(spec, conn))
    except BaseException:
        with suppress(Exception):
            conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


class Fleet:
    """One spawned process per spec, each with a pipe; a context manager that stops them."""

    def __init__(
        self, target: Callable[[Any, Connection], None], specs: Sequence[Any], name: str
    ) -> None:
        self.ctx = multiprocessing.get_context("spawn")
        self.target, self.specs, self.name = target, specs, name
        self.processes: list[SpawnProcess] = []
        self.conns: list[Connection] = []

    def __enter__(self) -> Self:
        try:
            for index, spec in enumerate(self.specs):
                ours, theirs = self.ctx.Pipe(duplex=True)
                process = self.ctx.Process(
                    target=self.target,
                    args=(spec, theirs),
                    name=f"{self.name}-{index}",
                    daemon=True,
                )
                process.start()
                theirs.close()
                self.processes.append(process)
                self.conns.append(ours)
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

    def reply(self, index: int, expected: str, timeout: float) -> dict[str, Any]:
        """Worker ``index``'s next message, which must be ``expected``."""
        conn = self.conns[index]
        if not conn.poll(max(0.0, timeout)):
            raise WorkerError(f"worker {index} did not answer in {timeout:.0f}s ({expected})")
        try:
            kind, payload = conn.recv()
        except EOFError:
            raise WorkerError(f"worker {index} died ({self.processes[index].exitcode})") from None
        if kind == "error":
            raise WorkerError(f"worker {index} failed:\n{payload}")
        if kind != expected:
            raise WorkerError(f"worker {index} said {kind!r}, expected {expected!r}")
        result: dict[str, Any] = payload
        return result

    def collect(self, expected: str, timeout: float) -> list[dict[str, Any]]:
        """Every worker's next message, all within ``timeout`` seconds."""
        end = time.monotonic() + timeout
        return [self.reply(i, expected, end - time.monotonic()) for i in range(len(self.conns))]

    def send(self, index: int, message: tuple[Any, ...]) -> None:
        self.conns[index].send(message)

    def broadcast(self, message: tuple[Any, ...]) -> None:
        for conn in self.conns:
            conn.send(message)

    def shutdown(self, grace: float = 10.0) -> None:
        """Ask every worker to stop; terminate the ones still running after ``grace``."""
        for conn in self.conns:
            with suppress(Exception):
                conn.send(("stop",))
        end = time.monotonic() + grace
        for process in self.processes:
            process.join(max(0.0, end - time.monotonic()))
            if process.is_alive():
                process.terminate()
                process.join(2.0)
        for conn in self.conns:
            conn.close()
        self.processes.clear()
        self.conns.clear()
