"""``cachekit get``: one cache entry, found and decoded exactly as the library does it.

The logical key (``product:5``, as a key template renders it) becomes the Redis key by
:meth:`cachekit.flow.keys.KeySpace.value`; ``--raw`` takes a Redis key as it is. The bytes are
checked and decoded by :func:`cachekit.flow.envelope.decode`, with the serializer the
envelope's header names (JSON or msgpack). Two things differ from an app's read, both
because the CLI holds no secret:

* a signed envelope's MAC is not checked: its header and, for JSON and msgpack, its
  payload are shown and labelled unverified;
* a pickle payload is never unpickled (unpickling runs code): only its header is shown,
  as for any other format the CLI does not decode (the response cache's entries).

Usage::

    cachekit get product:5
    cachekit get --raw 'shop:{product:5}' --json
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Mapping
from typing import Any, Final

from cachekit.backends.ops import Get, Ttl
from cachekit.cli.ops import KeyType
from cachekit.cli.output import Failure, as_json, duration, fields, moment, pretty, shown
from cachekit.cli.server import Server
from cachekit.flow.codecs import split_typed
from cachekit.flow.envelope import HEADER, Envelope, InvalidPayload, decode
from cachekit.middleware.entry import CODEC
from cachekit.serializers import (
    MIN_KEY_BYTES,
    JsonSerializer,
    Keyring,
    MsgpackSerializer,
    PickleSerializer,
    Serializer,
)

__all__ = ["read_entry", "show_entry"]

_FORMATS: Final = {
    JsonSerializer.code: "json",
    MsgpackSerializer.code: "msgpack",
    PickleSerializer.code: "pickle",
    CODEC.code: "response cache",
}
_DECODED: Final = (JsonSerializer.code, MsgpackSerializer.code)


class _Unchecked(Keyring):
    """Accepts every MAC: lets the library's decoder read a signed envelope it cannot verify.

    Only for showing an entry to a person, always labelled "not checked"; a pickle payload
    read this way is still never unpickled (:class:`_Reader`).
    """

    def __init__(self) -> None:
        super().__init__([bytes(MIN_KEY_BYTES)])

    def verify(self, mac: bytes | memoryview, *parts: bytes | memoryview) -> bool:
        return True


class _Reader:
    """A read-only serializer for the format an envelope names; decodes JSON and msgpack.

    Any other payload (pickle above all) is left alone and read as ``None``.
    """

    def __init__(self, code: int, keyring: Keyring | None) -> None:
        self.code = code
        self.keyring = keyring
        self.shape: str | None = None  # the fingerprint of a typed payload's type
        self._inner: Serializer | None = None
        if code == JsonSerializer.code:
            self._inner = JsonSerializer()
        elif code == MsgpackSerializer.code:
            try:
                self._inner = MsgpackSerializer()
            except ImportError:
                raise Failure(
                    "this entry is msgpack: install cachekit[msgpack] to decode it", code=2
                ) from None

    def dumps(self, value: Any) -> bytes:
        raise TypeError("the command line only reads entries")

    def loads(self, data: bytes | memoryview) -> Any:
        # A typed payload is plain JSON or msgpack behind its type's fingerprint.
        self.shape, body = split_typed(data)
        return None if self._inner is None else self._inner.loads(body)


def read_entry(key: str, data: bytes) -> tuple[Envelope, int, bool, str | None]:
    """``(envelope, serializer code, signed, shape)`` of the bytes read at Redis key ``key``.

    The envelope's value is ``None`` unless the payload is JSON or msgpack; ``shape`` is
    the type fingerprint of a typed payload (a return annotation's), else ``None``. Raises
    :class:`~cachekit.cli.output.Failure` (code 1) for bytes that are not an intact
    cachekit envelope written for ``key``, with the library's reason.

    Usage::

        envelope, code, signed, shape = read_entry("shop:{product:5}", raw)
    """
    try:
        code = int(HEADER.unpack_from(data)[3])
    except struct.error:
        code = JsonSerializer.code  # the decoder below says "truncated header"
    # Pickle is always signed; the others usually are not: try the likely form first, and
    # report its error if neither decodes.
    unchecked = _Unchecked()
    order = (unchecked, None) if code == PickleSerializer.code else (None, unchecked)
    errors: list[InvalidPayload] = []
    for keyring in order:
        try:
            reader = _Reader(code, keyring)
            envelope = decode(key, data, reader)
            return envelope, code, keyring is not None, reader.shape
        except InvalidPayload as exc:
            errors.append(exc)
    raise Failure(f"{key} does not hold a cachekit envelope: {errors[0]}", code=1)


def show_entry(server: Server, key: str, *, raw: bool, as_json_output: bool) -> int:
    """Print the entry at logical key ``key`` (a Redis key with ``raw``).

    Raises :class:`~cachekit.cli.output.Failure` (1) when there is none or it is not one.

    Usage::

        show_entry(server, "product:5", raw=False, as_json_output=False)
    """
    if shown(key) != key:  # undecodable bytes from the command line
        raise Failure(f"{shown(key)} is not UTF-8 text; cachekit's keys always are", code=2)
    redis_key = key if raw else server.keyspace.value(key)
    kind = server.run(KeyType(redis_key))
    if kind == "none":
        raise Failure(_absent(server, key, redis_key, raw), code=1)
    if kind != "string":
        raise Failure(
            f"{redis_key} holds a Redis {kind}, not a cachekit envelope "
            "(sessions and carts are hashes)",
            code=1,
        )
    data, ttl = server.run(Get(redis_key)), server.run(Ttl(redis_key))
    if data is None or ttl is None:
        raise Failure(f"{redis_key} expired while it was being read", code=1)
    envelope, code, signed, shape = read_entry(redis_key, data)
    report = _report(None if raw else key, redis_key, envelope, code, signed, ttl, time.time())
    report["typed_shape"] = shape
    print(as_json(report) if as_json_output else _render(report))
    return 0


def _absent(server: Server, key: str, redis_key: str, raw: bool) -> str:
    message = f"no entry at {redis_key}"
    if not raw and key.startswith(server.prefix + ":"):
        message += f" (that looks like a Redis key: try --raw {key})"
    elif not raw:
        message += f" (logical key {key!r} under prefix {server.prefix!r})"
    return message


def _report(
    logical: str | None,
    redis_key: str,
    env: Envelope,
    code: int,
    signed: bool,
    ttl: float,
    now: float,
) -> dict[str, Any]:
    fresh = env.is_fresh(now)
    decoded = code in _DECODED and not env.is_null
    return {
        "key": logical,
        "redis_key": redis_key,
        "format": _FORMATS.get(code, f"code {code}"),
        "serializer_code": code,
        "signed": signed,
        "signature_checked": False if signed else None,
        "null": env.is_null,
        "decoded": decoded,
        "value": env.value if decoded else None,
        "created": env.created,
        "age": now - env.created,
        "expires": env.expires or None,
        "fresh": fresh,
        "fresh_for": env.expires - now if env.expires and fresh else None,
        "stale_for": None if fresh else now - env.expires,
        "physical_ttl": None if math.isinf(ttl) else ttl,
        "load_time": env.load_time,
        "tag_stamp": env.stamp or None,
    }


def _render(r: Mapping[str, Any]) -> str:
    form = r["format"]
    if r["signed"]:
        form += ", signed (signature not checked: the CLI has no key)"
    if r["typed_shape"]:
        form += f", typed (shape {r['typed_shape']}: hits decode it into the return annotation)"
    age = r["age"]
    created = f"{moment(r['created'])} ({duration(age)} ago)"
    if age < 0:
        created = f"{moment(r['created'])} ({duration(-age)} in the future: clocks disagree)"
    if r["expires"] is None:
        logical = "no logical expiry"
    elif r["fresh"]:
        logical = f"fresh for {duration(r['fresh_for'])} (until {moment(r['expires'])})"
    else:
        logical = f"stale since {duration(r['stale_for'])} (expired {moment(r['expires'])})"
    ttl = "none (persistent)" if r["physical_ttl"] is None else duration(r["physical_ttl"])
    rows = [("key", r["key"])] if r["key"] is not None else []
    rows += [
        ("redis key", r["redis_key"]),
        ("format", form),
        ("null marker", "yes: the source had nothing, callers get None" if r["null"] else "no"),
        ("created", created),
        ("logical", logical),
        ("physical TTL", ttl),
        ("load time", duration(r["load_time"])),
    ]
    if r["tag_stamp"] is not None:
        stamp = f"{r['tag_stamp']:#x}: valid while its tags keep the versions it was read with"
        rows.append(("tag stamp", stamp))
    if r["null"]:
        payload = "(none: a null marker)"
    elif r["decoded"]:
        payload = pretty(r["value"])
    elif r["format"] == "pickle":
        payload = "(a signed pickle: not unpickled, unpickling runs code)"
    else:
        payload = f"({r['format']} format: not decoded by the CLI)"
    return fields(rows) + "\n  payload\n" + _indent(payload, "    ")


def _indent(text: str, pad: str) -> str:
    return "\n".join(pad + line for line in text.splitlines())
