"""The documentation's own code, run: the getting-started app, and the site's build.

A reader who follows the getting-started page copies its ``app.py`` verbatim; this test
runs exactly that block (read from the page) against the test server, so a page that
drifts from the library fails here, not in front of a user.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import httpx
import pytest

from cachekit.testing import assert_hits

DOCS = Path(__file__).resolve().parents[2] / "docs"


def page_block(page: str, after: str) -> str:
    """The first fenced Python block of ``page`` after the line containing ``after``."""
    text = (DOCS / page).read_text()
    start = text.index(after)
    match = re.search(r"```python\n(.*?)```", text[start:], re.DOTALL)
    assert match is not None, f"no Python block after {after!r} in {page}"
    return match.group(1)


async def test_the_getting_started_app_serves_a_cached_route(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    source = page_block("getting-started.md", "Save as `app.py`")
    assert 'prefix="shop"' in source
    source = source.replace('prefix="shop"', f'prefix="{prefix}"')  # isolated per test
    module = types.ModuleType("app")
    exec(compile(source, "app.py", "exec"), module.__dict__)  # noqa: S102 - the page's own code
    app, cache = module.app, module.cache
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as client:
            first = await client.get("/products/5")
            assert first.status_code == 200
            assert first.json() == {"id": 5, "name": "Product 5", "price": 9.5}
            with assert_hits(cache, hits=1, misses=0):
                again = await client.get("/products/5")
            assert again.json() == first.json()
            assert (await client.get("/products/500")).status_code == 404


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path: Path) -> None:
    mkdocs = Path(sys.executable).with_name("mkdocs")
    if not mkdocs.exists() and shutil.which("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install 'cachekit-redis[docs]')")
    result = subprocess.run(
        [str(mkdocs), "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=DOCS.parent,
        capture_output=True,
        text=True,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "reference" / "cache" / "index.html").exists()
