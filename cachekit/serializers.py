"""How values become bytes: JSON (orjson, the default), msgpack, and signed pickle (with a keyring).

A serializer only turns a value into bytes and back; the envelope (:mod:`cachekit.flow.envelope`)
adds the header and, when the serializer carries a :class:`~cachekit.serializers.Keyring`, the
MAC. Pickle runs code on load, so :class:`PickleSerializer` cannot be built without a
keyring: a payload is unpickled only after its signature checked out.

Usage::

    cache = Cache.from_url(url, serializer=MsgpackSerializer())
    cache = Cache.from_url(url, serializer=PickleSerializer(keys=[secret]))
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
from collections.abc import Iterable
from typing import Any, Protocol

import orjson

from cachekit.exceptions import ConfigurationError

__all__ = [
    "MAC_SIZE",
    "MIN_KEY_BYTES",
    "JsonSerializer",
    "Keyring",
    "MsgpackSerializer",
    "PickleSerializer",
    "Serializer",
]

MAC_SIZE = hashlib.sha256().digest_size
MIN_KEY_BYTES = 16


class Keyring:
    """Signing keys, newest first.

    **Parameters:**

    * **keys** - the secrets, newest first; at least one, each at least 16 bytes.

    Usage::

        Keyring([os.environ["CACHEKIT_SECRET"]])
    """

    __slots__ = ("_keys",)

    def __init__(self, keys: Iterable[bytes | str]) -> None:
        ring = tuple(k.encode() if isinstance(k, str) else bytes(k) for k in keys)
        if not ring:
            raise ConfigurationError("a Keyring needs at least one key")
        if any(len(k) < MIN_KEY_BYTES for k in ring):
            raise ConfigurationError(
                f"every signing key must be at least {MIN_KEY_BYTES} bytes; "
                "use secrets.token_bytes(32)"
            )
        self._keys = ring

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"Keyring(<{len(self._keys)} keys>)"

    def sign(self, *parts: bytes | memoryview) -> bytes:
        """The MAC of ``parts`` under the newest key."""
        return _mac(self._keys[0], parts)

    def verify(self, mac: bytes | memoryview, *parts: bytes | memoryview) -> bool:
        """Whether ``mac`` is the MAC of ``parts`` under any key of the ring."""
        # Check every key even after a match so timing says nothing about which one.
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(_mac(key, parts), mac)
        return ok


def _mac(key: bytes, parts: tuple[bytes | memoryview, ...]) -> bytes:
    h = hmac.new(key, digestmod=hashlib.sha256)
    for part in parts:
        # Length-prefix each part: ("ab", "c") and ("a", "bc") must not sign alike.
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()


class Serializer(Protocol):
    """What the envelope needs from a serializer.

    ``code`` is written into every envelope and compared on read: a payload written by
    another serializer is a miss. It never selects the decoder.
    """

    @property
    def code(self) -> int:
        """A small integer naming the format in the envelope header."""
        ...

    @property
    def keyring(self) -> Keyring | None:
        """The keys that sign payloads, or ``None`` for unsigned payloads."""
        ...

    def dumps(self, value: Any) -> bytes:
        """Encode ``value``; raises ``TypeError``/``ValueError`` when it cannot."""
        ...

    def loads(self, data: bytes | memoryview) -> Any:
        """Decode bytes produced by :meth:`dumps`; raises on malformed input."""
        ...


class JsonSerializer:
    """JSON through orjson: fast, safe to decode, readable with ``redis-cli``.

    Tuples come back as lists and dict keys must be strings, as in any JSON.

    **Parameters:**

    * **keys** - *(optional)* signing keys; values are then HMAC-signed too.

    Usage::

        Cache.from_url(url, serializer=JsonSerializer())
    """

    __slots__ = ("keyring",)
    code = 1

    def __init__(self, *, keys: Iterable[bytes | str] | None = None) -> None:
        self.keyring = Keyring(keys) if keys is not None else None

    def dumps(self, value: Any) -> bytes:
        """Encode with orjson."""
        return orjson.dumps(value)

    def loads(self, data: bytes | memoryview) -> Any:
        """Decode with orjson."""
        return orjson.loads(data)


class MsgpackSerializer:
    """MessagePack (needs the ``msgpack`` extra): compact, keeps bytes as bytes.

    **Parameters:**

    * **keys** - *(optional)* signing keys; values are then HMAC-signed too.

    Usage::

        Cache.from_url(url, serializer=MsgpackSerializer())
    """

    __slots__ = ("_msgpack", "keyring")
    code = 2

    def __init__(self, *, keys: Iterable[bytes | str] | None = None) -> None:
        import msgpack

        self._msgpack = msgpack
        self.keyring = Keyring(keys) if keys is not None else None

    def dumps(self, value: Any) -> bytes:
        """Encode with ``msgpack.packb``."""
        data: bytes = self._msgpack.packb(value, use_bin_type=True)
        return data

    def loads(self, data: bytes | memoryview) -> Any:
        """Decode with ``msgpack.unpackb`` (string map keys only, no extension types)."""
        return self._msgpack.unpackb(data, raw=False, strict_map_key=True)


class PickleSerializer:
    """Pickle, for arbitrary Python objects, always signed with HMAC-SHA256.

    Only ever use it for values your own code stored: the signature proves that, and an
    unsigned, mis-signed or moved payload is treated as a miss without being unpickled.

    **Parameters:**

    * **keys** - signing keys, newest first (required); see :class:`~cachekit.serializers.Keyring`.

    Usage::

        Cache.from_url(url, serializer=PickleSerializer(keys=[os.environ["CACHE_SECRET"]]))
    """

    __slots__ = ("keyring",)
    code = 3

    def __init__(self, *, keys: Iterable[bytes | str]) -> None:
        self.keyring: Keyring | None = Keyring(keys)

    def dumps(self, value: Any) -> bytes:
        """Pickle with the highest protocol."""
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def loads(self, data: bytes | memoryview) -> Any:
        """Unpickle; the envelope calls this only after the MAC verified."""
        return pickle.loads(data)  # noqa: S301 - signature verified by the envelope first
