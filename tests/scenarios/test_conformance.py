"""The response cache on the public HTTP caching test suite, in CI (issue 18).

Runs ``loadtests/conformance/runner.py`` once on the npm package ``http-cache-tests@0.4.5``
(installed into ``~/.cache/cachekit``, never into the repository) and fails below the
floor measured when the runner was added: three identical runs scored these figures.
``CACHE_TESTS_DIR`` is ignored here: the floor belongs to the npm package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FLOOR_REQUIRED = 141  # of 165 (npm 0.4.5); Apache httpd's published figure is 119
FLOOR_OPTIMAL = 56  # of 95

pytestmark = pytest.mark.slow


@pytest.mark.timeout(900)
def test_the_npm_suite_scores_at_least_the_floor() -> None:
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"the HTTP caching test suite needs Node.js and npm: {missing} not on PATH")
    env = {k: v for k, v in os.environ.items() if k != "CACHE_TESTS_DIR"}
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "loadtests" / "conformance" / "runner.py"),
            "--runs",
            "1",
            "--floor-required",
            str(FLOOR_REQUIRED),
            "--floor-optimal",
            str(FLOOR_OPTIMAL),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "cachekit run 1" in done.stdout
