"""HTTP caching rules as pure functions: Cache-Control, Vary, freshness, what may be stored.

Nothing here does I/O or knows about ASGI beyond raw ``(name, value)`` byte pairs, so
every rule of RFC 9111 (and RFC 5861's stale extensions) that the response cache follows
is unit-tested on its own. Header bytes are decoded as latin-1: any byte sequence is
valid there, so hostile (non-UTF-8) input can never raise.

Usage::

    cc = parse_cache_control("public, max-age=60, stale-while-revalidate=30")
    freshness(cc, [], default_ttl=10, now=time.time())     # 60.0
    refusal(200, [(b"set-cookie", b"a=1")], Exchange())    # 'set-cookie'
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from cachekit.middleware.httpdates import parse_http_date

__all__ = [
    "CONDITIONAL",
    "DEFAULT_BYPASS_HEADERS",
    "DEFAULT_ENCODINGS",
    "HOP_BY_HOP",
    "UNDERSTOOD_STATUSES",
    "Exchange",
    "Headers",
    "accept_encoding_key",
    "etag_matches",
    "freshness",
    "header",
    "normalize_query",
    "parse_cache_control",
    "parse_vary",
    "refusal",
    "stale_windows",
]

Headers = Sequence[tuple[bytes, bytes]]

HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
"""Headers that describe one connection, never a stored response (RFC 9110 section 7.6.1)."""

DEFAULT_BYPASS_HEADERS: Final = (
    "forwarded",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-scheme",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-host",
    "x-original-host",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
)
"""Request headers that apps read into responses but that are not in the key (R7).

A request carrying one bypasses the cache, so it can neither poison an entry nor be
served one. Behind a trusted proxy that always sets one, key it instead (``key_headers``).

* the ``X-HTTP-Method-Override`` family (``X-HTTP-Method``, ``X-Method-Override``) turns
  a GET into another method in frameworks that honour it;
* ``X-Original-Host`` replaces the host in some frameworks' routing and URL building
  (ASP.NET's forwarded-headers middleware, IIS ARR);
* ``X-Forwarded-Server`` names the proxy's host; apps that build absolute URLs from it
  (some PHP frameworks, mod_proxy setups) would store a URL an attacker chose. Apache's
  ``mod_proxy`` sends it with ``X-Forwarded-Host`` on every request: behind it, key both
  (``key_headers``) as the proxy sets them.
"""

CONDITIONAL: Final = frozenset(
    {b"if-none-match", b"if-modified-since", b"if-match", b"if-unmodified-since", b"if-range"}
)
"""Request headers that make a request conditional (RFC 9110 section 13.1)."""

UNDERSTOOD_STATUSES: Final = frozenset(
    (*range(200, 207), *range(300, 306), 307, 308, *range(400, 418), 421, 422, 426)
).union(range(500, 506))
"""The final statuses RFC 9110 defines, whose caching rules this cache knows (must-understand)."""

DEFAULT_ENCODINGS: Final = ("br", "deflate", "gzip", "zstd")
"""Content codings the key distinguishes under ``Vary: Accept-Encoding``."""

STAR: Final = ("*",)


def header(headers: Headers, name: bytes) -> str | None:
    """Every value of header ``name`` (lower-case) joined by ``", "``, or ``None``."""
    values = [value for key, value in headers if key.lower() == name]
    if not values:
        return None
    return b", ".join(values).decode("latin-1")


def parse_cache_control(value: str | None) -> dict[str, str | None]:
    """``{directive: argument or None}`` with lower-case names and unquoted arguments.

    Usage::

        parse_cache_control('max-age=60, private="set-cookie"')
        # {'max-age': '60', 'private': 'set-cookie'}
    """
    result: dict[str, str | None] = {}
    if not value:
        return result
    for part in value.split(","):
        name, sep, arg = part.strip().partition("=")
        name = name.strip().lower()
        if not name:
            continue
        # The first occurrence wins: a duplicate cannot loosen what came before it.
        result.setdefault(name, arg.strip().strip('"') if sep else None)
    return result


def _seconds(cc: Mapping[str, str | None], name: str) -> int | None:
    """A delta-seconds argument; a malformed one reads as 0 (the safe side)."""
    if name not in cc:
        return None
    arg = cc[name]
    if arg is None or not arg.isascii() or not arg.isdigit():
        return 0
    return min(int(arg), 2**31)


def parse_vary(value: str | None) -> tuple[str, ...]:
    """The sorted, lower-case header names of ``Vary``; ``("*",)`` when it holds ``*``."""
    if not value:
        return ()
    names = {name.strip().lower() for name in value.split(",")} - {""}
    return STAR if "*" in names else tuple(sorted(names))


def normalize_query(query: bytes) -> bytes:
    """The query string with parameters sorted by name (stable: repeats keep their order).

    ``?b=2&a=1`` and ``?a=1&b=2`` are one entry; empty parameters are dropped.
    """
    if not query:
        return b""
    parts = [part for part in query.split(b"&") if part]
    parts.sort(key=lambda part: part.partition(b"=")[0])
    return b"&".join(parts)


def accept_encoding_key(value: str | None, encodings: Collection[str]) -> str:
    """The codings of ``Accept-Encoding`` that ``encodings`` lists, sorted: one variant each.

    Weights only matter as ``q=0`` (refused); ``gzip, br`` and ``br;q=0.5, gzip`` are one
    variant, since any entry made for one is acceptable to the other.
    """
    if not value:
        return ""
    accepted = set()
    for part in value.lower().split(","):
        coding, *params = (piece.strip() for piece in part.split(";"))
        refused = any(p.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000") for p in params)
        if coding in encodings and not refused:
            accepted.add(coding)
    return ",".join(sorted(accepted))


@dataclass(frozen=True, slots=True, kw_only=True)
class Exchange:
    """What the storing rules need to know about the request and the route.

    * ``authorized`` - the request carried ``Authorization``.
    * ``shareable_authorized`` - the route may share responses to authorized requests
      (then only when the response says ``public`` or ``s-maxage``, R1).
    * ``request_no_store`` - the request said ``Cache-Control: no-store``.
    * ``statuses`` - the statuses that may be stored (206 never is).
    * ``max_body_size`` - bytes; a larger ``Content-Length`` is refused up front.
    """

    authorized: bool = False
    shareable_authorized: bool = False
    request_no_store: bool = False
    statuses: Collection[int] = (200,)
    max_body_size: int = 1 << 20


def refusal(
    status: int,
    headers: Headers,
    exchange: Exchange,
    cc: Mapping[str, str | None] | None = None,
) -> str | None:
    """Why this response must not be stored, or ``None`` when it may be (RFC 9111 section 3).

    Usage::

        refusal(200, [(b"cache-control", b"private")], Exchange())   # 'private'
    """
    if status == 206 or header(headers, b"content-range") is not None:
        return "partial"  # we do not implement ranges, so never store one (R8)
    if status not in exchange.statuses:
        return "status"
    if exchange.request_no_store:
        return "request-no-store"
    if cc is None:  # else: the directives that apply to us (a targeted field's, RFC 9213)
        cc = parse_cache_control(header(headers, b"cache-control"))
    if "must-understand" in cc:  # RFC 9111 5.2.2.3: it replaces no-store for known statuses
        if status not in UNDERSTOOD_STATUSES:
            return "must-understand"
    elif "no-store" in cc:
        return "no-store"
    if "private" in cc:
        return "private"
    if any(name.lower() == b"set-cookie" for name, _ in headers):
        return "set-cookie"
    if parse_vary(header(headers, b"vary")) == STAR:
        return "vary-star"
    if exchange.authorized and not (
        exchange.shareable_authorized and ("public" in cc or "s-maxage" in cc)
    ):
        return "authorization"
    content_type = (header(headers, b"content-type") or "").lower()
    if content_type.startswith("text/event-stream"):
        return "event-stream"
    length = header(headers, b"content-length")
    if length is not None and length.strip().isdigit() and int(length) > exchange.max_body_size:
        return "too-large"
    return None


def freshness(
    cc: Mapping[str, str | None], headers: Headers, default_ttl: float, now: float
) -> float:
    """Seconds a response stays fresh: ``s-maxage``, ``max-age``, ``Expires``, else the default.

    An ``Expires`` that is not a valid HTTP date (:func:`parse_http_date`, strict) is in
    the past (RFC 9111 section 5.3): 0.
    """
    for name in ("s-maxage", "max-age"):
        seconds = _seconds(cc, name)
        if seconds is not None:
            return float(seconds)
    expires = header(headers, b"expires")
    if expires is not None:
        when = parse_http_date(expires, now)
        if when is None:
            return 0.0
        date = parse_http_date(header(headers, b"date"), now)
        return max(0.0, when - (now if date is None else date))
    return default_ttl


def stale_windows(
    cc: Mapping[str, str | None], while_revalidate: float, if_error: float
) -> tuple[float, float]:
    """``(stale-while-revalidate, stale-if-error)`` seconds for a response (RFC 5861).

    The response's own directives win over the middleware's options; ``must-revalidate``,
    ``proxy-revalidate``, ``s-maxage`` (which implies it for a shared cache) and
    ``no-cache`` forbid serving it stale at all (RFC 9111 5.2.2).
    """
    if any(name in cc for name in ("must-revalidate", "proxy-revalidate", "s-maxage", "no-cache")):
        return 0.0, 0.0
    swr = _seconds(cc, "stale-while-revalidate")
    sie = _seconds(cc, "stale-if-error")
    return (
        float(swr) if swr is not None else while_revalidate,
        float(sie) if sie is not None else if_error,
    )


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether ``If-None-Match`` matches ``etag`` by the weak comparison (RFC 9110 13.1.2)."""
    if not if_none_match or not etag:
        return False
    if if_none_match.strip() == "*":
        return True
    bare = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == bare for tag in if_none_match.split(","))


def lower_names(names: Iterable[str]) -> tuple[str, ...]:
    """Header names as the key compares them: lower-case, stripped, sorted, unique."""
    return tuple(sorted({name.strip().lower() for name in names} - {""}))
