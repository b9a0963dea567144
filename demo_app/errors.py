"""How the shop answers errors: JSON bodies with the status each failure deserves.

* :class:`InvalidInput` (the shop's own checks) and cachekit's ``InvalidCartInput``: 422;
* ``CartUnavailable`` (the cart's database is down, nothing was changed): 503;
* Starlette's ``HTTPException`` (unknown routes, wrong methods): its own status.

Usage::

    app = Starlette(routes=routes, exception_handlers=HANDLERS)
    raise InvalidInput("page must be a whole number")
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cachekit import CartUnavailable, InvalidCartInput

__all__ = ["HANDLERS", "InvalidInput", "parse_object"]

MAX_BODY_BYTES = 4096


class InvalidInput(ValueError):
    """A request body or parameter the shop refuses; answered with 422."""


def parse_object(body: bytes, *, allowed: set[str]) -> dict[str, Any]:
    """A small JSON object from a request body, with keys among ``allowed``.

    Raises :class:`InvalidInput` for anything else: too big, not JSON, not an object,
    unknown keys.
    """
    if len(body) > MAX_BODY_BYTES:
        raise InvalidInput(f"a request body is at most {MAX_BODY_BYTES} bytes")
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidInput("the request body must be a JSON object") from None
    if type(data) is not dict:
        raise InvalidInput("the request body must be a JSON object")
    unknown = set(data) - allowed
    if unknown:
        raise InvalidInput(f"unknown fields {sorted(unknown)}; allowed: {sorted(allowed)}")
    return data


async def _unprocessable(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": str(exc)}, status_code=422)


async def _unavailable(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": "5"})


async def _http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


HANDLERS: Mapping[Any, Any] = {
    InvalidInput: _unprocessable,
    InvalidCartInput: _unprocessable,
    CartUnavailable: _unavailable,
    HTTPException: _http,
}
"""Exception handlers for ``Starlette(exception_handlers=...)``."""
