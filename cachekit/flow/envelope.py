"""The versioned envelope: everything the read path needs, in the bytes of one GET.

Layout (big-endian), then the optional MAC, then the serializer's payload::

    magic "ck" | version u8 | flags u8 | serializer code u8 | crc32(key) u32
    | payload length u32 | created f64 | logical expiry f64 (0 = none) | load duration f32
    [ | HMAC-SHA256 over (key, header, payload) ]  when the serializer carries a keyring
    | payload  (empty for a null marker; starts with a u64 tag stamp when flagged)

The payload length catches truncation even where a cut payload would still parse (``123``
of ``12345``). The crc32 of the storage key catches a value read under the wrong key (a
mixed-up reply, a copied value) by accident; against a deliberate copy only the MAC helps,
which signed serializers add. The decoder is
chosen by configuration, never by the data: the stored serializer code is only compared.
Anything that does not check out raises :class:`InvalidPayload`, which callers treat as a
miss.

Usage::

    data = encode("p:{k}", 42, JsonSerializer(), created=now, expires=now + 60)
    env = decode("p:{k}", data, JsonSerializer())
    assert env.value == 42
"""

from __future__ import annotations

import struct
import zlib
from typing import Any, Final, NamedTuple

from cachekit.exceptions import SerializationError
from cachekit.serializers import MAC_SIZE, Serializer

__all__ = [
    "HEADER",
    "HEADER_SIZE",
    "VERSION",
    "Envelope",
    "InvalidPayload",
    "SchemaMismatch",
    "decode",
    "encode",
]

MAGIC: Final = b"ck"
VERSION: Final = 1
_FLAG_NULL: Final = 0x01
_FLAG_SIGNED: Final = 0x02
_FLAG_STAMPED: Final = 0x04
_STAMP = struct.Struct(">Q")
HEADER: Final = struct.Struct(">2sBBBIIddf")
HEADER_SIZE: Final = HEADER.size
# What decode() unpacks: the same layout with the magic as an int (no bytes object made).
_READ: Final = struct.Struct(">HBBBIIddf")
_MAGIC_INT: Final = int.from_bytes(MAGIC, "big")
_new = tuple.__new__  # an Envelope without NamedTuple's Python-level __new__


class InvalidPayload(SerializationError):
    """Stored bytes that are not a valid envelope for this key; the reason says why."""


class SchemaMismatch(InvalidPayload):
    """A payload written for another type (or none): the model changed, or the reader did.

    A counted miss (``schema_misses``) like any invalid payload; the next load overwrites it.
    """


class Envelope(NamedTuple):
    """A decoded cache entry.

    **Attributes:**

    * **value** - the cached value (``None`` for a null marker).
    * **created** - wall-clock time it was written.
    * **expires** - wall-clock time its logical (fresh) life ends; ``0.0`` for never.
    * **load_time** - seconds the loader took to produce it (for early refresh).
    * **is_null** - it records that the source had nothing (``None``).
    * **stamp** - the digest of its tags' versions when it was loaded (0: untagged).

    Usage::

        if env.is_fresh(clock.time()): return env.value
    """

    value: Any
    created: float
    expires: float
    load_time: float
    is_null: bool
    stamp: int = 0

    def is_fresh(self, now: float) -> bool:
        """Whether the entry is within its logical lifetime at ``now``."""
        return self.expires == 0.0 or now < self.expires


def encode(
    key: str,
    value: Any,
    serializer: Serializer,
    *,
    created: float,
    expires: float,
    load_time: float = 0.0,
    null: bool = False,
    stamp: int = 0,
) -> bytes:
    """The envelope bytes for ``value`` stored under ``key``.

    Raises :class:`~cachekit.exceptions.SerializationError` when ``value`` cannot be
    encoded by ``serializer``.
    """
    if null:
        payload = b""
    else:
        try:
            payload = serializer.dumps(value)
        except SerializationError:
            raise  # already says what is wrong with the value
        except Exception as exc:  # each serializer fails its own way (PicklingError, ...)
            raise SerializationError(f"cannot encode {type(value).__name__}: {exc}") from exc
    if stamp:
        payload = _STAMP.pack(stamp) + payload
    keyring = serializer.keyring
    flags = (_FLAG_NULL if null else 0) | (_FLAG_SIGNED if keyring is not None else 0)
    flags |= _FLAG_STAMPED if stamp else 0
    key_bytes = key.encode()
    header = HEADER.pack(
        MAGIC,
        VERSION,
        flags,
        serializer.code,
        zlib.crc32(key_bytes),
        len(payload),
        created,
        expires,
        load_time,
    )
    if keyring is None:
        return header + payload
    return header + keyring.sign(key_bytes, header, payload) + payload


def decode(key: str, data: bytes, serializer: Serializer) -> Envelope:
    """Check and decode envelope bytes read from ``key``.

    Raises :class:`InvalidPayload` for anything but an intact envelope written for ``key``
    by ``serializer``; a signed payload is decoded only after its MAC verified.
    """
    # On every hit: one unpack, the checks in the order of the layout, one decode.
    try:
        magic, version, flags, code, crc, size, created, expires, load_time = _READ.unpack_from(
            data
        )
    except struct.error:
        raise InvalidPayload("truncated header") from None
    if magic != _MAGIC_INT or version != VERSION or code != serializer.code:
        raise _bad_header(magic, version, code, serializer)
    key_bytes = key.encode()
    if crc != zlib.crc32(key_bytes):
        raise InvalidPayload("written for another key")
    keyring = serializer.keyring
    if not flags and keyring is None:  # the usual entry: unsigned, untagged, not null
        if len(data) != HEADER_SIZE + size:
            raise InvalidPayload("payload length does not match its header")
        body = data[HEADER_SIZE:]  # bytes: orjson parses them faster than a memoryview
        try:  # inline, not _loads: one frame fewer on every hit
            value = serializer.loads(body)
        except InvalidPayload:
            raise
        except Exception as exc:  # any decoder failure on foreign bytes is just a bad payload
            raise InvalidPayload(f"payload does not decode: {type(exc).__name__}") from exc
        envelope: Envelope = _new(Envelope, (value, created, expires, load_time, False, 0))
        return envelope
    if len(data) != HEADER_SIZE + (MAC_SIZE if flags & _FLAG_SIGNED else 0) + size:
        raise InvalidPayload("payload length does not match its header")
    if keyring is None:
        if flags & _FLAG_SIGNED:
            raise InvalidPayload("signed, but no keyring is configured")
        payload: bytes | memoryview = data[HEADER_SIZE:]
    else:
        if not flags & _FLAG_SIGNED:
            raise InvalidPayload("unsigned, but signatures are required")
        view = memoryview(data)
        mac, payload = view[HEADER_SIZE : HEADER_SIZE + MAC_SIZE], view[HEADER_SIZE + MAC_SIZE :]
        if not keyring.verify(mac, key_bytes, view[:HEADER_SIZE], payload):
            raise InvalidPayload("signature does not verify")
    stamp = 0
    if flags & _FLAG_STAMPED:
        if len(payload) < _STAMP.size:
            raise InvalidPayload("stamp flagged but missing")
        (stamp,) = _STAMP.unpack_from(payload)
        payload = payload[_STAMP.size :]
    if flags & _FLAG_NULL:
        if payload:
            raise InvalidPayload("null marker with a payload")
        return Envelope(None, created, expires, load_time, True, stamp)
    return Envelope(_loads(serializer, payload), created, expires, load_time, False, stamp)


def _loads(serializer: Serializer, payload: bytes | memoryview) -> Any:
    try:
        return serializer.loads(payload)
    except InvalidPayload:
        raise
    except Exception as exc:  # any decoder failure on foreign bytes is just a bad payload
        raise InvalidPayload(f"payload does not decode: {type(exc).__name__}") from exc


def _bad_header(magic: int, version: int, code: int, serializer: Serializer) -> InvalidPayload:
    """What is wrong with a header whose magic, version or serializer code is off."""
    if magic != _MAGIC_INT:
        return InvalidPayload("not a cachekit envelope")
    if version != VERSION:
        return InvalidPayload(f"unknown envelope version {version}")
    return InvalidPayload(f"written with serializer code {code}, expected {serializer.code}")
