"""Rows known without a mapped object: :class:`RowView`, old values, bulk-statement keys.

What ``keys``, ``tags`` and ``bloom_value`` receive when no loaded object stands for a row:

* :class:`RowView` - a row known only by some of its columns, from a bulk statement or
  :func:`~cachekit.contrib.sqlalchemy.invalidate_rows`;
* ``_OldView`` - an updated object as it was before the flush (the old value of each
  changed column), so keys built from a changed column drop the old entry too;
* ``_pk_values`` - the primary keys an UPDATE or DELETE is pinned to by its WHERE clause
  (``Product.id == 5``, ``Product.id.in_([1, 2])``, ``AND`` and ``OR`` of those), or
  ``None`` when they cannot be told.

No I/O here: this only reads objects and SQL expressions.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias, cast

from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import (
    BinaryExpression,
    BindParameter,
    BooleanClauseList,
    ColumnElement,
    Grouping,
)

__all__ = ["RowView"]


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
