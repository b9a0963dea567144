"""Run worker processes that start at the same instant: the tests' multi-process harness.

Each worker is ``python -m <module> <args...>`` from the project root. It pushes onto the
Redis list ``ready`` when it is set up, blocks on ``BLPOP go``, does its work and prints
one JSON report as its last line of output. :func:`run_fleet` waits until every worker is
ready, releases them together and returns their reports in start order.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis

ROOT = Path(__file__).resolve().parents[2]
READY_WITHIN = 30.0
DONE_WITHIN = 60.0


def run_fleet(
    module: str,
    argvs: Sequence[Sequence[str]],
    raw: redis.Redis,
    *,
    ready: str,
    go: str,
    before_go: Callable[[], None] = lambda: None,
    after_go: Callable[[], None] = lambda: None,
) -> list[dict[str, Any]]:
    """Start one ``module`` worker per argument list, release them together, their reports."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", module, *argv],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for argv in argvs
    ]
    try:
        deadline = time.monotonic() + READY_WITHIN
        while int(raw.llen(ready)) < len(procs):
            for proc in procs:
                if proc.poll() is not None:
                    _, err = proc.communicate()
                    pytest.fail(f"worker exited early ({proc.returncode}): {err.decode()}")
            if time.monotonic() > deadline:
                pytest.fail(f"workers did not get ready in {READY_WITHIN:g} s")
            time.sleep(0.01)
        before_go()
        raw.rpush(go, *["go"] * len(procs))
        after_go()
        reports = []
        for proc in procs:
            out, err = proc.communicate(timeout=DONE_WITHIN)
            assert proc.returncode == 0, err.decode()
            reports.append(json.loads(out.decode().strip().splitlines()[-1]))
        return reports
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
