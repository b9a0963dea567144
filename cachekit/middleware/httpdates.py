"""HTTP dates and ``Age``, parsed strictly: what a stored response's age is built from.

:func:`parse_http_date` accepts the three forms RFC 9110 section 5.6.7 lists: the
IMF-fixdate every sender must use (``Sun, 06 Nov 1994 08:49:37 GMT``) and the two
obsolete forms a recipient must still accept, RFC 850 (``Sunday, 06-Nov-94 08:49:37
GMT``, its two-digit year read as at most 50 years ahead) and asctime (``Sun Nov  6
08:49:37 1994``). Names are matched without regard to case, as the RFC asks; anything
else (other time zones, missing commas, extra spaces, one-digit hours, dashes or periods
where they do not belong, two values) is invalid, and an invalid ``Expires`` means
"already expired" (RFC 9111 section 5.3).

:func:`parse_age` reads ``Age`` as the public test suite does: the first value of the
first line, a non-negative integer, else ignored; large values saturate at 2^31.

Usage::

    parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT")   # 784111777.0
    parse_http_date("Sun, 06 Nov 1994 08:49:37 UTC")   # None
    parse_age("7200, 0")                               # 7200
    initial_age(age=10, date=now - 30, now=now)        # 30.0
"""

from __future__ import annotations

import calendar
import re
import time
from typing import Final

__all__ = ["AGE_MAX", "initial_age", "parse_age", "parse_http_date"]

AGE_MAX: Final = 2**31
"""Ages saturate here (RFC 9111 section 1.2.2)."""

_MONTHS: Final = {
    name: n
    for n, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}
_DAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_LONG_DAYS: Final = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_TIME: Final = r"(\d\d):(\d\d):(\d\d)"
_IMF: Final = re.compile(r"([A-Za-z]{3}), (\d\d) ([A-Za-z]{3}) (\d{4}) " + _TIME + r" GMT", re.I)
_RFC850: Final = re.compile(r"([A-Za-z]+), (\d\d)-([A-Za-z]{3})-(\d\d) " + _TIME + r" GMT", re.I)
_ASCTIME: Final = re.compile(r"([A-Za-z]{3}) ([A-Za-z]{3}) ([ \d]\d) " + _TIME + r" (\d{4})", re.I)


def _timestamp(
    year: int, month: str, day: int, hour: int, minute: int, second: int
) -> float | None:
    number = _MONTHS.get(month.lower())
    if number is None or not (1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        return None
    try:
        return float(calendar.timegm((year, number, day, hour, minute, min(second, 59), 0, 0, 0)))
    except (OverflowError, ValueError):
        return None


def parse_http_date(value: str | None, now: float | None = None) -> float | None:
    """The POSIX time of an HTTP date, or ``None`` when it is not one (see module doc).

    ``now`` places an RFC 850 two-digit year (default: the current time).
    """
    if value is None:
        return None
    if m := _IMF.fullmatch(value):
        if m[1].lower() not in _DAYS:
            return None
        return _timestamp(int(m[4]), m[3], int(m[2]), int(m[5]), int(m[6]), int(m[7]))
    if m := _RFC850.fullmatch(value):
        if m[1].lower() not in _LONG_DAYS:
            return None

        this_year = time.gmtime(time.time() if now is None else now).tm_year
        year = this_year - this_year % 100 + int(m[4])
        if year > this_year + 50:  # RFC 9110 5.6.7: more than 50 years ahead is the past
            year -= 100
        return _timestamp(year, m[3], int(m[2]), int(m[5]), int(m[6]), int(m[7]))
    if m := _ASCTIME.fullmatch(value):
        if m[1].lower() not in _DAYS:
            return None
        return _timestamp(int(m[7]), m[2], int(m[3]), int(m[4]), int(m[5]), int(m[6]))
    return None


def parse_age(value: str | None) -> int | None:
    """The ``Age`` of a response in seconds, or ``None`` when absent or not valid.

    Only the first value counts (of a list, or of several lines joined by ``", "``); a
    parameter after ``;`` is ignored; a value that is not digits only is invalid.
    """
    if value is None:
        return None
    first = value.split(",", 1)[0].split(";", 1)[0].strip()
    if not first.isascii() or not first.isdigit():
        return None
    return min(int(first), AGE_MAX)


def initial_age(*, age: int | None, date: float | None, now: float) -> float:
    """How old a response is on arrival (RFC 9111 section 4.2.3, no response delay).

    The larger of the origin's ``Age`` and the apparent age from ``Date``.
    """
    apparent = max(0.0, now - date) if date is not None else 0.0
    return float(min(max(apparent, float(age or 0)), AGE_MAX))
