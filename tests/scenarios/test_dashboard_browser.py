"""The dashboard in a real browser: headless Chromium renders it after traffic (issue 9).

The demo runs as ``python -m demo_app`` (uvicorn) in a subprocess on a free port, on the
test Redis under this test's prefix and a fresh SQLite database, with a 1 s product TTL so
that a second round of reads is served stale. After some traffic (hits, misses, Bloom
rejects, stale hits), Chromium loads ``/dashboard`` with a virtual-time budget, so its
script has fetched ``/dashboard/data`` and filled the page before the DOM is dumped; the
counters it shows must be the non-zero ones. A second run saves a screenshot to
``loadtests/results/dashboard.png``.

Needs Debian's ``chromium`` package (``/usr/bin/chromium``); skipped without it.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = ROOT / "loadtests" / "results" / "dashboard.png"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium)"
    ),
]


def _lines(stream: IO[str], into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line)


@pytest.fixture
def demo_url(redis_url: str, prefix: str, tmp_path: Path) -> Iterator[str]:
    """The URL of a demo served by uvicorn in a subprocess, stopped afterwards."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(
        PORT="0",
        REDIS_URL=redis_url,
        CACHE_PREFIX=prefix,
        SEED_PRODUCTS="500",
        PRODUCT_TTL="1",
        PRODUCT_STALE="120",
        PYTHONUNBUFFERED="1",
    )
    with (tmp_path / "stderr.txt").open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "demo_app"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    assert process.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=_lines, args=(process.stdout, lines), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / "stderr.txt").read_text()
            assert time.monotonic() < deadline, "the demo printed no URL within 60 s"
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line.startswith("cachekit demo: "):
                yield line.split(": ", 1)[1].strip()
                break
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(timeout=10)
        process.stdout.close()


def _traffic(url: str) -> None:
    """Hits, misses, Bloom rejects, then (after the 1 s TTL) stale hits."""
    with httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(3):
            for product_id in range(1, 21):
                assert client.get(f"/products/{product_id}").status_code == 200
        for product_id in range(1_000_000, 1_000_010):
            assert client.get(f"/products/{product_id}").status_code == 404
        for page in (1, 2, 1, 2):
            assert client.get(f"/products?page={page}").status_code == 200
        time.sleep(1.3)  # past the TTL (1 s ± 10 %): the next reads are stale hits
        for product_id in range(1, 6):
            assert client.get(f"/products/{product_id}").status_code == 200


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=4000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def _shown(dom: str, element: str) -> str:
    match = re.search(rf'id="{re.escape(element)}"[^>]*>([^<]*)<', dom)
    assert match is not None, f"no #{element} in the rendered page"
    return match.group(1).strip()


def _count(dom: str, element: str) -> int:
    text = _shown(dom, element)
    assert re.fullmatch(r"[\d,]+", text), f"#{element} shows {text!r}, not a number"
    return int(text.replace(",", ""))


def test_the_dashboard_shows_live_counters_in_chromium(demo_url: str, tmp_path: Path) -> None:
    _traffic(demo_url)
    page = f"{demo_url}/dashboard"

    result = _chromium("--dump-dom", page, profile=tmp_path / "profile")
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert "Cache dashboard" in dom
    assert "data-updated" in dom  # the script ran and applied a fetch of /dashboard/data
    assert _count(dom, "c-hits") >= 40
    assert _count(dom, "c-misses") >= 20
    assert _count(dom, "c-bloom_rejects") >= 10
    assert _count(dom, "c-stale_hits") >= 1
    assert _count(dom, "db-queries") > 0
    assert _count(dom, "c-lock_waits") >= 0  # shown, even when no caller had to wait
    ratio = _shown(dom, "hit-ratio")
    assert re.fullmatch(r"\d+\.\d %", ratio), ratio
    assert 0 < float(ratio.split()[0]) < 100
    assert dom.count("data-counter=") >= 12  # the table of every counter

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    shot = _chromium(
        f"--screenshot={SCREENSHOT}",
        "--window-size=1280,900",
        "--hide-scrollbars",
        page,
        profile=tmp_path / "profile",
    )
    assert shot.returncode == 0, shot.stderr[-2000:]
    data = SCREENSHOT.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 20_000  # a rendered page, not a blank one
