"""What the command line prints: tables, sizes, durations, JSON, and :class:`Failure`.

Every command builds plain data first (the ``--json`` form) and renders it for people
here, so the two outputs never disagree.

Usage::

    print(table(["name", "keys"], [["value", 12]]))
    print(duration(90.5))            # '1 min 30.5 s'
    raise Failure("no such key", code=1)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

__all__ = [
    "Failure",
    "as_json",
    "duration",
    "fields",
    "moment",
    "number",
    "pretty",
    "redact",
    "shown",
    "size",
    "table",
]


class Failure(Exception):
    """A command failed in a way the user can act on: one line on stderr, then ``code``.

    ``code`` is 1 for "not found / not what was expected" and 2 for usage, configuration
    and connection errors.

    Usage::

        raise Failure(f"no value at {key}", code=1)
    """

    def __init__(self, message: str, *, code: int) -> None:
        super().__init__(message)
        self.code = code


def _fallback(value: object) -> str:
    # msgpack payloads can hold bytes; anything JSON lacks is shown by its repr.
    return repr(value)


def as_json(data: Any) -> str:
    """``data`` as indented JSON, with sorted keys and ``repr`` for what JSON lacks.

    Usage::

        print(as_json({"keys": 3}))
    """
    options = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS
    return orjson.dumps(data, default=_fallback, option=options).decode()


def pretty(value: Any) -> str:
    """A cached payload for people: JSON when it is JSON-like, else its ``repr``.

    Usage::

        print(pretty({"id": 5, "raw": b"\\x00"}))
    """
    try:
        return orjson.dumps(value, default=_fallback, option=orjson.OPT_INDENT_2).decode()
    except TypeError:  # e.g. a dict with non-string keys from msgpack
        return repr(value)


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned, text left-aligned.

    Usage::

        table(["kind", "keys"], [["value", 1200], ["lease", 3]])
    """
    cells = [[_cell(v) for v in row] for row in rows]
    numeric = [
        bool(rows) and all(isinstance(row[i], int | float) for row in rows)
        for i in range(len(header))
    ]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(header)]

    def line(values: Sequence[str]) -> str:
        padded = [
            v.rjust(w) if right else v.ljust(w)
            for v, w, right in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(padded).rstrip()

    return "\n".join([line(header), *(line(row) for row in cells)])


def fields(rows: Sequence[tuple[str, str]]) -> str:
    """Labelled lines with the values aligned, indented by two spaces.

    Usage::

        fields([("state", "ready"), ("capacity", "1,000")])
    """
    width = max((len(label) for label, _ in rows), default=0)
    return "\n".join(f"  {label.ljust(width)}  {value}" for label, value in rows)


def _cell(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else ("yes" if value else "no")
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4g}" if value < 1 else f"{value:,.1f}"
    return str(value)


def number(value: int) -> str:
    """A count with thousands separators.

    Usage::

        number(1234567)     # '1,234,567'
    """
    return f"{value:,}"


def size(n: float) -> str:
    """Bytes in binary units.

    Usage::

        size(1536)          # '1.5 KiB'
    """
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def duration(seconds: float) -> str:
    """A span of seconds for people.

    Usage::

        duration(0.35)      # '350 ms'
        duration(242)       # '4 min 2.0 s'
    """
    if math.isinf(seconds):
        return "forever"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        minutes, rest = divmod(seconds, 60)
        return f"{minutes:.0f} min {rest:.1f} s"
    hours, rest = divmod(seconds, 3600)
    if hours < 48:
        return f"{hours:.0f} h {rest // 60:.0f} min"
    return f"{hours // 24:.0f} d {hours % 24:.0f} h"


def moment(timestamp: float) -> str:
    """A wall-clock time in UTC, to the millisecond.

    Usage::

        moment(0.5)         # '1970-01-01 00:00:00.500 UTC'
    """
    when = datetime.fromtimestamp(timestamp, UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S.") + f"{when.microsecond // 1000:03d} UTC"


def shown(name: str) -> str:
    """A key name or pattern printable as it is: bytes that are not UTF-8 as ``\\xff``.

    Names from the command line or from SCAN keep such bytes as surrogates.

    Usage::

        shown(b"k\\xff".decode("utf-8", "surrogateescape"))    # 'k\\\\xff'
    """
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``, for messages.

    Usage::

        redact("redis://:secret@host:6379/0")    # 'redis://:***@host:6379/0'
    """
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # unparsable: parse_url has already said why
        return url
    if not password:
        return url
    netloc = parts.netloc.replace(f":{password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))
