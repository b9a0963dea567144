"""Starlette's ``TestClient``, imported the same way on every supported Starlette.

Starlette 1.x prefers httpx2 for its TestClient and warns (``StarletteDeprecationWarning``)
when it falls back to httpx, which the project tests with; the warning is not what any
test is about. Starlette before 1.0 (the oldest supported) has neither the warning nor its
class.
"""

from __future__ import annotations

import warnings

from starlette import exceptions as starlette_exceptions

with warnings.catch_warnings():
    warnings.simplefilter(
        "ignore",
        getattr(starlette_exceptions, "StarletteDeprecationWarning", DeprecationWarning),
    )
    from starlette.testclient import TestClient

__all__ = ["TestClient"]
