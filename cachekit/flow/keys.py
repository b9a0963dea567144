"""Cache keys: templates bound through a function's signature, escaping, and the key space.

A stored value lives at ``<prefix>:{<logical key>}``. The braces are a Redis Cluster hash
tag: the value and the keys derived from it (``...}:lease`` and the like) hash to one slot,
so a Lua script may touch them together. Other namespaces (locks, sessions, Bloom filters)
live at ``<prefix>:<namespace>:{<name>}``. A value key always has ``{`` right after the
prefix and a namespaced key never does, so no argument can reach another namespace; and
argument values are percent-escaped (``%``, ``:``, braces, whitespace, control
characters), so ``user:{a}:{b}`` cannot give the same key for ``("1:2", "3")`` and
``("1", "2:3")``.

Usage::

    builder = KeyBuilder.for_function(get_product, "product:{product_id}")
    builder.build((5,), {})                      # 'product:5'
    KeySpace("shop").value("product:5")          # 'shop:{product:5}'
"""

from __future__ import annotations

import hashlib
import inspect
import re
import string
from collections.abc import Callable, Mapping
from typing import Any, Final

import orjson

from cachekit.exceptions import ConfigurationError, KeyTemplateError

__all__ = ["MAX_KEY_BYTES", "MAX_PREFIX_CHARS", "KeyBuilder", "KeySpace", "escape"]

MAX_KEY_BYTES: Final = 200
MAX_PREFIX_CHARS: Final = 64  # leaves room for a namespace, a digest and a readable head
_DIGEST_CHARS: Final = 64  # sha256 hex
_UNSAFE = re.compile(r"[%:{}\s\x00-\x1f\x7f\ud800-\udfff]")
_PREFIX_OK = re.compile(r"[A-Za-z0-9_.\-]+(?::[A-Za-z0-9_.\-]+)*")


def _quote(match: re.Match[str]) -> str:
    # surrogatepass: a lone surrogate (from JSON "\\ud800", say) still escapes injectively.
    return "".join(f"%{byte:02X}" for byte in match.group().encode("utf-8", "surrogatepass"))


def escape(value: object) -> str:
    """One key component from ``value``: ``str(value)`` with unsafe characters escaped.

    Usage::

        escape("a:b")   # 'a%3Ab'
    """
    if type(value) is int:  # the common case, and digits never need escaping
        return str(value)
    text = value if type(value) is str else str(value)
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_quote, text)


class KeySpace:
    """Maps logical keys to Redis keys under one prefix.

    **Parameters:**

    * **prefix** - letters, digits, ``_ . -``, optionally ``:``-separated (``"shop:v2"``).

    Usage::

        space = KeySpace("shop")
        space.value("product:5")              # 'shop:{product:5}'
        space.namespaced("lock", "report")    # 'shop:lock:{report}'
    """

    __slots__ = ("head", "prefix")

    def __init__(self, prefix: str) -> None:
        if not _PREFIX_OK.fullmatch(prefix) or len(prefix) > MAX_PREFIX_CHARS:
            raise ConfigurationError(
                f"invalid key prefix {prefix!r}: at most {MAX_PREFIX_CHARS} letters, digits, "
                "'_', '.', '-' and ':'"
            )
        self.prefix = prefix
        self.head = prefix + ":{"  # every value key starts with it

    def value(self, logical: str) -> str:
        """The Redis key of the value stored under ``logical``."""
        key = self.head + logical + "}"
        # A character is at most 4 UTF-8 bytes: short strings need no encoding to check.
        if len(key) * 4 <= MAX_KEY_BYTES or len(key.encode()) <= MAX_KEY_BYTES:
            return key
        return self.head + _shorten(logical, MAX_KEY_BYTES - len(self.head) - 1) + "}"

    def namespaced(self, namespace: str, name: str) -> str:
        """The Redis key of ``name`` in another namespace (``lock``, ``session``, ...)."""
        head = f"{self.prefix}:{namespace}:{{"
        key = head + name + "}"
        if len(key.encode()) <= MAX_KEY_BYTES:
            return key
        return head + _shorten(name, MAX_KEY_BYTES - len(head) - 1) + "}"


def _shorten(logical: str, budget: int) -> str:
    """A readable head of ``logical`` and the sha256 of all of it, within ``budget`` bytes."""
    digest = hashlib.sha256(logical.encode()).hexdigest()
    head_bytes = max(budget - _DIGEST_CHARS - 1, 0)
    head = logical.encode()[:head_bytes].decode(errors="ignore")  # cut on a char boundary
    return f"{head}#{digest}"


class _Binder:
    """Maps a call's ``(args, kwargs)`` to ``{parameter: value}``, defaults applied.

    ``inspect.Signature.bind`` costs microseconds per call; this handles the usual shape
    (no ``*args``/``**kwargs``) with a couple of dict operations and falls back to
    ``bind`` for everything else, including every call that is an error.
    """

    __slots__ = (
        "_count",
        "_defaults",
        "_keyword",
        "_positional",
        "_signature",
        "_simple",
        "names",
    )

    @property
    def positional_count(self) -> int:
        """How many parameters can be passed by position (all of them, for the fast path)."""
        return len(self._positional)

    def __init__(self, signature: inspect.Signature) -> None:
        params = signature.parameters.values()
        kinds = {p.kind for p in params}
        self._signature = signature
        self._simple = not kinds & {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD}
        self._positional = tuple(
            p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        )
        self._keyword = frozenset(p.name for p in params if p.kind != p.POSITIONAL_ONLY)
        self._defaults = tuple((p.name, p.default) for p in params if p.default is not p.empty)
        self._count = len(signature.parameters)
        self.names = tuple(signature.parameters)

    def bind(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        if self._simple and len(args) <= len(self._positional):
            values = dict(zip(self._positional, args, strict=False))
            for name, value in kwargs.items():
                if name in values or name not in self._keyword:
                    return self._slow(args, kwargs)
                values[name] = value
            for name, default in self._defaults:
                values.setdefault(name, default)
            if len(values) == self._count:
                return values
        return self._slow(args, kwargs)

    def _slow(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        bound = self._signature.bind(*args, **kwargs)  # raises the TypeError a call would
        bound.apply_defaults()
        return dict(bound.arguments)


_Getter = Callable[[Mapping[str, Any]], object]


class _NameGetter:
    """Reads one parameter by name; ``field`` tells the fast path which one."""

    __slots__ = ("field",)

    def __init__(self, field: str) -> None:
        self.field = field

    def __call__(self, values: Mapping[str, Any]) -> object:
        return values[self.field]


_Part = tuple[str, _Getter | None, str]  # literal text, then a field's getter and format spec


def _field_getter(path: str) -> _Getter:
    root, *attrs = path.split(".")
    if not attrs:
        return _NameGetter(root)

    def get(values: Mapping[str, Any]) -> object:
        obj = values[root]
        for attr in attrs:
            obj = getattr(obj, attr)
        return obj

    return get


def _fast_form(
    parts: list[_Part], signature: inspect.Signature
) -> tuple[str, tuple[int, ...]] | None:
    """``("product:{}", (0,))`` for templates of bare fields, to format from ``args``."""
    positional = [
        p.name
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(positional) != len(signature.parameters):
        return None
    fmt, indexes = [], []
    for literal, getter, spec in parts:
        fmt.append(literal.replace("{", "{{").replace("}", "}}"))
        if getter is not None:
            field = getattr(getter, "field", None)
            if spec or field is None:
                return None
            fmt.append("{}")
            indexes.append(positional.index(field))
    return "".join(fmt), tuple(indexes)


class KeyBuilder:
    """Builds the logical key of one call of one function.

    With a template, each ``{field}`` is a parameter name, optionally followed by
    attributes (``{user.id}``) and a format spec (``{day:%Y-%m-%d}``); positional, keyword
    and default arguments give the same key. Without one, the key is the function's module
    and qualified name followed by every argument as canonical JSON.

    Usage::

        KeyBuilder.for_function(f, "page:{n}").build((2,), {})   # 'page:2'
    """

    __slots__ = ("_binder", "_escape", "_fast", "_head", "_name", "_parts", "_positional_count")

    def __init__(
        self,
        binder: _Binder,
        parts: tuple[_Part, ...] | None,
        name: str,
        fast: tuple[str, tuple[int, ...]] | None = None,
        escape_values: bool = True,
    ) -> None:
        self._escape: Callable[[object], str] = escape if escape_values else str
        self._binder = binder
        self._parts = parts
        self._name = name
        self._fast = fast
        self._positional_count = binder.positional_count
        single = fast is not None and len(fast[1]) == 1 and fast[0].endswith("{}")
        self._head = fast[0][:-2] if fast is not None and single else None

    @classmethod
    def for_function(
        cls, func: Callable[..., Any], template: str | None, *, escape_values: bool = True
    ) -> KeyBuilder:
        """Compile ``template`` against ``func``'s signature; errors surface here, once.

        ``escape_values=False`` renders values as they are: for identifiers handed to a
        Bloom filter, never for Redis keys.
        """
        signature = inspect.signature(func)
        name = f"{func.__module__}.{func.__qualname__}"
        if template is None:
            return cls(_Binder(signature), None, name)
        parts: list[_Part] = []
        for literal, field, spec, conversion in string.Formatter().parse(template):
            if "{" in literal or "}" in literal:
                raise ConfigurationError(f"key template {template!r}: braces are reserved")
            if field is None:
                parts.append((literal, None, ""))
                continue
            root = field.split(".")[0]
            nested = "{" in (spec or "") or "}" in (spec or "")
            unknown = root not in signature.parameters
            if conversion or nested or not field or "[" in field or unknown:
                raise ConfigurationError(
                    f"key template {template!r}: {{{field}}} must name a parameter of "
                    f"{name}{signature} (attributes allowed, no conversions or indexing)"
                )
            parts.append((literal, _field_getter(field), spec or ""))
        fast = _fast_form(parts, signature)
        return cls(_Binder(signature), tuple(parts), name, fast, escape_values)

    def build(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
        """The logical key for a call with ``args`` and ``kwargs``."""
        fast = self._fast
        if fast is not None and not kwargs and len(args) == self._positional_count:
            # The hot case: every parameter passed positionally to a "{name}" template.
            fmt, indexes = fast
            if self._head is not None:  # "product:{id}": one concatenation
                return self._head + self._escape(args[indexes[0]])
            return fmt.format(*[self._escape(args[i]) for i in indexes])
        values = self._binder.bind(args, kwargs)
        if self._parts is None:
            return self._default_key(values)
        out = []
        for literal, getter, spec in self._parts:
            out.append(literal)
            if getter is not None:
                try:
                    value = getter(values)
                    out.append(self._escape(format(value, spec) if spec else value))
                except (AttributeError, ValueError, TypeError) as exc:
                    raise KeyTemplateError(f"key of {self._name}: {exc}") from exc
        return "".join(out)

    def storage_key(self, space: KeySpace, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
        """``space.value(self.build(args, kwargs))``, in one concatenation for the hot form.

        Usage::

            builder.storage_key(KeySpace("shop"), (5,), {})     # 'shop:{product:5}'
        """
        head, fast = self._head, self._fast
        if (
            head is not None
            and fast is not None
            and not kwargs
            and len(args) == self._positional_count
        ):
            value = args[fast[1][0]]
            # An int needs no escaping (see escape): no call for the commonest key.
            text = str(value) if type(value) is int else self._escape(value)
            key = space.head + head + text + "}"
            if len(key) * 4 <= MAX_KEY_BYTES:  # else space.value shortens it
                return key
        return space.value(self.build(args, kwargs))

    def _default_key(self, values: Mapping[str, Any]) -> str:
        out = [self._name]
        # Parameter order, never call order: f(b=1, a=2) and f(2, 1) are one call.
        for name in self._binder.names:
            value = values[name]
            try:
                canonical = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
            except TypeError as exc:
                raise KeyTemplateError(
                    f"argument {name!r} of {self._name} ({type(value).__name__}) has no "
                    "canonical form; give the decorator a key template, e.g. "
                    f'key="{self._name.rsplit(".", 1)[-1]}:{{{name}.id}}"'
                ) from exc
            out.append(escape(canonical))
        return ":".join(out)
