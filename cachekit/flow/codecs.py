"""Typed values: a cache hit returns exactly what the miss returned, or nothing is stored.

A decorated function's return annotation is the schema its hits are decoded into
(:func:`return_type` reads it once, at decoration). :func:`codec_for` pairs that type with
the cache's serializer and returns a codec (a :class:`~cachekit.serializers.Serializer`
the envelope can use) that:

* encodes with msgspec (dataclasses, NamedTuple, TypedDict, Enum, datetime, date, time,
  timedelta, UUID, Decimal, tuples, sets, frozensets, msgspec Structs, attrs classes and
  any container of these) or, for types that name a Pydantic model, with Pydantic's
  ``TypeAdapter``; JSON for :class:`~cachekit.serializers.JsonSerializer`, MessagePack for
  :class:`~cachekit.serializers.MsgpackSerializer`;
* refuses, at store time, a value that would not come back equal and of the same type
  (it decodes what it encoded and compares): :class:`~cachekit.exceptions.Uncacheable`;
* prefixes every payload with a marker and a fingerprint of the type's shape, so a hit
  written for another shape (a deploy that added, renamed or retyped a field) is a
  :class:`~cachekit.flow.envelope.SchemaMismatch`: a counted miss, never an exception.

Without a usable annotation (none, ``Any``, ``object``, or a type neither engine can
decode) the codec stores only JSON-native data (``dict`` with ``str`` keys, ``list``,
``str``, ``int``, ``float``, ``bool``, ``None``; also ``bytes`` for MessagePack), since
that is all that comes back as it went in. Pickle round-trips everything, so a
:class:`~cachekit.serializers.PickleSerializer` is used as it is.

Usage::

    codec = codec_for(JsonSerializer(), Order)
    assert codec.loads(codec.dumps(order)) == order
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import math
import sys
import typing
from collections.abc import Callable, Hashable
from functools import lru_cache
from typing import Any, Final, cast

import msgspec
import orjson

from cachekit.exceptions import Uncacheable
from cachekit.flow.envelope import SchemaMismatch
from cachekit.serializers import JsonSerializer, Keyring, MsgpackSerializer, Serializer

__all__ = ["ReturnType", "codec_for", "return_type", "split_typed"]

# Starts every typed payload: 0xff never begins a JSON text or a lone MessagePack object,
# so untyped readers reject typed payloads and typed readers tell untyped ones apart.
_MARK: Final = b"\xff"
_MARK_BYTE: Final = _MARK[0]
_PREFIX_SIZE: Final = 5  # the mark and a 32-bit fingerprint of the type's shape
_UNUSABLE: Final = (typing.Any, object, type(None), None)


def split_typed(data: bytes | memoryview) -> tuple[str | None, bytes | memoryview]:
    """``(shape fingerprint in hex, body)`` of a payload; ``(None, data)`` if untyped.

    For readers without the annotation (the command line): the body is plain JSON or
    MessagePack, the fingerprint names the type it was written for.

    Usage::

        shape, body = split_typed(payload)      # ('1a2b3c4d', b'{"total":3}')
    """
    if data and data[0] == _MARK_BYTE:
        return bytes(data[1:_PREFIX_SIZE]).hex(), data[_PREFIX_SIZE:]
    return None, data


def codec_for(serializer: Serializer, tp: Any = None, problem: str | None = None) -> Serializer:
    """The codec that stores values of type ``tp`` with ``serializer``'s format and keys.

    ``tp`` ``None`` (or ``Any``) means no usable annotation: only JSON-native values are
    stored. ``problem`` says why an annotation was unusable, for the message that asks
    the user to fix it. Codecs are built once per (serializer, type) and reused.

    Usage::

        codec = codec_for(cache_serializer, list[Order])
    """
    if problem is not None:
        return _Plain(serializer, problem)
    try:
        return _cached_codec(cast(Hashable, serializer), tp)
    except TypeError:  # an unhashable annotation: build it uncached
        return _build(serializer, tp)


@lru_cache(maxsize=512)
def _cached_codec(serializer: Hashable, tp: Any) -> Serializer:
    return _build(cast(Serializer, serializer), tp)


def _build(serializer: Serializer, tp: Any) -> Serializer:
    if serializer.code not in (JsonSerializer.code, MsgpackSerializer.code):
        return serializer  # pickle (or a user's own format): it round-trips on its own
    if tp in _UNUSABLE:
        return _Plain(serializer)
    codec, problem = _typed(serializer, tp)
    return codec if codec is not None else _Plain(serializer, problem)


class ReturnType:
    """A function's return annotation, resolved at decoration or, failing that, later.

    A name that is not defined yet when the decorator runs (a class declared below the
    function, ``from __future__ import annotations``) is looked up again at the first call,
    in the module's globals and the locals of the scope that applied the decorator.

    Usage::

        returns = return_type(get_order)
        tp, problem = returns.resolve()
    """

    __slots__ = ("_func", "_problem", "_scope", "_type")

    def __init__(self, func: Callable[..., Any], scope: dict[str, Any] | None) -> None:
        self._func = func
        self._scope = scope
        self._type: Any = None
        self._problem: str | None = "unresolved"
        self._try()

    def _try(self) -> None:
        try:
            hints = typing.get_type_hints(_ReturnOnly(self._func), localns=self._scope)
        except Exception as exc:  # a NameError, or a string that is not a type
            self._problem = (
                f"its return annotation could not be resolved ({type(exc).__name__}: {exc})"
            )
            return
        self._type = hints.get("return")
        self._problem = None
        self._scope = None  # resolved: keep no references to the decorating scope

    def resolve(self) -> tuple[Any, str | None]:
        """``(type, None)``, or ``(None, why it cannot be resolved)``."""
        if self._problem is not None and self._scope is not None:
            self._try()
            self._scope = None  # one more try at the first call, then settled
        return self._type, self._problem


class _ReturnOnly:
    """Just the return annotation, so an unresolvable parameter annotation is no matter."""

    def __init__(self, func: Callable[..., Any]) -> None:
        annotations = getattr(func, "__annotations__", {})
        self.__annotations__ = {"return": annotations["return"]} if "return" in annotations else {}
        self.__globals__ = getattr(inspect.unwrap(func), "__globals__", {})


def return_type(func: Callable[..., Any], depth: int = 2) -> ReturnType:
    """``func``'s return annotation; ``depth`` frames up is the scope that decorated it.

    Usage::

        returns = return_type(func)      # called from the decorator
    """
    frame = inspect.currentframe()
    for _ in range(depth):
        frame = frame.f_back if frame is not None else None
    try:
        scope = None
        if frame is not None and frame.f_globals is not frame.f_locals:
            scope = dict(frame.f_locals)  # a class declared in the decorating function
    finally:
        del frame  # no reference cycle through this frame
    return ReturnType(func, scope)


class _Codec:
    """What every codec shares with the serializer it wraps: the format code and keys."""

    __slots__ = ("code", "keyring")

    def __init__(self, serializer: Serializer) -> None:
        self.code: int = serializer.code
        self.keyring: Keyring | None = serializer.keyring


class _Typed(_Codec):
    """Values of one type, checked to come back equal, behind a shape fingerprint."""

    __slots__ = ("_bytes_ok", "_decode", "_encode", "_prefix", "_wrong_shape", "name")

    def __init__(
        self,
        serializer: Serializer,
        name: str,
        fingerprint: bytes,
        encode: Callable[[Any], bytes],
        decode: Callable[[bytes | memoryview], Any],
        wrong_shape: tuple[type[Exception], ...] = (msgspec.ValidationError,),
    ) -> None:
        super().__init__(serializer)
        # Well-formed data of another shape; malformed bytes stay an invalid payload.
        self._wrong_shape = wrong_shape
        self.name = name
        self._prefix = _MARK + fingerprint
        self._encode = encode
        self._decode = decode
        self._bytes_ok = serializer.code == MsgpackSerializer.code

    def dumps(self, value: Any) -> bytes:
        """The payload for ``value``; :class:`Uncacheable` unless it comes back the same.

        JSON-native data is stored as it is, so every reader (``cache.get`` without a type
        too) can read it; anything else behind the type's mark and fingerprint.
        """
        if _is_orm(value):
            raise _orm_uncacheable(value)
        try:
            body = self._encode(value)
            back = self._decode(body)
        except Exception as exc:  # msgspec, pydantic: each fails its own way
            raise Uncacheable(
                f"a {type(value).__name__} that does not encode as {self.name} ({exc})",
                f"return a {self.name} or fix the annotation of {{function}}",
            ) from exc
        if not _same(back, value, body, self._encode):
            raise Uncacheable(
                f"a {type(value).__name__} that would come back as {type(back).__name__} "
                f"{_shown(back)} when read as {self.name}",
                f"return exactly a {self.name} or fix the annotation of {{function}}",
            )
        if _not_native(value, self._bytes_ok) is None:
            return body
        return self._prefix + body

    def loads(self, data: bytes | memoryview) -> Any:
        """The value in ``data``; :class:`SchemaMismatch` if written for another shape.

        An unmarked payload is JSON-native data (from ``cache.set`` without ``type=``, or
        a native value): it is decoded into the type and validated on the way.
        """
        body = data
        if data and data[0] == _MARK_BYTE:  # an int compare: no slice on the native path
            if data[:_PREFIX_SIZE] != self._prefix:
                raise SchemaMismatch(f"written for another type than {self.name}")
            body = data[_PREFIX_SIZE:]
        try:
            return self._decode(body)
        except self._wrong_shape as exc:
            raise SchemaMismatch(f"does not decode as {self.name}: {exc}") from exc


class _Plain(_Codec):
    """No usable annotation: only values the format gives back unchanged are stored."""

    __slots__ = ("_bytes_ok", "_dumps", "_loads", "_problem")

    def __init__(self, serializer: Serializer, problem: str | None = None) -> None:
        super().__init__(serializer)
        self._dumps = serializer.dumps
        self._loads = serializer.loads
        self._bytes_ok = serializer.code == MsgpackSerializer.code
        self._problem = problem

    def dumps(self, value: Any) -> bytes:
        """The payload; :class:`Uncacheable` for anything but JSON-native data."""
        where = _not_native(value, self._bytes_ok)
        if where is not None:
            raise self._advice(value, *where)
        return self._dumps(value)

    def loads(self, data: bytes | memoryview) -> Any:
        """The stored value; :class:`SchemaMismatch` for a typed payload."""
        try:
            return self._loads(data)
        except Exception:
            if data[:1] == _MARK:
                raise SchemaMismatch("written for a type; pass type= to read it") from None
            raise

    def _advice(self, value: Any, path: str, inner: Any) -> Uncacheable:
        if _is_orm(inner):
            return _orm_uncacheable(inner)
        name = type(value).__name__
        what = f"a {name}" if not path else f"a {name} holding a {type(inner).__name__} at {path}"
        problem = f"{what}, which would not come back as it went in"
        if self._problem:
            return Uncacheable(
                f"{problem}, and {self._problem}",
                "return a dataclass, NamedTuple, TypedDict, msgspec Struct, attrs class or "
                "Pydantic model (or JSON-native data)",
            )
        fix = f"annotate the return type of {{function}}, e.g. `-> {name}`, to cache {name} values"
        return Uncacheable(problem, fix, needs_type=True)


def _typed(serializer: Serializer, tp: Any) -> tuple[_Typed | None, str | None]:
    """A typed codec for ``tp``, or ``None`` and why neither engine can decode it."""
    name = _type_name(tp)
    msgpack = serializer.code == MsgpackSerializer.code
    try:
        schema = msgspec.json.schema(tp)
    except (TypeError, ValueError) as exc:
        adapter = _pydantic_adapter(tp)
        if adapter is None:
            return None, f"its return annotation {name} cannot be decoded ({_first_line(exc)})"
        return _pydantic_codec(serializer, tp, name, adapter, msgpack), None
    if msgpack:
        encode: Callable[[Any], bytes] = msgspec.msgpack.Encoder().encode
        decode: Callable[[Any], Any] = msgspec.msgpack.Decoder(tp).decode
    else:
        encode, decode = msgspec.json.Encoder().encode, msgspec.json.Decoder(tp).decode
    return _Typed(serializer, name, _fingerprint("msgspec", schema), encode, decode), None


def _pydantic_adapter(tp: Any) -> Any:
    """Pydantic's ``TypeAdapter`` for ``tp``, when Pydantic is loaded and can build one."""
    pydantic = sys.modules.get("pydantic")  # never imported here: only if the app uses it
    if pydantic is None:
        return None
    try:
        return pydantic.TypeAdapter(tp)
    except Exception:  # PydanticSchemaGenerationError and friends: not its type either
        return None


def _pydantic_codec(
    serializer: Serializer, tp: Any, name: str, adapter: Any, msgpack: bool
) -> _Typed:
    pydantic = sys.modules["pydantic"]
    wrong_shape = (msgspec.ValidationError, pydantic.ValidationError)
    fingerprint = _fingerprint("pydantic", adapter.json_schema())
    if not msgpack:
        encode, decode = adapter.dump_json, adapter.validate_json
        return _Typed(serializer, name, fingerprint, encode, decode, wrong_shape)
    packer, unpacker = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder()

    def pack(value: Any) -> bytes:
        return packer.encode(adapter.dump_python(value, mode="json"))

    def unpack(data: Any) -> Any:
        return adapter.validate_python(unpacker.decode(data))

    return _Typed(serializer, name, fingerprint, pack, unpack, wrong_shape)


def _fingerprint(engine: str, schema: Any) -> bytes:
    """32 bits of the shape: field names, types, defaults (not docstrings)."""
    canonical = orjson.dumps([engine, _without_prose(schema)], option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(canonical, digest_size=4).digest()


def _without_prose(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: _without_prose(v) for k, v in node.items() if k not in ("description", "examples")
        }
    if isinstance(node, list):
        return [_without_prose(v) for v in node]
    return node


_NATIVE: Final = (str, int, bool, type(None))


def _not_native(value: Any, bytes_ok: bool) -> tuple[str, Any] | None:
    """``None`` if ``value`` is JSON-native through and through, else where it is not.

    Exact types only: a subclass (an ``IntEnum``, an ``OrderedDict``) comes back as its
    base class, so it is not native. Iterative, so no depth can exhaust the stack.
    """
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        kind = type(item)
        if kind in _NATIVE or (kind is bytes and bytes_ok):
            continue
        if kind is float:
            if not math.isfinite(item):  # NaN and infinities come back as null
                return path, item
        elif kind is list:
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(item))
        elif kind is dict:
            for k, v in item.items():
                if type(k) is not str:
                    return f"{path} (a key)", k
                stack.append((f"{path}[{k!r}]", v))
        else:
            return path, item
    return None


def _same(back: Any, value: Any, body: bytes, encode: Callable[[Any], bytes]) -> bool:
    """Whether ``back`` (decoded from ``body``) is ``value`` as it went in."""
    if not _alike(back, value):
        return False
    if back == value:
        return True
    # A class without __eq__ compares by identity: compare what the two encode to.
    identity_eq: Any = object.__eq__
    return type(back).__eq__ is identity_eq and encode(back) == body


def _alike(back: Any, value: Any) -> bool:
    """Same types through builtin containers (an int may come back as a float)."""
    stack = [(back, value)]
    while stack:
        a, b = stack.pop()
        if type(a) is not type(b):
            if not (type(a) is float and type(b) is int):
                return False
            continue
        if type(a) in (list, tuple):
            if len(a) != len(b):
                return False
            stack.extend(zip(a, b, strict=True))
        elif type(a) is dict:
            if a.keys() != b.keys():
                return False
            stack.extend((a[k], b[k]) for k in a)
        elif dataclasses.is_dataclass(a) and not isinstance(a, type):
            stack.extend((getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    return True


def _is_orm(value: Any) -> bool:
    """A SQLAlchemy mapped instance: it holds a session and lazy attributes."""
    return hasattr(type(value), "__mapper__") and hasattr(value, "_sa_instance_state")


def _orm_uncacheable(value: Any) -> Uncacheable:
    name = type(value).__name__
    return Uncacheable(
        f"a SQLAlchemy ORM instance ({name}), which holds a database session and lazy "
        "attributes and cannot be cached",
        "return a dataclass, msgspec Struct or Pydantic model built from it and annotate "
        f"the return type, e.g. `-> {name}Out`",
    )


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) and not typing.get_args(tp) else repr(tp)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _first_line(exc: Exception) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
