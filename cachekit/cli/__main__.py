"""``python -m cachekit.cli``: the same as the ``cachekit`` console script.

Usage::

    python -m cachekit.cli stats --url redis://127.0.0.1:6379/0
"""

import sys

from cachekit.cli import main

sys.exit(main())
