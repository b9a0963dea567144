"""The ASGI vocabulary the middleware speaks, as Starlette's ``types.py`` spells it.

Usage::

    async def app(scope: Scope, receive: Receive, send: Send) -> None: ...
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from cachekit.middleware.capture import Message, Receive, Scope, Send

__all__ = ["ASGIApp", "Message", "Receive", "Scope", "Send"]

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
