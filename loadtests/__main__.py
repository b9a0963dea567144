"""``python -m loadtests``: every load-test scenario, then ``loadtests/results/REPORT.md``.

The benchmark scripts of this directory import their helpers as top-level modules
(``from support import ...``), being run as ``python loadtests/bench_x.py``; the suite's
modules do the same, so this entry point puts the directory on ``sys.path`` first.
See ``suite.py`` for the options.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> None:
    """Run the suite with the command line's arguments."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from suite import main as run_suite

    run_suite()


if __name__ == "__main__":
    main()
