"""Per-session, per-transaction bookkeeping, and the session events that act on it.

What a flush collects is kept in ``session.info``, keyed by the innermost active
transaction - a savepoint or the outermost transaction; ``None`` holds what
:func:`~cachekit.contrib.sqlalchemy.invalidate_rows` queued while none was active. The
lifecycle hooks, installed once per session class, decide its fate:

* a new outermost transaction takes what was queued for the next one;
* commit of the outermost transaction: everything still kept is performed, once;
* a savepoint released: its rows stay, for the outer commit;
* a savepoint rolled back: only its own rows (and those of savepoints inside it) go;
* the outermost transaction over (rolled back, or the session closed): all of it goes.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import TypeAlias, cast

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from cachekit.cache import Cache
from cachekit.contrib.sqlalchemy.work import _Batch, _merge, _perform, _Work

_INFO_KEY = "cachekit.sqlalchemy"

_Pending: TypeAlias = dict["SessionTransaction | None", _Batch]


def _pending(session: Session) -> _Pending:
    """This session's collected work, by transaction (``None``: for the next one)."""
    pending = session.info.get(_INFO_KEY)
    if pending is None:
        pending = session.info[_INFO_KEY] = {}
    return cast(_Pending, pending)


def _work_for(session: Session, cache: Cache) -> _Work:
    """Where a change made now in ``session`` is kept: its innermost transaction's batch."""
    transaction = session.get_nested_transaction() or session.get_transaction()
    return _pending(session).setdefault(transaction, {}).setdefault(cache, _Work())


# --------------------------------------------------------------- session lifecycle


def _after_transaction_create(session: Session, transaction: SessionTransaction) -> None:
    """A new outermost transaction takes what was queued while none was active."""
    if transaction.parent is None:
        pending = session.info.get(_INFO_KEY)
        if pending and None in pending:
            queued = pending.pop(None)
            pending[transaction] = _merge(queued, pending.get(transaction, {}))


def _after_commit(session: Session) -> None:
    """Perform what the committed outermost transaction collected."""
    if session.get_nested_transaction() is not None:
        return  # a savepoint was released: its rows wait for the outer commit
    pending = session.info.get(_INFO_KEY)
    if not pending:
        return
    todo: _Batch = {}
    for transaction in [t for t in pending if t is not None]:
        _merge(todo, pending.pop(transaction))
    for cache, work in todo.items():
        _perform(cache, work)


def _after_soft_rollback(session: Session, previous: SessionTransaction) -> None:
    """Discard what the rolled-back transaction (or savepoint) and those inside it kept."""
    pending = session.info.get(_INFO_KEY)
    if not pending:
        return
    # A rolled-back flush subtransaction rolls back its savepoint or outermost transaction.
    boundary = previous
    while boundary.parent is not None and not boundary.nested:
        boundary = boundary.parent
    for transaction in [t for t in pending if t is not None]:
        if boundary.parent is None or _inside(transaction, boundary):
            del pending[transaction]


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    """The outermost transaction is over (committed, rolled back or closed): forget it."""
    if transaction.parent is None:
        pending = session.info.get(_INFO_KEY)
        if pending:
            for kept in [t for t in pending if t is not None]:
                del pending[kept]


def _inside(transaction: SessionTransaction, ancestor: SessionTransaction) -> bool:
    current: SessionTransaction | None = transaction
    while current is not None:
        if current is ancestor:
            return True
        current = current.parent
    return False


_LIFECYCLE: tuple[tuple[str, Callable[..., None]], ...] = (
    ("after_transaction_create", _after_transaction_create),
    ("after_commit", _after_commit),
    ("after_soft_rollback", _after_soft_rollback),
    ("after_transaction_end", _after_transaction_end),
)


# Classes whose transaction hooks are installed. Not event.contains(): SQLAlchemy's
# registry is keyed by id(), which a new class may reuse after an old one was collected.
_WATCHED: weakref.WeakSet[type[Session]] = weakref.WeakSet()
_WATCHED_LOCK = threading.Lock()


def _watch_lifecycle(session_class: type[Session]) -> None:
    """Install the transaction hooks on ``session_class`` once (they are idempotent)."""
    with _WATCHED_LOCK:
        if session_class in _WATCHED:
            return
        for name, hook in _LIFECYCLE:
            event.listen(session_class, name, hook)
        _WATCHED.add(session_class)
