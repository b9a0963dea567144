"""One :func:`~cachekit.contrib.sqlalchemy.invalidate_on_commit` registration.

An :class:`Invalidation` holds what the user gave - the mapped class, the session class,
``keys``, ``tags``, ``bloom``, ``bloom_value``, the cache - and its listeners:
``after_insert``, ``after_update`` and ``before_delete`` on the mapped class (and its
subclasses), ``do_orm_execute`` on the session class for bulk statements. Each listener
computes the keys, tags and Bloom values of the rows written right away, and adds them to
the work of the session's innermost transaction (:mod:`.tracking`); the lifecycle hooks
perform it after the commit. :meth:`Invalidation.invalidate_now` performs it at once.

Every live registration is kept in ``_REGISTRY`` (weakly), where
:func:`~cachekit.contrib.sqlalchemy.invalidate_rows` and
:func:`~cachekit.contrib.sqlalchemy.invalidate_now` find those of a mapped class.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar, cast

from sqlalchemy import event
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Connection
from sqlalchemy.orm import (
    InstanceState,
    Mapper,
    ORMExecuteState,
    Session,
    object_session,
)

from cachekit.bloom.filter import Bloom
from cachekit.cache import Cache
from cachekit.contrib import default_cache
from cachekit.contrib.sqlalchemy.rows import RowView, _OldView, _pk_values
from cachekit.contrib.sqlalchemy.tracking import _watch_lifecycle, _work_for
from cachekit.contrib.sqlalchemy.work import _Batch, _perform, _Work
from cachekit.exceptions import ConfigurationError, NotConfigured

__all__ = ["Invalidation"]

# The package's logger, not this module's: the whole integration logs under one name.
logger = logging.getLogger("cachekit.contrib.sqlalchemy")

M = TypeVar("M")

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
