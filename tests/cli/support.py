"""What both command-line test modules share: a command's result, and running one in-process."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from cachekit.cli import main


@dataclass
class Result:
    """A finished ``cachekit`` command: exit code and what it printed."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return orjson.loads(self.out)


Cli = Callable[..., Result]


def in_process(url: str, prefix: str, capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run ``cachekit ARGS --url URL --prefix PREFIX`` through :func:`main`, output captured."""

    def run(*args: str) -> Result:
        code = main([*args, "--url", url, "--prefix", prefix])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run
