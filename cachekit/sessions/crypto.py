"""Encryption at rest for session values: AES-256-GCM with a keyring, for personal data.

Each stored value is sealed on its own: ``version (1 byte) | key id (4) | nonce (12) |
ciphertext and tag``. The associated data binds it to its session id and its key name,
so a value copied to another session, or to another key of the same session, fails to
open exactly like a tampered one. Session ids (the Redis key) and key names stay in the
clear; values - what users typed, what the app learned about them - do not.

Keys rotate like the signing keyring (:mod:`cachekit.serializers`): values are sealed with
the newest key and opened with whichever key sealed them; a value still sealed with an
older key is re-sealed with the newest the next time its session is saved. Put the new
key first, keep the old ones until the longest session lifetime has passed, then drop
them.

Usage::

    from cachekit.sessions import RedisSessionStore, new_encryption_key

    new_encryption_key()   # 'q1Lx...': 32 random bytes, URL-safe base64, for the env
    store = RedisSessionStore(cache, encrypt_keys=[os.environ["SESSION_KEY"]])
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from collections.abc import Iterable
from typing import TYPE_CHECKING

from cachekit.exceptions import ConfigurationError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["SessionCipher", "new_encryption_key"]

_VERSION = b"\x01"
_KEY_BYTES = 32
_NONCE_BYTES = 12
_KID_BYTES = 4
_HEAD = len(_VERSION) + _KID_BYTES + _NONCE_BYTES


def new_encryption_key() -> str:
    """A fresh AES-256 key as URL-safe base64 text (what ``encrypt_keys`` accepts).

    Usage::

        python -c "from cachekit.sessions import new_encryption_key as k; print(k())"
    """
    return base64.urlsafe_b64encode(secrets.token_bytes(_KEY_BYTES)).decode()


def _key_bytes(key: bytes | str) -> bytes:
    if isinstance(key, bytes) and len(key) == _KEY_BYTES:
        return key  # raw key material
    text = key.encode() if isinstance(key, str) else bytes(key)
    try:
        # Base64 with or without padding (Fernet.generate_key() and new_encryption_key()).
        raw = base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != _KEY_BYTES:
        raise ConfigurationError(
            "every session encryption key is 32 random bytes, raw or as URL-safe base64; "
            "make one with cachekit.sessions.new_encryption_key()"
        )
    return raw


class SessionCipher:
    """Seals and opens session values with AES-256-GCM; the newest key seals.

    **Parameters:**

    * **keys** - newest first; each 32 bytes, raw or URL-safe base64 text.

    Usage::

        cipher = SessionCipher([new_encryption_key()])
        blob = cipher.seal("sid", "user", b'"alice"')
        assert cipher.open("sid", "user", blob) == (b'"alice"', False)
    """

    __slots__ = ("_aeads", "_newest")

    def __init__(self, keys: Iterable[bytes | str]) -> None:
        raw = [_key_bytes(k) for k in keys]
        if not raw:
            raise ConfigurationError("encrypt_keys needs at least one key")
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError:
            raise ConfigurationError(
                "session encryption needs the 'cryptography' package: "
                "pip install 'cachekit-redis[encryption]'"
            ) from None
        self._aeads: dict[bytes, AESGCM] = {}
        for key in raw:
            self._aeads.setdefault(hashlib.sha256(key).digest()[:_KID_BYTES], AESGCM(key))
        self._newest = hashlib.sha256(raw[0]).digest()[:_KID_BYTES]

    def __repr__(self) -> str:
        return f"SessionCipher(<{len(self._aeads)} keys>)"

    def seal(self, sid: str, name: str, plaintext: bytes) -> bytes:
        """``plaintext`` sealed with the newest key, bound to ``sid`` and ``name``."""
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = self._aeads[self._newest].encrypt(nonce, plaintext, _aad(sid, name))
        return _VERSION + self._newest + nonce + sealed

    def open(self, sid: str, name: str, blob: bytes) -> tuple[bytes, bool] | None:
        """The plaintext and whether an older key sealed it; ``None`` if it does not open."""
        if len(blob) < _HEAD or blob[:1] != _VERSION:
            return None
        kid = blob[1 : 1 + _KID_BYTES]
        aead = self._aeads.get(kid)
        if aead is None:
            return None  # sealed with a key no longer in the ring
        from cryptography.exceptions import InvalidTag

        try:
            plain = aead.decrypt(blob[1 + _KID_BYTES : _HEAD], blob[_HEAD:], _aad(sid, name))
        except InvalidTag:
            return None
        return plain, kid != self._newest


def _aad(sid: str, name: str) -> bytes:
    # Length-prefixed, so ("ab", "c") and ("a", "bc") bind differently.
    sid_b, name_b = sid.encode(), name.encode("utf-8", "surrogatepass")
    return b"cachekit-session:%d:%s%s" % (len(sid_b), sid_b, name_b)
