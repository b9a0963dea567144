"""Invalidate cache entries after a SQLAlchemy commit, and add new rows to Bloom filters.

The write path of DESIGN.md: update the database, *then* delete the cache entries.
:func:`invalidate_on_commit` does that for the rows of one mapped class::

    from cachekit.contrib.sqlalchemy import invalidate_on_commit

    invalidate_on_commit(
        SessionLocal,                          # a sessionmaker, Session class or AsyncSession class
        Product,
        keys=lambda p: [f"product:{p.id}"],    # logical keys, as the decorators build them
        tags=lambda p: ["catalog"],            # tags to invalidate (cache.invalidate_tags)
        bloom="products",                      # inserted rows are added to this Bloom filter
        bloom_value=lambda p: p.id,            # (default: the primary key)
        cache=cache,                           # default: cachekit.contrib.set_default_cache()
    )

The logical keys must be the ones the cached functions use: ``get_product.key(p.id)``
builds exactly the key of ``get_product(p.id)``, escaping included, so
``keys=lambda p: [get_product.key(p.id)]`` cannot drift from the decorator's template.

**When.** The rows are *collected at flush time*, when the ORM writes them: a row inserted
(``after_insert``: its primary key is known by then), updated with at least one changed
column (``after_update``), or deleted (``before_delete``: the row can still be loaded).
``keys``, ``tags`` and ``bloom_value`` are computed right then, because a deleted or
expired object may not be readable after the commit. For an update they are computed on
the new values *and* on the old ones (a view of the object with the previous value of
each changed column), so ``f"product-by-slug:{p.slug}"`` drops the old slug's entry too;
the old value of a column is only known when it was loaded before being changed
(``mapped_column(..., active_history=True)`` makes the ORM load it). The invalidations
are *performed after the commit* (``after_commit`` of the outermost transaction): every
key is invalidated with ``cache.sync.invalidate`` (a delete that also voids the rebuild
lease, so a load that read the old row cannot write it back), the tags with
``cache.sync.invalidate_tags``, and the ``bloom_value`` of inserted rows (and of updated
rows whose value changed) is added with ``bloom.sync.add_many`` - before the keys are
invalidated, so a reader let through by a fresh key is not turned away by the filter.
Nothing happens before the commit; a rollback discards what was collected. Rows of the
class and of its subclasses are collected. Deleted rows stay in the Bloom filter (it cannot
forget): their identifiers become ordinary misses, null-cached if the function says so.

**Transactions.** What a flush collects belongs to the innermost active transaction of the
session - a savepoint (``begin_nested()``) or the outermost transaction - and is kept in
``session.info`` across any number of flushes:

* commit of the outermost transaction: everything still kept is invalidated, once;
* rollback of the outermost transaction, or the session closed without a commit: it is
  all discarded;
* a savepoint released (its ``commit()``): its rows stay, to be invalidated when (and if)
  the outer transaction commits;
* a savepoint rolled back: only its own rows (and those of savepoints inside it) are
  discarded; the rows of the enclosing transaction are still invalidated at its commit.

A session joined to an external connection-level transaction
(``join_transaction_mode``) commits when ``Session.commit()`` returns, as far as this
module can see: if the outer transaction is rolled back later, the keys were invalidated
for nothing (a wasted miss, never a stale value).

**Bulk statements** (``session.execute(update(...))`` and friends) do not go through the
flush; the ``do_orm_execute`` event sees them, and the rows are known when they plainly
are: an executemany whose parameter dictionaries hold the primary key (ORM bulk UPDATE
by primary key, bulk INSERT with explicit keys), or an UPDATE/DELETE whose WHERE clause
pins the primary key to literals (``Product.id == 5``, ``Product.id.in_([1, 2])``, ``AND``
and ``OR`` of those; bound parameters given to ``execute()`` count as literals). The
callables then receive a :class:`RowView` carrying only the columns present (the primary
key, plus the other parameters of an executemany row); reading any other attribute
raises ``AttributeError`` - before the statement runs - so make such keys depend on the
primary key only. Not seen, and logged once per registration as a warning: an UPDATE or
DELETE by any other predicate, a bulk INSERT without primary keys, and everything that
bypasses the ORM session events - ``connection.execute(text(...))``, Core statements on
the ``Table``, the legacy ``bulk_*_mappings``/``bulk_save_objects``, triggers, other
programs. For those, call :func:`invalidate_rows` (queued for the next commit of that
session) or :func:`invalidate_now` (at once).

**AsyncSession.** SQLAlchemy runs an ``AsyncSession``'s ORM work in the sync ``Session``
it wraps, inside a greenlet on the event loop's thread, and fires the events there.
Invalidations are performed *in place, with the blocking* ``cache.sync`` *calls*: the
cache needs a sync client (``Cache.from_url`` and ``Cache.configure(url)`` make both) and
the loop is blocked for one Redis round trip per key (each bounded by the client's short
timeouts; when Redis is down cachekit queues the delete for retry instead of waiting).
This was chosen over scheduling a task on the running loop because it keeps
read-your-writes: when ``await session.commit()`` returns, the entries are gone, so the
same request (or a test) reading right after its own write cannot get the old value back;
a task could also still be pending, or be lost, when the loop shuts down. For an
``AsyncSession`` class (or ``async_sessionmaker``) the events are attached to its
``sync_session_class``, which is the plain ``Session`` class unless one is configured, so
the writes of plain sync sessions are then seen as well (more invalidations, never fewer).

**Failures.** Nothing that goes wrong talking to Redis breaks a commit: ``invalidate``
itself never raises for an unreachable server (it queues a retry), and anything else
raised while performing the invalidations (a Bloom add that fails, a bug) is caught and
logged on the ``cachekit.contrib.sqlalchemy`` logger - the data is committed either way.
Mistakes *before* the commit are loud instead: a ``keys`` callable that raises (or reads
a column a :class:`RowView` lacks), or no usable cache (none given, no default, or not
configured), fails the flush or the statement, so data never changes while the cache
cannot be told.

**Default cache.** With ``cache=None`` the cache is the one passed most recently to
:func:`set_default_cache` (re-exported from :mod:`cachekit.contrib`), looked up at each
flush, so registrations may be declared at import time and the cache configured later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeAlias, cast

from sqlalchemy.ext.asyncio import (
    AsyncSession,
    async_scoped_session,
    async_sessionmaker,
)
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from cachekit.bloom.filter import Bloom
from cachekit.cache import Cache
from cachekit.contrib import default_cache, set_default_cache
from cachekit.contrib.sqlalchemy.invalidation import _REGISTRY, Invalidation, M
from cachekit.contrib.sqlalchemy.rows import RowView
from cachekit.contrib.sqlalchemy.tracking import _work_for
from cachekit.contrib.sqlalchemy.work import _Batch, _merge, _perform, _perform_async
from cachekit.exceptions import ConfigurationError

__all__ = [
    "Invalidation",
    "RowView",
    "ainvalidate_now",
    "default_cache",
    "invalidate_now",
    "invalidate_on_commit",
    "invalidate_rows",
    "set_default_cache",
]

# The integration's logger: every module of this package logs under this one name.
logger = logging.getLogger("cachekit.contrib.sqlalchemy")

# What invalidate_on_commit() accepts as the source of sessions.
SessionTarget: TypeAlias = (
    sessionmaker[Any]
    | type[Session]
    | type[AsyncSession]
    | async_sessionmaker[Any]
    | scoped_session[Any]
    | async_scoped_session[Any]
)


def _session_class(target: object) -> type[Session]:
    """The sync Session class whose events the target's sessions fire."""
    if isinstance(target, scoped_session | async_scoped_session):
        return _session_class(target.session_factory)
    if isinstance(target, sessionmaker):
        return cast(type[Session], target.class_)
    if isinstance(target, async_sessionmaker):
        configured = target.kw.get("sync_session_class")
        return cast(type[Session], configured or target.class_.sync_session_class)
    if isinstance(target, type) and issubclass(target, AsyncSession):
        return target.sync_session_class
    if isinstance(target, type) and issubclass(target, Session):
        return target
    raise ConfigurationError(
        "invalidate_on_commit() needs a sessionmaker, a Session subclass, an AsyncSession "
        f"subclass or an async_sessionmaker, not {target!r}"
    )


# ----------------------------------------------------------------------- public API


def invalidate_on_commit(
    session: SessionTarget,
    model: type[M],
    *,
    keys: Callable[[M], Iterable[str]] | None = None,
    tags: Callable[[M], Iterable[str]] | None = None,
    bloom: str | Bloom | None = None,
    bloom_value: Callable[[M], object] | None = None,
    cache: Cache | None = None,
    double_delete: float | None = None,
) -> Invalidation[M]:
    """After each successful commit, invalidate the cache entries of the rows written.

    Rows of ``model`` (and subclasses) inserted, updated or deleted by sessions of
    ``session`` are collected at flush time; after the outermost commit their ``keys`` are
    invalidated (delete + void the rebuild lease), their ``tags`` invalidated, and inserted
    rows' ``bloom_value`` added to the Bloom filter ``bloom``. Never before the commit,
    never after a rollback. See the module documentation for savepoints, bulk statements,
    ``AsyncSession`` and failures.

    **Parameters:**

    * **session** - a ``sessionmaker``, a ``Session`` subclass, an ``AsyncSession``
      subclass or an ``async_sessionmaker`` (or a scoped session of one).
    * **model** - the mapped class.
    * **keys** - ``row -> logical keys``, e.g. ``lambda p: [get_product.key(p.id)]``.
    * **tags** - ``row -> tags`` to invalidate (``cache.invalidate_tags``).
    * **bloom** - a Bloom filter, or its name, that inserted rows are added to. A name is
      looked up with ``cache.bloom(name)`` at commit: declare the filter with its
      geometry first (``cache.bloom(name, capacity=..., error_rate=...)``).
    * **bloom_value** - ``row -> the identifier`` added; default: the primary key.
    * **cache** - default: the one given to :func:`set_default_cache`, looked up at flush.
    * **double_delete** - seconds after which each key is invalidated once more (replica
      lag); default: the cache's setting.

    Returns the :class:`Invalidation`, whose ``remove()`` stops it.

    Usage::

        invalidate_on_commit(SessionLocal, Product,
                             keys=lambda p: [f"product:{p.id}"], tags=lambda p: ["catalog"],
                             bloom="products", bloom_value=lambda p: p.id, cache=cache)

        with SessionLocal.begin() as session:
            session.get(Product, 5).price = 10
        # committed: "product:5" is a miss everywhere, "catalog" entries too
    """
    hook = Invalidation(
        _session_class(session),
        model,
        keys=keys,
        tags=tags,
        bloom=bloom,
        bloom_value=bloom_value,
        cache=cache,
        double_delete=double_delete,
    )
    hook._listen()
    return hook


def _sync_session(session: Session | AsyncSession) -> Session:
    return session.sync_session if isinstance(session, AsyncSession) else session


def _hooks(model: type[Any], session: Session | None = None) -> list[Invalidation[Any]]:
    found = [
        hook
        for hook in list(_REGISTRY)
        if issubclass(model, hook.model)
        and (session is None or isinstance(session, hook.session_class))
    ]
    if not found:
        where = "" if session is None else f" on {type(session).__name__} sessions"
        raise ConfigurationError(
            f"no invalidate_on_commit() registration for {model.__name__}{where}"
        )
    return found


def invalidate_rows(
    session: Session | AsyncSession,
    model: type[Any],
    rows: Iterable[object],
    *,
    inserted: bool = False,
) -> None:
    """Queue ``rows`` for invalidation at the next commit of ``session``.

    For what the events cannot see: raw SQL, updates by other predicates, bulk inserts
    without primary keys (pass the new rows with ``inserted=True``, from ``RETURNING``).
    ``rows``: mapped objects, mappings of attribute values (:class:`RowView`), or primary
    keys (a tuple for a composite key). Every registration of ``model`` for this session
    computes its keys and tags from them; ``inserted=True`` also adds their Bloom values.
    They belong to the session's innermost transaction, like flushed rows: a rollback
    discards them, and with no transaction active they wait for the next one.

    Usage::

        session.execute(text("UPDATE product SET price = price * 2 WHERE sale"))
        invalidate_rows(session, Product, [5, 6, 7])
        session.commit()                       # product:5, :6, :7 invalidated now
    """
    sync = _sync_session(session)
    rows = list(rows)
    for hook in _hooks(model, sync):
        for cache, part in hook._batch(rows, inserted=inserted).items():
            _work_for(sync, cache).merge(part)


def invalidate_now(model: type[Any], rows: Iterable[object], *, inserted: bool = False) -> None:
    """Invalidate ``rows`` now, for every registration of ``model`` (blocking).

    For changes made outside any session this module watches (another program, a
    migration). From async code, prefer :func:`ainvalidate_now`.

    Usage::

        invalidate_now(Product, [5, 6])
    """
    rows = list(rows)
    todo: _Batch = {}
    for hook in _hooks(model):
        _merge(todo, hook._batch(rows, inserted=inserted))
    for cache, work in todo.items():
        _perform(cache, work)


async def ainvalidate_now(
    model: type[Any], rows: Iterable[object], *, inserted: bool = False
) -> None:
    """The async twin of :func:`invalidate_now`: the same work on the caches' async faces.

    Usage::

        await ainvalidate_now(Product, [5, 6])
    """
    rows = list(rows)
    todo: _Batch = {}
    for hook in _hooks(model):
        _merge(todo, hook._batch(rows, inserted=inserted))
    for cache, work in todo.items():
        await _perform_async(cache, work)
