"""``request.session``: a mapping that loads its record on first use.

A request that never touches its session costs no I/O; one that only reads it writes
nothing back (the load itself restarts the idle timeout). The record is fetched the first
time the app reads the mapping - through the cache's sync face, a blocking round trip -
unless the app awaited :func:`~cachekit.sessions.load_session` before, which async
handlers should do to keep the event loop free.

Usage::

    session = await load_session(request)
    session["cart_owner"] = owner
    user = request.session.get("user")
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

from cachekit.exceptions import BackendError, NotConfigured, SessionError
from cachekit.sessions.store import RedisSessionStore, SessionRecord

__all__ = ["Session"]


class Session(MutableMapping[str, Any]):
    """The session of one request; put at ``scope["session"]`` by the middleware.

    **Attributes:** ``id`` (the stored session's id, ``None`` while there is none),
    ``accessed`` (whether the app looked at it), ``available`` (``False`` when its
    record could not be read: it then reads as empty and is not saved).

    Usage::

        request.session["user"] = "alice"       # saved when the response starts
        request.session.clear()                 # logout: record deleted, cookie expired
    """

    __slots__ = ("_cleared", "_data", "_failed", "_record", "_sid", "_store", "client_sid")

    def __init__(self, store: RedisSessionStore, sid: str | None) -> None:
        self._store = store
        self._sid = sid
        self._data: dict[str, Any] | None = None
        self._record: SessionRecord | None = None
        self._failed = False
        self._cleared = False
        self.client_sid: str | None = None  # the id whose record the client's cookie named

    @property
    def id(self) -> str | None:
        """The id of the stored record; ``None`` until the session is first saved."""
        return None if self._record is None else self._record.sid

    @property
    def accessed(self) -> bool:
        """Whether the record was loaded (the response then varies by cookie)."""
        return self._data is not None

    @property
    def ended(self) -> bool:
        """Whether this request ended the session: it emptied one that was there, or cleared.

        Only then is the cookie expired; a save that finds the record already gone (a
        logout or login in another tab got there first) leaves the cookie alone.
        """
        return (
            self._data is not None
            and not self._data
            and (self._cleared or self.client_sid is not None)
        )

    @property
    def available(self) -> bool:
        """``False`` when the record could not be read (Redis down)."""
        return not self._failed

    async def load(self) -> Session:
        """Fetch the record without blocking the event loop (once per request)."""
        if self._data is None:
            if self._sid is None:
                self._adopt(None)
            else:
                try:
                    self._adopt(await self._store.load(self._sid))
                except BackendError as exc:
                    self._fail(exc)
        return self

    def _loaded(self) -> dict[str, Any]:
        if self._data is None:
            if self._sid is None:
                self._adopt(None)
            else:
                try:
                    self._adopt(self._store.sync.load(self._sid))
                except BackendError as exc:
                    self._fail(exc)
                except NotConfigured as exc:
                    raise SessionError(
                        "the session was read before it was loaded and the cache has no sync "
                        "client: await load_session(request) first"
                    ) from exc
        assert self._data is not None
        return self._data

    def _adopt(self, record: SessionRecord | None) -> None:
        self._record = record
        self.client_sid = None if record is None else record.sid
        self._data = {} if record is None else record.data

    def _fail(self, exc: BackendError) -> None:
        # Read as empty and never saved: writing would overwrite what could not be seen.
        self._failed = True
        self._data = {}
        log = self._store.cache._bound().ctx.log
        log.warning(("session-load", type(exc)), "cachekit: session unavailable (%s)", exc)

    async def regenerate(self) -> None:
        """Move the data to a new id and delete the old record (after login)."""
        await self.load()
        if not self._failed:
            assert self._data is not None
            self._record = await self._store.regenerate(self._record, self._data)

    async def commit(self) -> None:
        """Save what changed (the middleware calls this as the response starts)."""
        if self._data is None:
            return
        if self._failed:
            if self._cleared and self._sid is not None:
                await self._store.delete(self._sid)  # a logout still ends it, if it can
            return
        self._record = await self._store.save(self._record, self._data)

    @property
    def cookie_sid(self) -> str | None:
        """The well-formed id the request's cookie carried, issued by us or not."""
        return self._sid

    def clear(self) -> None:
        """Remove every key: the session ends (record deleted, cookie expired)."""
        self._cleared = True
        self._loaded().clear()

    def __getitem__(self, key: str) -> Any:
        return self._loaded()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if type(key) is not str:
            raise TypeError(f"session keys are strings, got {type(key).__name__}")
        self._loaded()[key] = value

    def __delitem__(self, key: str) -> None:
        del self._loaded()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaded())

    def __len__(self) -> int:
        return len(self._loaded())

    def __repr__(self) -> str:
        state = "unloaded" if self._data is None else f"{len(self._data)} keys"
        return f"<Session id={self.id!r} {state}>"
