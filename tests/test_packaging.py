"""The distribution users install: built, installed into a clean virtualenv, used.

A runtime dependency missing from ``pyproject.toml`` or a package file left out of the
wheel fails here, not on a user's machine.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent(
    """
    import asyncio, dataclasses, sys, uuid
    from cachekit import Cache

    @dataclasses.dataclass
    class Order:
        id: uuid.UUID
        total: float

    cache = Cache.from_url(sys.argv[1], prefix=sys.argv[2])
    calls = []

    @cache.cached(ttl=60, key="order:{n}")
    async def order(n: int) -> Order:
        calls.append(n)
        return Order(uuid.UUID(int=n), 9.5)

    async def main() -> None:
        first, second = await order(1), await order(1)
        assert first == second and type(second) is Order, second
        assert calls == [1], calls
        await cache.invalidate("order:1")
        await cache.close()
        print("ok", cache.stats()["hits"])

    asyncio.run(main())
    """
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)],
        check=True,
        timeout=300,
    )
    (built,) = out.glob("cachekit_redis-*.whl")
    return built


def test_the_wheel_holds_the_package_and_its_metadata(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        meta_dir = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(f"{meta_dir}/METADATA").decode()
        entry_points = archive.read(f"{meta_dir}/entry_points.txt").decode()
    assert "cachekit/py.typed" in names
    assert "cachekit/flow/codecs.py" in names
    assert "cachekit/pytest_plugin.py" in names
    assert not any(n.startswith(("tests/", "loadtests/", "demo_app/")) for n in names)
    assert "Name: cachekit-redis" in metadata
    assert "Requires-Dist: msgspec" in metadata
    assert "cachekit = cachekit.pytest_plugin" in entry_points
    assert "cachekit = cachekit.cli:main" in entry_points


def test_installed_with_only_the_redis_extra_it_caches(
    wheel: Path, tmp_path: Path, redis_url: str, prefix: str
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            f"{wheel}[redis]",
        ],
        check=True,
        timeout=600,
    )
    script = tmp_path / "use.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [str(python), str(script), redis_url, prefix],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # not the repository: the installed package is imported
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok", "1"]
    cli = subprocess.run(
        [str(venv / "bin" / "cachekit"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert cli.returncode == 0, cli.stderr
