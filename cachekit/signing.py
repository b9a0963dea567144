"""HMAC-SHA256 signatures with a keyring, so that stored values can be trusted.

The algorithm is fixed here in code; nothing read from Redis can choose it. New values are
signed with the newest key and verified against every key of the ring, so a key can be
rotated without a cold cache: put the new key first, keep the old one until the longest
TTL has passed, then drop it.

Usage::

    ring = Keyring([b"new-secret-of-32-bytes-or-more...", b"old-secret..."])
    mac = ring.sign(b"key", b"payload")
    assert ring.verify(mac, b"key", b"payload")
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from .exceptions import ConfigurationError

__all__ = ["MAC_SIZE", "MIN_KEY_BYTES", "Keyring"]

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
