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

import itertools
import logging
import operator
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeAlias, TypeVar, cast

from sqlalchemy import event
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import (
    AsyncSession,
    async_scoped_session,
    async_sessionmaker,
)
from sqlalchemy.orm import (
    InstanceState,
    Mapper,
    ORMExecuteState,
    Session,
    SessionTransaction,
    object_session,
    scoped_session,
    sessionmaker,
)
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import (
    BinaryExpression,
    BindParameter,
    BooleanClauseList,
    ColumnElement,
    Grouping,
)

from cachekit.bloomfilter import Bloom
from cachekit.cache import Cache
from cachekit.contrib import default_cache, set_default_cache
from cachekit.exceptions import BackendError, ConfigurationError, NotConfigured

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

logger = logging.getLogger("cachekit.contrib.sqlalchemy")

M = TypeVar("M")

# What invalidate_on_commit() accepts as the source of sessions.
SessionTarget: TypeAlias = (
    sessionmaker[Any]
    | type[Session]
    | type[AsyncSession]
    | async_sessionmaker[Any]
    | scoped_session[Any]
    | async_scoped_session[Any]
)

_INFO_KEY = "cachekit.sqlalchemy"


# --------------------------------------------------------------------------- rows


class RowView:
    """A row known only by some of its columns (a bulk statement, :func:`invalidate_rows`).

    What ``keys``, ``tags`` and ``bloom_value`` receive instead of a mapped object when
    no object took part: an object with the known columns as attributes. Reading another
    attribute raises ``AttributeError`` saying which columns are known.

    Usage::

        row = RowView(Product, {"id": 5})
        row.id        # 5
        row.name      # AttributeError: ... only id is known
    """

    def __init__(self, model: type[Any], values: Mapping[str, Any]) -> None:
        self.__dict__.update(values)
        self.__dict__["_RowView__model"] = model
        self.__dict__["_RowView__known"] = tuple(values)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        model: type[Any] = self.__dict__["_RowView__model"]
        known = ", ".join(self.__dict__["_RowView__known"]) or "nothing"
        raise AttributeError(
            f"{model.__name__}.{name} is not known for this row: it comes from a bulk "
            f"statement or invalidate_rows(), and only {known} is known; make keys, tags "
            "and bloom_value depend on the primary key, or pass the rows yourself with "
            "invalidate_rows()"
        )

    def __repr__(self) -> str:
        model: type[Any] = self.__dict__["_RowView__model"]
        known: tuple[str, ...] = self.__dict__["_RowView__known"]
        fields = ", ".join(f"{name}={self.__dict__[name]!r}" for name in known)
        return f"<RowView {model.__name__} {fields}>"


class _OldView:
    """The object as it was before a flush: the old values of its changed columns."""

    def __init__(self, obj: object, old: Mapping[str, Any]) -> None:
        self.__dict__["_OldView__obj"] = obj
        self.__dict__.update(old)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_OldView__obj"], name)


# --------------------------------------------------------------------------- work


@dataclass
class _Work:
    """What to do in one cache after a commit."""

    keys: dict[str, float | None] = field(default_factory=dict)  # key -> double_delete
    tags: set[str] = field(default_factory=set)
    blooms: dict[str | Bloom, list[object]] = field(default_factory=dict)

    def add_key(self, key: str, double_delete: float | None) -> None:
        if key not in self.keys or self.keys[key] is None:
            self.keys[key] = double_delete
        elif double_delete is not None:
            self.keys[key] = max(double_delete, cast(float, self.keys[key]))

    def merge(self, other: _Work) -> None:
        for key, delay in other.keys.items():
            self.add_key(key, delay)
        self.tags |= other.tags
        for bloom, items in other.blooms.items():
            self.blooms.setdefault(bloom, []).extend(items)


_Batch: TypeAlias = dict[Cache, _Work]
_Pending: TypeAlias = dict["SessionTransaction | None", _Batch]


def _merge(into: _Batch, batch: _Batch) -> _Batch:
    for cache, work in batch.items():
        into.setdefault(cache, _Work()).merge(work)
    return into


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


# --------------------------------------------------------------------- performing


def _bloom(cache: Cache, ref: str | Bloom) -> Bloom:
    return ref if isinstance(ref, Bloom) else cache.bloom(ref)


def _failed(what: str, exc: Exception) -> None:
    if isinstance(exc, BackendError):
        logger.warning("cachekit: %s failed after a commit (%s)", what, exc)
    else:
        logger.error("cachekit: %s failed after a commit", what, exc_info=exc)


def _perform(cache: Cache, work: _Work) -> None:
    """Bloom adds, then key invalidations, then tags; blocking; never raises."""
    for ref, items in work.blooms.items():
        try:
            _bloom(cache, ref).sync.add_many(items)
        except Exception as exc:
            _failed(f"adding {len(items)} identifier(s) to Bloom filter {ref!r}", exc)
    for key, delay in work.keys.items():
        try:
            cache.sync.invalidate(key, double_delete=delay)
        except Exception as exc:
            _failed(f"invalidating {key!r}", exc)
    if work.tags:
        try:
            cache.sync.invalidate_tags(*sorted(work.tags))
        except Exception as exc:
            _failed(f"invalidating tags {sorted(work.tags)}", exc)


async def _perform_async(cache: Cache, work: _Work) -> None:
    """:func:`_perform` on the cache's async face."""
    for ref, items in work.blooms.items():
        try:
            await _bloom(cache, ref).add_many(items)
        except Exception as exc:
            _failed(f"adding {len(items)} identifier(s) to Bloom filter {ref!r}", exc)
    for key, delay in work.keys.items():
        try:
            await cache.invalidate(key, double_delete=delay)
        except Exception as exc:
            _failed(f"invalidating {key!r}", exc)
    if work.tags:
        try:
            await cache.invalidate_tags(*sorted(work.tags))
        except Exception as exc:
            _failed(f"invalidating tags {sorted(work.tags)}", exc)


# ------------------------------------------------------------------ bulk statements

_Resolve: TypeAlias = Callable[[BindParameter[Any]], tuple[bool, Any]]


def _bind_value(params: Mapping[str, Any] | None) -> _Resolve:
    """How a bound parameter's value is found: the execute() parameters, else its value."""

    def resolve(bind: BindParameter[Any]) -> tuple[bool, Any]:
        if params is not None and bind.key in params:
            return True, params[bind.key]
        if bind.value is None and bind.callable is None:
            return False, None  # bindparam("x") with its value given elsewhere
        return True, bind.effective_value

    return resolve


def _pk_index(expr: object, pk: Sequence[ColumnElement[Any]]) -> int | None:
    if not isinstance(expr, ColumnElement):
        return None
    for index, column in enumerate(pk):
        if column in expr.proxy_set:
            return index
    return None


def _restrict(
    clause: object, pk: Sequence[ColumnElement[Any]], resolve: _Resolve
) -> dict[int, list[Any]] | None:
    """``{pk column index: the values it may take}`` under ``clause``; ``None``: unknown."""
    if isinstance(clause, Grouping):
        return _restrict(clause.element, pk, resolve)
    if isinstance(clause, BooleanClauseList):
        parts = [_restrict(part, pk, resolve) for part in clause.clauses]
        if clause.operator is operators.and_:
            found: dict[int, list[Any]] = {}
            for part in parts:
                for index, values in (part or {}).items():
                    previous = found.get(index)
                    found[index] = (
                        values if previous is None else [v for v in previous if v in values]
                    )
            return found or None
        if clause.operator is operators.or_ and parts and all(parts):
            known = [cast(dict[int, list[Any]], part) for part in parts]
            common = set.intersection(*(set(part) for part in known))
            return {index: [v for part in known for v in part[index]] for index in common} or None
        return None
    if isinstance(clause, BinaryExpression) and clause.operator in (operator.eq, operators.in_op):
        for column, other in ((clause.left, clause.right), (clause.right, clause.left)):
            position = _pk_index(column, pk)
            if position is None or not isinstance(other, BindParameter):
                continue
            known_value, value = resolve(other)
            if not known_value:
                return None
            if clause.operator is operators.in_op:
                return {position: list(value)} if other.expanding else None
            return {position: [value]}
    return None


def _pk_values(
    where: object, pk: Sequence[ColumnElement[Any]], params: Mapping[str, Any] | None
) -> list[tuple[Any, ...]] | None:
    """The primary keys ``where`` restricts a statement to, or ``None`` when unknown."""
    if where is None:
        return None
    found = _restrict(where, pk, _bind_value(params))
    if found is None or len(found) != len(pk):
        return None
    return list(itertools.product(*(found[index] for index in range(len(pk)))))


# --------------------------------------------------------------------- registration

_REGISTRY: weakref.WeakSet[Invalidation[Any]] = weakref.WeakSet()


class Invalidation(Generic[M]):
    """One :func:`invalidate_on_commit` registration: its listeners and what it computes.

    Usage::

        hook = invalidate_on_commit(SessionLocal, Product, keys=lambda p: [f"product:{p.id}"])
        hook.keys_for(product)          # ['product:5']
        hook.invalidate_now([5])        # at once, outside any transaction
        hook.remove()                   # stop listening
    """

    def __init__(
        self,
        session_class: type[Session],
        model: type[M],
        *,
        keys: Callable[[M], Iterable[str]] | None,
        tags: Callable[[M], Iterable[str]] | None,
        bloom: str | Bloom | None,
        bloom_value: Callable[[M], object] | None,
        cache: Cache | None,
        double_delete: float | None,
    ) -> None:
        mapper = sa_inspect(model, raiseerr=False)
        if not isinstance(mapper, Mapper):
            raise ConfigurationError(f"{model!r} is not a mapped class")
        if keys is None and tags is None and bloom is None:
            raise ConfigurationError("invalidate_on_commit() needs keys=, tags= or bloom=")
        if bloom_value is not None and bloom is None:
            raise ConfigurationError("bloom_value= needs bloom= (the filter's name)")
        self.session_class = session_class
        self.model = model
        self.cache = cache
        self.double_delete = double_delete
        self._keys = keys
        self._tags = tags
        self._bloom = bloom
        self._bloom_value = bloom_value
        self._mapper: Mapper[Any] = mapper
        self._pk = list(mapper.primary_key)
        self._pk_names = [mapper.get_property_by_column(c).key for c in self._pk]
        self._warned: set[str] = set()
        self._listeners: list[tuple[Any, str, Callable[..., None]]] = [
            (model, "after_insert", self._after_insert),
            (model, "after_update", self._after_update),
            (model, "before_delete", self._before_delete),
            (session_class, "do_orm_execute", self._do_orm_execute),
        ]

    def _listen(self) -> None:
        _watch_lifecycle(self.session_class)
        for target, name, fn in self._listeners:
            if target is self.model:
                event.listen(target, name, fn, propagate=True)
            else:
                event.listen(target, name, fn)
        _REGISTRY.add(self)

    def remove(self) -> None:
        """Stop listening; what was collected and not yet committed is still performed.

        Usage::

            hook.remove()
        """
        _REGISTRY.discard(self)
        for target, name, fn in self._listeners:
            if event.contains(target, name, fn):
                event.remove(target, name, fn)

    # ---------------------------------------------------------------- computing

    def resolve_cache(self) -> Cache:
        """The cache this registration invalidates: its own, else the default one.

        Raises :class:`~cachekit.exceptions.ConfigurationError` when there is none, and
        :class:`~cachekit.exceptions.NotConfigured` when it is not configured yet.

        Usage::

            hook.resolve_cache()     # <Cache prefix='shop' configured>
        """
        cache = self.cache if self.cache is not None else default_cache()
        if cache is None:
            raise ConfigurationError(
                f"invalidate_on_commit(..., {self.model.__name__}) has no cache: pass "
                "cache= to it, or call cachekit.contrib.set_default_cache(cache) at startup"
            )
        if not cache.configured:
            raise NotConfigured(
                f"the cache that invalidate_on_commit(..., {self.model.__name__}) uses is not "
                "configured: call cache.configure(...) before writing to the database"
            )
        return cache

    def keys_for(self, row: M) -> list[str]:
        """The logical keys of ``row`` (a mapped object or a :class:`RowView`); no I/O.

        Usage::

            hook.keys_for(product)     # ['product:5']
        """
        return _strings(self._keys(row)) if self._keys is not None else []

    def tags_for(self, row: M) -> list[str]:
        """The tags of ``row``; no I/O.

        Usage::

            hook.tags_for(product)     # ['catalog']
        """
        return _strings(self._tags(row)) if self._tags is not None else []

    def bloom_value_for(self, row: M) -> object:
        """What ``row`` adds to the Bloom filter: ``bloom_value(row)``, else its primary key.

        Usage::

            hook.bloom_value_for(product)     # 5
        """
        if self._bloom_value is not None:
            return self._bloom_value(row)
        values = tuple(getattr(row, name) for name in self._pk_names)
        return values[0] if len(values) == 1 else values

    def _collect(self, work: _Work, row: M, *, inserted: bool, old: M | None = None) -> None:
        """Add ``row``'s keys and tags (and old ones, and its Bloom value) to ``work``."""
        for view in (row,) if old is None else (row, old):
            for key in self.keys_for(view):
                work.add_key(key, self.double_delete)
            work.tags.update(self.tags_for(view))
        if self._bloom is not None and (inserted or old is not None):
            value = self.bloom_value_for(row)
            if inserted or value != self.bloom_value_for(cast(M, old)):
                work.blooms.setdefault(self._bloom, []).append(value)

    def _view(self, row: object) -> M:
        """A row given to :func:`invalidate_rows`: an object, a mapping or a primary key."""
        if isinstance(row, self.model | RowView):
            return cast(M, row)
        if isinstance(row, Mapping):
            return cast(M, RowView(self.model, row))
        values = row if isinstance(row, tuple) else (row,)
        if len(values) != len(self._pk_names):
            raise ConfigurationError(
                f"{row!r} is not a primary key of {self.model.__name__} "
                f"({', '.join(self._pk_names)})"
            )
        return cast(M, RowView(self.model, dict(zip(self._pk_names, values, strict=True))))

    def _batch(self, rows: Iterable[object], *, inserted: bool) -> _Batch:
        work = _Work()
        for row in rows:
            self._collect(work, self._view(row), inserted=inserted)
        return {self.resolve_cache(): work}

    def invalidate_now(self, rows: Iterable[object], *, inserted: bool = False) -> None:
        """Invalidate ``rows`` at once (blocking), outside any transaction.

        ``rows``: mapped objects, mappings of attribute values, or primary keys (a tuple
        for a composite key). ``inserted=True`` also adds their Bloom values.

        Usage::

            hook.invalidate_now([5, 6])
        """
        for cache, work in self._batch(rows, inserted=inserted).items():
            _perform(cache, work)

    # ------------------------------------------------------------------ listeners

    def _session_of(self, target: object) -> Session | None:
        session = object_session(target)
        return session if isinstance(session, self.session_class) else None

    def _after_insert(self, mapper: Mapper[Any], connection: Connection, target: M) -> None:
        session = self._session_of(target)
        if session is not None:
            self._collect(_work_for(session, self.resolve_cache()), target, inserted=True)

    def _after_update(self, mapper: Mapper[Any], connection: Connection, target: M) -> None:
        session = self._session_of(target)
        if session is None:
            return
        state: InstanceState[Any] = sa_inspect(target)
        changed, old = False, {}
        for prop in mapper.column_attrs:
            history = state.attrs[prop.key].history
            if history.has_changes():
                changed = True
                if history.deleted:
                    old[prop.key] = history.deleted[0]
        if not changed:
            return  # dirty, but no column changed (a collection, say): no UPDATE was sent
        previous = cast(M, _OldView(target, old)) if old else None
        self._collect(
            _work_for(session, self.resolve_cache()), target, inserted=False, old=previous
        )

    def _before_delete(self, mapper: Mapper[Any], connection: Connection, target: M) -> None:
        session = self._session_of(target)
        if session is not None:
            self._collect(_work_for(session, self.resolve_cache()), target, inserted=False)

    def _do_orm_execute(self, state: ORMExecuteState) -> None:
        if not (state.is_update or state.is_delete or state.is_insert):
            return
        mapper = state.bind_mapper
        if mapper is None or not issubclass(mapper.class_, self.model):
            return
        if not isinstance(state.session, self.session_class):
            return
        rows = self._statement_rows(state)
        if rows is None:
            return
        work = _work_for(state.session, self.resolve_cache())
        for row in rows:
            self._collect(work, row, inserted=state.is_insert)

    def _statement_rows(self, state: ORMExecuteState) -> list[M] | None:
        """The rows a bulk statement writes, when they can be told; else warn once."""
        params = state.parameters
        names = self._pk_names
        if isinstance(params, list):
            if params and all(all(n in p for n in names) for p in params):
                return [cast(M, RowView(self.model, p)) for p in params]
        elif state.is_insert and isinstance(params, Mapping) and all(n in params for n in names):
            return [cast(M, RowView(self.model, params))]
        if state.is_insert:
            self._warn("insert", "a bulk INSERT without primary keys")
            return None
        where = getattr(state.statement, "whereclause", None)
        pk_rows = None
        if isinstance(params, Mapping | None):  # the ORM has no executemany with WHERE
            pk_rows = _pk_values(where, self._pk, params)
        if pk_rows is None:
            kind = "UPDATE" if state.is_update else "DELETE"
            self._warn(kind, f"a bulk {kind} whose WHERE clause does not pin the primary key")
            return None
        return [cast(M, RowView(self.model, dict(zip(names, pk, strict=True)))) for pk in pk_rows]

    def _warn(self, kind: str, what: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            logger.warning(
                "cachekit: %s on %s cannot be invalidated after commit: its rows are not "
                "known (call invalidate_rows(session, %s, rows) before committing)",
                what,
                self.model.__name__,
                self.model.__name__,
            )

    def __repr__(self) -> str:
        return f"<Invalidation {self.model.__name__} on {self.session_class.__name__}>"


def _strings(values: Iterable[str]) -> list[str]:
    """A callable's keys or tags; a lone string is one key, not its characters."""
    return [values] if isinstance(values, str) else list(values)


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
