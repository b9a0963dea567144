"""Run the public HTTP caching test suite against the response cache and score it.

What it does
------------
1. Finds the suite: ``CACHE_TESTS_DIR`` (a checkout of ``http-tests/cache-tests`` with its
   ``npm install`` done), else the npm package ``http-cache-tests@0.4.5`` installed into
   ``~/.cache/cachekit/cache-tests`` (``CACHEKIT_CACHE_DIR`` moves it), never into the
   repository: the suite's code is not ours to commit.
2. Starts the suite's origin server (node) and :mod:`loadtests.conformance.app` (the
   forwarding app under the middleware, "follow the origin" options) under uvicorn, both
   on free loopback ports.
3. Runs the suite's CLI against the middleware ``--runs`` times (a fresh cache each run),
   and scores each JSON with the suite's own rules (``score.mjs``: ``determineTestResult``
   with dependencies, as cache-tests.fyi counts them), required and optimal tests apart.
4. Prints a table: cachekit's runs beside the reverse proxies and CDNs whose published
   results ship in the suite's ``results/``; and the required tests still failing.

Exit status 1 when a run scores below ``--floor-required`` / ``--floor-optimal`` or the
runs disagree (the score must be deterministic).

Usage::

    python loadtests/conformance/runner.py                 # npm 0.4.5, 3 runs
    CACHE_TESTS_DIR=~/src/cache-tests python loadtests/conformance/runner.py --runs 1
    python loadtests/conformance/runner.py --json out.json --floor-required 120
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

__all__ = ["NPM_PACKAGE", "Score", "ensure_suite", "main", "run_suite"]

NPM_PACKAGE: Final = "http-cache-tests@0.4.5"
HERE: Final = Path(__file__).resolve().parent
ROOT: Final = HERE.parent.parent
Score = dict[str, Any]


def cache_dir() -> Path:
    """Where the npm copy of the suite is installed (outside the repository)."""
    base = os.environ.get("CACHEKIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "cachekit"
    )
    return Path(base) / "cache-tests"


def ensure_suite() -> Path:
    """The suite's folder: ``CACHE_TESTS_DIR``, else the npm package (installed once)."""
    given = os.environ.get("CACHE_TESTS_DIR")
    if given:
        suite = Path(given).expanduser().resolve()
        if not (suite / "tests" / "index.mjs").exists():
            raise SystemExit(f"CACHE_TESTS_DIR={given} holds no tests/index.mjs")
        if not (suite / "node_modules").exists():
            subprocess.run(
                ["npm", "install", "--omit=dev", "--no-audit", "--no-fund"],
                cwd=suite,
                check=True,
            )
        return suite
    home = cache_dir()
    suite = home / "node_modules" / "http-cache-tests"
    if not (suite / "tests" / "index.mjs").exists():
        home.mkdir(parents=True, exist_ok=True)
        if not (home / "package.json").exists():
            (home / "package.json").write_text('{"name": "cachekit-cache-tests", "private": true}')
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--silent", NPM_PACKAGE],
            cwd=home,
            check=True,
        )
    return suite


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not listen on port {port}")


def _engine(suite: Path) -> Path:
    """The folder of the CLI and server: ``test-engine/`` in newer checkouts."""
    return suite / "test-engine" if (suite / "test-engine").exists() else suite


@contextmanager
def _process(args: list[str], env: dict[str, str], cwd: Path, log: Path) -> Iterator[Any]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_suite(suite: Path, runs: int, workdir: Path, cache_url: str) -> list[Score]:
    """Each run's score (a fresh middleware and cache per run)."""
    engine = _engine(suite)
    origin_port = _free_port()
    env = {**os.environ, "npm_config_port": str(origin_port), "npm_config_protocol": "http"}
    env["npm_config_pidfile"] = str(workdir / "origin.pid")
    scores: list[Score] = []
    with _process(
        ["node", str(engine / "server" / "server.mjs")], env, suite, workdir / "origin.log"
    ) as origin:
        _wait_port(origin_port, origin, "the suite's origin server")
        for n in range(runs):
            port = _free_port()
            app_env = {
                **os.environ,
                "CONFORMANCE_ORIGIN": f"http://127.0.0.1:{origin_port}",
                "CONFORMANCE_CACHE_URL": cache_url,
            }
            args = [sys.executable, str(HERE / "app.py"), str(port)]
            with _process(args, app_env, ROOT, workdir / f"app{n}.log") as app:
                _wait_port(port, app, "the middleware's server")
                cli_env = {
                    **os.environ,
                    "npm_config_base": f"http://127.0.0.1:{port}",
                    "npm_config_id": "",
                    "npm_package_config_id": "",
                }
                done = subprocess.run(
                    ["node", "--no-warnings", str(engine / "cli.mjs")],
                    cwd=suite,
                    env=cli_env,
                    capture_output=True,
                    check=True,
                    timeout=900,
                )
            results = workdir / f"results{n}.json"
            results.write_bytes(done.stdout)
            scores.append(_score(suite, [str(results)])[str(results)])
    return scores


def _score(suite: Path, args: list[str]) -> dict[str, Score]:
    done = subprocess.run(
        ["node", str(HERE / "score.mjs"), str(suite), *args],
        capture_output=True,
        check=True,
        text=True,
    )
    scores: dict[str, Score] = json.loads(done.stdout)
    return scores


def _table(scores: list[Score], published: dict[str, Score]) -> str:
    rows = [(f"cachekit run {i + 1}", s) for i, s in enumerate(scores)]
    rows += sorted(published.items(), key=lambda item: -item[1]["required"][0])
    width = max(len(name) for name, _ in rows)
    lines = [f"{'cache':<{width}}  required  optimal", f"{'-' * width}  --------  -------"]
    for name, s in rows:
        req, opt = s["required"], s["optimal"]
        lines.append(f"{name:<{width}}  {req[0]:>3}/{req[1]:<4}  {opt[0]:>3}/{opt[1]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: run, score, print; exit 1 below a floor or on disagreeing runs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the scores here")
    parser.add_argument("--keep", type=Path, help="keep results and server logs here")
    parser.add_argument("--floor-required", type=int, default=0)
    parser.add_argument("--floor-optimal", type=int, default=0)
    parser.add_argument("--cache-url", default=os.environ.get("CONFORMANCE_CACHE_URL", "memory://"))
    args = parser.parse_args(argv)
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not on PATH: the suite needs Node.js and npm")
    suite = ensure_suite()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        scores = run_suite(suite, args.runs, args.keep, args.cache_url)
    else:
        with tempfile.TemporaryDirectory(prefix="cachekit-conformance-") as tmp:
            scores = run_suite(suite, args.runs, Path(tmp), args.cache_url)
    published = _score(suite, ["--published"])
    print(f"suite: {suite}")
    print(_table(scores, published))
    failing = scores[-1]["failing"]
    print(f"\nrequired tests not passed ({len(failing)}):")
    for test_id, (kind, detail, name) in sorted(failing.items()):
        print(f"  {test_id} [{kind}] {name} -- {detail}")
    if args.json:
        args.json.write_text(json.dumps({"runs": scores, "published": published}, indent=1))
    status = 0
    figures = {(tuple(s["required"]), tuple(s["optimal"])) for s in scores}
    if len(figures) > 1:
        print("runs disagree: the score is not deterministic", file=sys.stderr)
        status = 1
    for s in scores:
        if s["required"][0] < args.floor_required or s["optimal"][0] < args.floor_optimal:
            print(
                f"below the floor: required {s['required'][0]} < {args.floor_required} or "
                f"optimal {s['optimal'][0]} < {args.floor_optimal}",
                file=sys.stderr,
            )
            status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
