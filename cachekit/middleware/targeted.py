"""Targeted cache control (RFC 9213): ``CDN-Cache-Control`` and the cache's own field.

A response may carry cache directives meant for one class of cache only: a field named
for its target, in the ``Cache-Control`` syntax but parsed as a Structured Field
dictionary (RFC 8941). The response cache reads the fields of its targets in order
(``Cachekit-Cache-Control`` then ``CDN-Cache-Control`` by default): the first one present
and valid replaces ``Cache-Control`` *and* ``Expires`` for this cache; an invalid one is
ignored as if absent. The field itself is passed on and stored unchanged, for the caches
downstream.

Usage::

    parse_targeted("max-age=60, stale-if-error=30")   # {'max-age': '60', 'stale-if-error': '30'}
    parse_targeted('max-age="60"')                     # None: a string is the wrong type
    response_directives(headers, (b"cachekit-cache-control", b"cdn-cache-control"))
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from cachekit.middleware.directives import Headers, header, parse_cache_control

__all__ = ["DEFAULT_TARGETS", "parse_targeted", "response_directives"]

DEFAULT_TARGETS: Final = ("Cachekit-Cache-Control", "CDN-Cache-Control")
"""The targeted fields the response cache obeys, most specific first."""

_KEY: Final = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_INTEGER: Final = re.compile(r"-?\d{1,15}")
_BARE: Final = re.compile(
    r"-?\d{1,12}\.\d{1,3}"  # decimal
    r"|[A-Za-z*][A-Za-z0-9:/!#$%&'*+\-.^_`|~]*"  # token
    r'|"(?:[^"\\\x00-\x1f\x7f]|\\["\\])*"'  # string
    r"|:[A-Za-z0-9+/=]*:"  # byte sequence
    r"|\?[01]"  # boolean
)
_DELTAS: Final = frozenset({"max-age", "s-maxage", "stale-while-revalidate", "stale-if-error"})


def parse_targeted(value: str | None) -> dict[str, str | None] | None:
    """A targeted field's directives, or ``None`` when it is absent or not a valid dictionary.

    Members are ``key`` or ``key=item``; parameters (``;...``) are ignored. The delta
    directives must be integers (a string or a decimal makes the whole field invalid);
    integers saturate at 2^31.
    """
    if value is None:
        return None
    result: dict[str, str | None] = {}
    for raw in value.split(","):  # no member of ours holds a comma (strings are rejected)
        member = raw.strip(" \t").split(";", 1)[0]
        key, eq, item = member.partition("=")
        if not _KEY.fullmatch(key):
            return None
        if not eq or item == "?1":
            result[key] = None
            continue
        if _INTEGER.fullmatch(item):
            if item.startswith("-"):
                return None
            result[key] = str(min(int(item), 2**31))
            continue
        if key in _DELTAS or not _BARE.fullmatch(item):
            return None
        result[key] = item.strip('"')
    return result


def response_directives(
    headers: Headers, targets: Sequence[bytes]
) -> tuple[dict[str, str | None], bool]:
    """``(directives, targeted)``: the first valid targeted field's, else ``Cache-Control``'s.

    When ``targeted``, ``Expires`` must be ignored too (RFC 9213 section 2.1).
    """
    for name in targets:
        directives = parse_targeted(header(headers, name))
        if directives is not None:
            return directives, True
    return parse_cache_control(header(headers, b"cache-control")), False
