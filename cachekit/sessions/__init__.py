"""Server-side sessions and a shopping cart that loses nothing.

* :class:`SessionMiddleware` (pure ASGI) puts a lazily loaded :class:`Session` at
  ``request.session``, stored by a :class:`RedisSessionStore` under strict, server-issued
  ids; :func:`regenerate_session` on login, :func:`load_session` to fetch it without
  blocking the event loop; :func:`get_session_id` and :func:`get_session_metadata` like
  starsessions' helpers. ``request.session`` is a ``dict``.
* :class:`CartStore` keeps carts in Redis hashes, every change committed to SQL first.

Usage::

    from cachekit.sessions import CartStore, RedisSessionStore, SessionMiddleware

    app.add_middleware(SessionMiddleware, store=RedisSessionStore(cache))
    cart = CartStore(cache, engine)
    await cart.add(request.session["owner"], "SKU-1", 2)
"""

from cachekit.sessions.cart import CartStore, SyncCartStore
from cachekit.sessions.cart_rules import CartLimits
from cachekit.sessions.crypto import new_encryption_key
from cachekit.sessions.middleware import (
    SessionMiddleware,
    get_session_id,
    get_session_metadata,
    load_session,
    regenerate_session,
)
from cachekit.sessions.session import Session, SessionTypeError
from cachekit.sessions.store import (
    RedisSessionStore,
    SessionMetadata,
    SessionRecord,
    SyncSessionStore,
    is_session_id,
    new_session_id,
)

__all__ = [
    "CartLimits",
    "CartStore",
    "RedisSessionStore",
    "Session",
    "SessionMetadata",
    "SessionMiddleware",
    "SessionRecord",
    "SessionTypeError",
    "SyncCartStore",
    "SyncSessionStore",
    "get_session_id",
    "get_session_metadata",
    "is_session_id",
    "load_session",
    "new_encryption_key",
    "new_session_id",
    "regenerate_session",
]
