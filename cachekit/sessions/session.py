"""``request.session``: a ``dict`` that loads its record on first use.

:class:`Session` is a real ``dict``: ``isinstance(request.session, dict)`` holds, and
once loaded every JSON encoder (``json.dumps``, Starlette's ``JSONResponse``, orjson)
serializes it as the plain mapping it is. What it adds to a dict:

* **Lazy loading.** A request that never touches its session costs no I/O; one that
  only reads it writes nothing back (the load itself restarts the idle timeout). The
  record is fetched the first time the app gets ``request.session`` or reads the
  mapping - through the cache's sync face, a blocking round trip - unless the app
  awaited :func:`~cachekit.sessions.load_session` before, which async handlers should do
  to keep the event loop free (or pass ``autoload=True`` to the middleware).
* **Change tracking by value.** The save compares each key's JSON with what was loaded,
  so in-place changes of nested values (``session["cart"].append(sku)``) are saved too.
* **JSON only, checked early.** Keys are ``str`` and a value that is not JSON is refused
  where it is assigned, with :class:`SessionTypeError` (a ``TypeError``); keys of nested
  mappings that are numbers, booleans or ``None`` are stored as strings, like
  ``json.dumps`` does (``{42: 1}`` comes back as ``{"42": 1}``).

Usage::

    session = await load_session(request)
    session["cart_owner"] = owner
    user = request.session.get("user")
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from cachekit.exceptions import BackendError, NotConfigured, SessionError
from cachekit.sessions.store import RedisSessionStore, SessionMetadata, SessionRecord

if TYPE_CHECKING:
    from _collections_abc import dict_items, dict_keys, dict_values

__all__ = ["Session", "SessionTypeError"]

_MISSING: Any = object()


class SessionTypeError(SessionError, TypeError):
    """A key or value that cannot be stored in a session (not a ``str`` key, not JSON).

    Raised where it is assigned, so the traceback points at the line that did it.
    """


def _check(key: object, value: object) -> None:
    if type(key) is not str:
        raise SessionTypeError(f"session keys are strings, got {type(key).__name__}")
    try:
        orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError as exc:
        raise SessionTypeError(f"session value {key!r} is not JSON: {exc}") from None


class Session(dict[str, Any]):
    """The session of one request; put at ``scope["session"]`` by the middleware.

    **Attributes:** ``id`` (the session's id: the cookie's well-formed id until the load,
    then the stored record's, ``None`` while there is none), ``accessed`` (whether it was
    loaded), ``available`` (``False`` when its record could not be read: it then reads as
    empty and is not saved), ``metadata`` (a
    :class:`~cachekit.sessions.SessionMetadata`, once a stored session was loaded).

    Usage::

        request.session["user"] = "alice"       # saved when the response starts
        request.session.clear()                 # logout: record deleted, cookie expired
        JSONResponse({"session": request.session})
    """

    __slots__ = (
        "_cleared",
        "_failed",
        "_loaded",
        "_record",
        "_sid",
        "_store",
        "client_sid",
    )

    def __init__(self, store: RedisSessionStore, sid: str | None) -> None:
        super().__init__()
        self._store = store
        self._sid = sid
        self._loaded = False
        self._record: SessionRecord | None = None
        self._failed = False
        self._cleared = False
        self.client_sid: str | None = None  # the id whose record the client's cookie named

    # ------------------------------------------------------------------ state

    @property
    def id(self) -> str | None:
        """The session's id: the cookie's until loaded, then the stored record's.

        Before the load it is the well-formed id the cookie carried, which may name no
        record (expired, forged): the load decides, and an unknown id is never adopted.
        """
        if not self._loaded:
            return self._sid
        return None if self._record is None else self._record.sid

    @property
    def accessed(self) -> bool:
        """Whether the record was loaded (the response then varies by cookie)."""
        return self._loaded

    @property
    def ended(self) -> bool:
        """Whether this request ended the session: it emptied one that was there, or cleared.

        Only then is the cookie expired; a save that finds the record already gone (a
        logout or login in another tab got there first) leaves the cookie alone.
        """
        return (
            self._loaded
            and not dict.__len__(self)
            and (self._cleared or self.client_sid is not None)
        )

    @property
    def available(self) -> bool:
        """``False`` when the record could not be read (Redis down)."""
        return not self._failed

    @property
    def metadata(self) -> SessionMetadata | None:
        """Created, last access, expiries of the stored session loaded in this request."""
        record = self._record if self._loaded else None
        return None if record is None or record.sid != self.client_sid else record.metadata

    @property
    def rolled(self) -> bool:
        """Whether the load found the cookie due to be re-sent (rolling expiry)."""
        record = self._record
        return record is not None and record.rolled and record.sid == self.client_sid

    @property
    def cookie_sid(self) -> str | None:
        """The well-formed id the request's cookie carried, issued by us or not."""
        return self._sid

    # ---------------------------------------------------------------- loading

    async def load(self) -> Session:
        """Fetch the record without blocking the event loop (once per request)."""
        if not self._loaded:
            if self._sid is None:
                self._adopt(None)
            else:
                try:
                    self._adopt(await self._store.load(self._sid))
                except BackendError as exc:
                    self._fail(exc)
        return self

    def _ensure(self) -> None:
        if self._loaded:
            return
        if self._sid is None:
            self._adopt(None)
            return
        try:
            self._adopt(self._store.sync.load(self._sid))
        except BackendError as exc:
            self._fail(exc)
        except NotConfigured as exc:
            raise SessionError(
                "the session was read before it was loaded and the cache has no sync "
                "client: await load_session(request) first, or use autoload=True"
            ) from exc

    def _adopt(self, record: SessionRecord | None) -> None:
        self._record = record
        self.client_sid = None if record is None else record.sid
        self._loaded = True
        if record is not None:
            dict.update(self, record.data)

    def _fail(self, exc: BackendError) -> None:
        # Read as empty and never saved: writing would overwrite what could not be seen.
        self._failed = True
        self._loaded = True
        log = self._store.cache.bound().ctx.log
        log.warning(("session-load", type(exc)), "cachekit: session unavailable (%s)", exc)

    async def regenerate(self) -> None:
        """Move the data to a new id and delete the old record (after login)."""
        await self.load()
        if not self._failed:
            self._record = await self._store.regenerate(self._record, dict.copy(self))

    async def commit(self) -> None:
        """Save what changed (the middleware calls this as the response starts)."""
        if not self._loaded:
            return
        if self._failed:
            if self._cleared and self._sid is not None:
                await self._store.delete(self._sid)  # a logout still ends it, if it can
            return
        self._record = await self._store.save(self._record, dict.copy(self))

    # ---------------------------------------------------- the mapping, loaded first

    def clear(self) -> None:
        """Remove every key: the session ends (record deleted, cookie expired)."""
        self._cleared = True
        self._ensure()
        dict.clear(self)

    def __getitem__(self, key: str) -> Any:
        self._ensure()
        return dict.__getitem__(self, key)

    def __setitem__(self, key: str, value: Any) -> None:
        _check(key, value)
        self._ensure()
        dict.__setitem__(self, key, value)

    def __delitem__(self, key: str) -> None:
        self._ensure()
        dict.__delitem__(self, key)

    def __iter__(self) -> Iterator[str]:
        self._ensure()
        return dict.__iter__(self)

    def __reversed__(self) -> Iterator[str]:
        self._ensure()
        return dict.__reversed__(self)

    def __len__(self) -> int:
        self._ensure()
        return dict.__len__(self)

    def __contains__(self, key: object) -> bool:
        self._ensure()
        return dict.__contains__(self, key)

    def __eq__(self, other: object) -> bool:
        self._ensure()
        return dict.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        self._ensure()
        return dict.__ne__(self, other)

    def __or__(self, other: Any) -> dict[str, Any]:  # type: ignore[override]
        self._ensure()
        return dict(dict.__or__(self, other))

    def __ror__(self, other: Any) -> dict[str, Any]:  # type: ignore[override]
        self._ensure()
        return dict(dict.__ror__(self, other))

    def __ior__(self, other: Any) -> Session:  # type: ignore[override]
        self.update(other)
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        # copy.copy / pickle give a plain dict of the data, never the request-bound state.
        self._ensure()
        return (dict, (dict.copy(self),))

    def get(self, key: str, default: Any = None) -> Any:
        self._ensure()
        return dict.get(self, key, default)

    def keys(self) -> dict_keys[str, Any]:
        self._ensure()
        return dict.keys(self)

    def values(self) -> dict_values[str, Any]:
        self._ensure()
        return dict.values(self)

    def items(self) -> dict_items[str, Any]:
        self._ensure()
        return dict.items(self)

    def copy(self) -> dict[str, Any]:
        """A plain ``dict`` of the data."""
        self._ensure()
        return dict.copy(self)

    def pop(self, key: str, default: Any = _MISSING) -> Any:
        self._ensure()
        if default is _MISSING:
            return dict.pop(self, key)
        return dict.pop(self, key, default)

    def popitem(self) -> tuple[str, Any]:
        self._ensure()
        return dict.popitem(self)

    def setdefault(self, key: str, default: Any = None) -> Any:
        self._ensure()
        if not dict.__contains__(self, key):
            self[key] = default
        return dict.__getitem__(self, key)

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        """Like ``dict.update``; every key and value is checked as in ``session[k] = v``."""
        pairs: Iterable[tuple[Any, Any]]
        if isinstance(other, Mapping) or hasattr(other, "keys"):
            pairs = [(k, other[k]) for k in other.keys()]  # noqa: SIM118 - the dict protocol
        else:
            pairs = list(other)
        pairs = [*pairs, *kwargs.items()]
        for key, value in pairs:  # all checked before any is set
            _check(key, value)
        self._ensure()
        dict.update(self, pairs)

    def __repr__(self) -> str:
        state = f"{dict.__len__(self)} keys" if self._loaded else "unloaded"
        return f"<Session id={self.id!r} {state}>"
