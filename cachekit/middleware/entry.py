"""What the response cache stores, and the keys it stores it under.

Every key of one decoded path lives under that path's **home**,
``<prefix>:http:{p<digest of the path>}``, whose braces are a Redis Cluster hash tag: a
path's keys share one slot, so one Lua script may read any of them (a hit is one
EVALSHA, :class:`~cachekit.backends.ops.responses.ReadResponse`). Under the home:

* ``:g`` - the path's **generation**, a random token. Records and entries carry a stamp
  of it as it was when read; an unsafe request or :func:`purge` replaces it, so every
  entry of that path (any host, query or variant) stops matching at once, with no scan;
* ``:u<digest>`` - a **record** per URL (scheme, host, raw path, normalized query): the
  header names the app's ``Vary`` nominated, or a hit-for-miss marker for a URL whose
  last response could not be stored;
* ``:v<digest>`` - an **entry** per variant: the URL plus the values of those headers.

No user key can reach the ``http`` namespace (:meth:`~cachekit.flow.keys.KeySpace.namespaced`).
Every stored value is a :mod:`cachekit.flow.envelope` written for its exact key, and an entry
also holds the URL and header values it was stored for: a read serves it only when they
equal the request's (R10), whatever the key hashing did.

Usage::

    target = RequestKeys.of(keyspace, "https", "shop.test", b"/p", b"b=2&a=1", "/p")
    key = target.variant_key(vary_values(("accept-encoding",), headers, DEFAULT_ENCODINGS))
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

import orjson

from cachekit.flow.envelope import InvalidPayload, decode, encode
from cachekit.flow.keys import KeySpace
from cachekit.middleware.directives import Headers, accept_encoding_key, header, normalize_query

__all__ = [
    "CODEC",
    "GENERATION_SUFFIX",
    "REVALIDATION_KEEP",
    "Entry",
    "Record",
    "RequestKeys",
    "VaryValues",
    "content_etag",
    "decode_entry",
    "decode_record",
    "encode_entry",
    "encode_record",
    "http_pattern",
    "path_home",
    "vary_values",
]

VaryValues = tuple[tuple[str, str | None], ...]
_LENGTH = struct.Struct(">I")


def _digest(*parts: bytes) -> str:
    """128 bits of BLAKE2b over length-prefixed parts (injective: no two splits collide)."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(_LENGTH.pack(len(part)))
        h.update(part)
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class RequestKeys:
    """The keys of one request URL.

    * ``url`` - ``scheme://host/raw-path?normalized-query``, latin-1 text (any bytes fit).
    * ``path`` - the decoded path, which invalidation names.
    * ``home`` - the head of every key of the path (one hash tag: one Cluster slot).
    * ``record`` - the URL's record key.
    * ``generation`` - the path's generation key.
    """

    url: str
    path: str
    home: str
    record: str
    generation: str

    @classmethod
    def of(
        cls,
        keyspace: KeySpace,
        scheme: str,
        host: bytes,
        raw_path: bytes,
        query: bytes,
        path: str,
        extra: bytes = b"",
    ) -> RequestKeys:
        """The keys of a request for ``scheme://host raw_path ? query``.

        ``extra`` is keyed too: the values of the headers configured as ``key_headers``.
        """
        url = b"%s://%s%s?%s%s" % (
            scheme.encode("latin-1", "replace"),
            host.lower(),
            raw_path,
            normalize_query(query),
            extra,
        )
        home = path_home(keyspace, path)
        return cls(
            url=url.decode("latin-1"),
            path=path,
            home=home,
            record=home + ":u" + _digest(url),
            generation=home + GENERATION_SUFFIX,
        )

    def variant_key(self, values: VaryValues) -> str:
        """The entry key of the variant whose nominated request headers hold ``values``."""
        parts = [self.url.encode("latin-1")]
        for name, value in values:
            parts.append(name.encode("latin-1"))
            # An absent header and an empty one are different variants.
            parts.append(b"\x00" if value is None else b"=" + value.encode("latin-1"))
        return self.home + ":v" + _digest(*parts)


GENERATION_SUFFIX: Final = ":g"
REVALIDATION_KEEP: Final = 300.0
"""Seconds a stale response with validators is kept for revalidation."""


def path_home(keyspace: KeySpace, path: str) -> str:
    """The head of every key of decoded ``path``: ``<prefix>:http:{p<digest>}``."""
    return keyspace.namespaced("http", "p" + _digest(path.encode("utf-8", "surrogatepass")))


def http_pattern(keyspace: KeySpace) -> str:
    """A SCAN pattern matching every key of the response cache, and nothing else.

    The tag's exact shape (``p`` and 32 hex digits) is spelled out, so that the values of
    a cache whose prefix is ours plus ``:http`` are not matched.
    """
    return keyspace.namespaced("http", "p" + "?" * 32) + ":*"


def vary_values(names: Sequence[str], headers: Headers, encodings: Collection[str]) -> VaryValues:
    """The request's values of the ``Vary`` header ``names``, normalized for the key.

    ``Accept-Encoding`` is reduced to the codings the app may produce (one variant per
    coding); other values only have their whitespace collapsed. Case is kept: header
    values such as ``Authorization`` are case-sensitive.
    """
    out: list[tuple[str, str | None]] = []
    for name in names:
        raw = header(headers, name.encode("latin-1"))
        if name == "accept-encoding":
            out.append((name, accept_encoding_key(raw, encodings)))
        elif raw is None:
            out.append((name, None))
        else:
            out.append((name, " ".join(raw.split())))
    return tuple(out)


def content_etag(body: bytes) -> str:
    """A strong ETag from the body's hash: the same in every process and after restarts."""
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


@dataclass(frozen=True, slots=True)
class Record:
    """A URL's record: the ``Vary`` names of its entries, or a hit-for-miss marker."""

    vary: tuple[str, ...] = ()
    uncacheable: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One stored response and the request it answers.

    * ``status``, ``headers``, ``body`` - the response, minus hop-by-hop headers (and it
      never has ``Set-Cookie``: such responses are not stored).
    * ``etag`` - the app's ``ETag``, else :func:`content_etag`.
    * ``url``, ``vary`` - the request it was stored for; served only to equal ones.
    * ``shared_authorized`` - it may answer requests carrying ``Authorization``.
    * ``created``, ``expires`` - wall-clock times it was stored and stops being fresh.
    * ``age`` - how old it already was when stored (the origin's ``Age``, or its
      ``Date`` in the past, RFC 9111 section 4.2.3): the ``Age`` served adds it.
    * ``stale_while_revalidate``, ``stale_if_error`` - seconds after ``expires`` in which
      it is served while one refresh runs, or while the app fails.
    """

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    etag: str
    url: str
    vary: VaryValues
    shared_authorized: bool
    created: float = 0.0
    expires: float = 0.0
    stale_while_revalidate: float = 0.0
    stale_if_error: float = 0.0
    age: float = 0.0
    origin_etag: bool = False  # ``etag`` is the app's own, not a content hash of ours

    def matches(self, url: str, values: VaryValues) -> bool:
        """Whether this entry was stored for a request equal to this one (R10)."""
        return self.url == url and self.vary == values

    @property
    def vary_names(self) -> tuple[str, ...]:
        """The header names this entry's variant depends on."""
        return tuple(name for name, _ in self.vary)

    def current_age(self, now: float) -> int:
        """The ``Age`` to send at ``now``: its age when stored plus its time here."""
        return int(min(self.age + max(0.0, now - self.created), 2**31))

    def validators(self) -> list[tuple[bytes, bytes]]:
        """The conditional request headers that revalidate it with the app (RFC 9111 4.3.1)."""
        out = []
        if self.origin_etag:
            out.append((b"if-none-match", self.etag.encode("latin-1")))
        modified = header(self.headers, b"last-modified")
        if modified is not None:
            out.append((b"if-modified-since", modified.encode("latin-1")))
        return out

    def lifetime(self) -> float:
        """Seconds it must stay in Redis: fresh life plus the longer stale window.

        One with validators is kept at least :data:`REVALIDATION_KEEP` past its freshness,
        so that it can be revalidated (a 304) instead of fetched again in full.
        """
        keep = REVALIDATION_KEEP if self.validators() else 0.0
        return max(self.expires - self.created, 0.0) + max(
            self.stale_while_revalidate, self.stale_if_error, keep
        )


class _Codec:
    """The envelope payload of records and entries: JSON metadata, then the raw body.

    A body is never base64'd or escaped: ``len(meta) | meta | body``.
    """

    __slots__ = ()
    code = 72  # "H": a value written by anything else is a miss
    keyring = None

    def dumps(self, value: Any) -> bytes:
        if isinstance(value, Record):
            meta = orjson.dumps({"r": list(value.vary), "x": value.uncacheable})
            return _LENGTH.pack(len(meta)) + meta
        entry: Entry = value
        meta = orjson.dumps(
            {
                "s": entry.status,
                "h": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in entry.headers],
                "e": entry.etag,
                "u": entry.url,
                "v": [list(pair) for pair in entry.vary],
                "a": entry.shared_authorized,
                "w": entry.stale_while_revalidate,
                "i": entry.stale_if_error,
                "g": entry.age,
                "o": entry.origin_etag,
            }
        )
        return _LENGTH.pack(len(meta)) + meta + entry.body

    def loads(self, data: bytes | memoryview) -> Any:
        (size,) = _LENGTH.unpack_from(data)
        meta = orjson.loads(data[_LENGTH.size : _LENGTH.size + size])
        if "r" in meta:
            return Record(tuple(meta["r"]), bool(meta["x"]))
        return Entry(
            status=int(meta["s"]),
            headers=tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in meta["h"]),
            body=bytes(data[_LENGTH.size + size :]),
            etag=meta["e"],
            url=meta["u"],
            vary=tuple((name, value) for name, value in meta["v"]),
            shared_authorized=bool(meta["a"]),
            stale_while_revalidate=float(meta["w"]),
            stale_if_error=float(meta["i"]),
            age=float(meta.get("g", 0.0)),
            origin_etag=bool(meta.get("o", False)),
        )


CODEC: Final = _Codec()


def encode_record(key: str, record: Record, *, now: float, stamp: int) -> bytes:
    """The envelope bytes of ``record`` stored at ``key``."""
    return encode(key, record, CODEC, created=now, expires=0.0, stamp=stamp)


def encode_entry(key: str, entry: Entry, *, stamp: int) -> bytes:
    """The envelope bytes of ``entry`` stored at ``key``."""
    return encode(key, entry, CODEC, created=entry.created, expires=entry.expires, stamp=stamp)


class _Memo:
    """What the bytes last read at each key decoded to, so a steady hit decodes nothing.

    Decoding depends on nothing but the key and the bytes (the stamp is compared after),
    so bytes equal to the last ones read at a key decode to the same value: a hit then
    skips the envelope checks, the JSON and the dataclasses, a sixth of its CPU. Comparing
    bytes is a ``memcmp``. Bounded by the bytes it holds; a value larger than a tenth of
    that is decoded every time. Thread-safe: one dict operation at a time, immutable items.
    """

    __slots__ = ("_budget", "_held", "_items")

    def __init__(self, budget: int) -> None:
        self._budget = budget
        self._held = 0
        self._items: dict[str, tuple[bytes, int, Record | Entry | None]] = {}

    def decoded(self, key: str, raw: bytes) -> tuple[int, Record | Entry | None]:
        """``(stamp, value)`` of ``raw`` read at ``key``; ``value`` is ``None`` if invalid."""
        item = self._items.get(key)
        if item is not None and item[0] == raw:
            return item[1], item[2]
        stamp, value = _decode(key, raw)
        if len(raw) * 10 <= self._budget:
            if self._held + len(raw) > self._budget:
                self._items, self._held = {}, 0
            self._items[key] = (raw, stamp, value)
            self._held += len(raw)
        return stamp, value


_MEMO: Final = _Memo(32 << 20)


def _decode(key: str, raw: bytes) -> tuple[int, Record | Entry | None]:
    try:
        envelope = decode(key, raw, CODEC)
    except (InvalidPayload, KeyError, TypeError, ValueError, struct.error):
        return 0, None
    value = envelope.value
    if isinstance(value, Entry):  # its times live in the envelope
        value = replace(value, created=envelope.created, expires=envelope.expires)
    elif not isinstance(value, Record):
        return 0, None
    return envelope.stamp, value


def decode_record(key: str, raw: bytes | None, stamp: int) -> Record | None:
    """The record in ``raw`` if it is intact and of the current generation."""
    if raw is None:
        return None
    found, value = _MEMO.decoded(key, raw)
    return value if found == stamp and isinstance(value, Record) else None


def decode_entry(key: str, raw: bytes | None, stamp: int) -> Entry | None:
    """The entry in ``raw`` if it is intact and of the current generation."""
    if raw is None:
        return None
    found, value = _MEMO.decoded(key, raw)
    return value if found == stamp and isinstance(value, Entry) else None
