"""MkDocs hook: publish the benchmark charts from loadtests/results/ beside the pages.

The charts are written by the load tests into ``loadtests/results/``; the pages link them
by that path (as the README does), and this hook adds them to the site without a copy in
``docs/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent


def on_files(files: Files, config: Any) -> Files:
    """Add every chart under ``loadtests/results`` to the site's files."""
    for chart in sorted((ROOT / "loadtests" / "results").glob("*.png")):
        path = chart.relative_to(ROOT).as_posix()
        files.append(File(path, str(ROOT), config["site_dir"], config["use_directory_urls"]))
    return files
