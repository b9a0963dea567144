"""What a cart may hold and how each change applies: pure code, no I/O.

Every check here runs before any database or Redis call, so bad input costs
microseconds and changes nothing; the changes run inside the SQL transaction that holds
the cart's row lock, so the limits hold under any concurrency.

Usage::

    limits = CartLimits(max_quantity=10)
    items = Add(limits.sku("SKU-1"), limits.quantity(2)).apply({}, limits)   # {'SKU-1': 2}
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from cachekit.exceptions import InvalidCartInput

__all__ = [
    "MAX_LINE_BYTES",
    "Add",
    "CartLimits",
    "Change",
    "Clear",
    "Remove",
    "SetQuantity",
    "merge_into",
]

MAX_LINE_BYTES = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class CartLimits:
    """The limits every cart keeps, checked on every change.

    **Parameters:**

    * **max_quantity** - the largest quantity of one SKU (default 999; the least is 1).
    * **max_skus** - how many distinct SKUs one cart holds (default 200).
    * **sku_pattern** - a regular expression a whole SKU must match (default: a letter or
      digit, then up to 63 letters, digits, ``.``, ``_`` or ``-``). Whatever it allows, a
      SKU never starts with ``@`` (the Redis copy's own fields do).
    * **max_owner_chars** - the longest owner id (default 128).
    * **max_sku_chars** - the longest SKU (default 64), whatever the pattern allows; also
      the width of the SKU column.

    Usage::

        CartStore(cache, engine, limits=CartLimits(max_quantity=10, max_skus=50))
    """

    max_quantity: int = 999
    max_skus: int = 200
    sku_pattern: str = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
    max_owner_chars: int = 128
    max_sku_chars: int = 64
    _sku: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sizes = (self.max_quantity, self.max_skus, self.max_owner_chars, self.max_sku_chars)
        if min(sizes) < 1:
            raise ValueError("cart limits must be at least 1")
        object.__setattr__(self, "_sku", re.compile(self.sku_pattern))

    def owner(self, owner: object) -> str:
        """``owner`` if it is a non-empty string of printable characters, short enough."""
        if type(owner) is not str or not 0 < len(owner) <= self.max_owner_chars:
            raise InvalidCartInput(f"a cart owner is a string of 1 to {self.max_owner_chars} chars")
        if not owner.isprintable():
            raise InvalidCartInput("a cart owner must not contain control characters")
        return owner

    def sku(self, sku: object) -> str:
        """``sku`` if it matches :attr:`sku_pattern` and does not start with ``@``."""
        # The length test first: a megabyte of SKU never reaches the regex engine.
        if type(sku) is not str or len(sku) > self.max_sku_chars or not self._sku.fullmatch(sku):
            raise InvalidCartInput("invalid SKU")
        if sku.startswith("@"):
            # The Redis copy's own fields (@version, @owner) start with "@": whatever
            # pattern is configured, a SKU must never overwrite them.
            raise InvalidCartInput("a SKU must not start with '@'")
        return sku

    def quantity(self, qty: object) -> int:
        """``qty`` if it is an integer from 1 to :attr:`max_quantity` (``True`` is not one)."""
        if type(qty) is not int or not 1 <= qty <= self.max_quantity:
            raise InvalidCartInput(f"a quantity is a whole number from 1 to {self.max_quantity}")
        return qty

    def line(
        self, body: bytes, *, sku: str | None = None, max_bytes: int = MAX_LINE_BYTES
    ) -> tuple[str, int]:
        """``(sku, qty)`` from a JSON request body such as ``{"sku": "A-1", "qty": 2}``.

        ``sku`` comes from the URL instead when given (then the body is ``{"qty": 2}``).
        Anything else - a body above ``max_bytes`` (checked before parsing), not JSON,
        nested deeper than orjson's limit, not an object, other keys, a bad SKU or
        quantity - raises :class:`InvalidCartInput` before any I/O.

        Usage::

            sku, qty = cart.limits.line(await request.body())
        """
        if len(body) > max_bytes:
            raise InvalidCartInput(f"a cart request body is at most {max_bytes} bytes")
        try:
            data: Any = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise InvalidCartInput("a cart request body is a JSON object") from None
        expected = {"qty"} if sku is not None else {"sku", "qty"}
        if type(data) is not dict or set(data) != expected:
            raise InvalidCartInput(f"a cart request body has exactly the keys {sorted(expected)}")
        return self.sku(data["sku"] if sku is None else sku), self.quantity(data["qty"])


class Change(Protocol):
    """One change of a cart, applied to its items as they are in the database."""

    def apply(self, items: dict[str, int], limits: CartLimits) -> dict[str, int]:
        """The items after the change; raises :class:`InvalidCartInput` if a limit breaks."""
        ...


def _room_for(items: dict[str, int], sku: str, limits: CartLimits) -> None:
    if sku not in items and len(items) >= limits.max_skus:
        raise InvalidCartInput(f"a cart holds at most {limits.max_skus} different SKUs")


@dataclass(frozen=True, slots=True)
class Add:
    """Add ``qty`` of ``sku`` to what the cart holds."""

    sku: str
    qty: int

    def apply(self, items: dict[str, int], limits: CartLimits) -> dict[str, int]:
        _room_for(items, self.sku, limits)
        total = items.get(self.sku, 0) + self.qty
        if total > limits.max_quantity:
            raise InvalidCartInput(f"a cart holds at most {limits.max_quantity} of one SKU")
        return {**items, self.sku: total}


@dataclass(frozen=True, slots=True)
class SetQuantity:
    """Hold exactly ``qty`` of ``sku`` (idempotent: a retried request changes nothing)."""

    sku: str
    qty: int

    def apply(self, items: dict[str, int], limits: CartLimits) -> dict[str, int]:
        _room_for(items, self.sku, limits)
        return {**items, self.sku: self.qty}


@dataclass(frozen=True, slots=True)
class Remove:
    """Drop ``sku`` (removing what is not there is not an error)."""

    sku: str

    def apply(self, items: dict[str, int], limits: CartLimits) -> dict[str, int]:
        return {sku: qty for sku, qty in items.items() if sku != self.sku}


@dataclass(frozen=True, slots=True)
class Clear:
    """Empty the cart."""

    def apply(self, items: dict[str, int], limits: CartLimits) -> dict[str, int]:
        return {}


def merge_into(
    source: dict[str, int], target: dict[str, int], limits: CartLimits
) -> dict[str, int]:
    """``target`` with ``source`` added: quantities summed, never failing a login.

    A sum above ``max_quantity`` is capped at it; once the target holds ``max_skus``, the
    source's remaining SKUs (taken in SKU order) are left out.

    Usage::

        merge_into({"A": 2}, {"A": 998, "B": 1}, CartLimits())   # {'A': 999, 'B': 1}
    """
    merged = dict(target)
    for sku, qty in source.items():
        if sku in merged:
            merged[sku] = min(merged[sku] + qty, limits.max_quantity)
        elif len(merged) < limits.max_skus:
            merged[sku] = min(qty, limits.max_quantity)
    return merged
