"""The budgeted sync read: the socket's own timeout while it ends the read by the deadline
(within READ_SLACK), a timeout of the read's own once the budget left is shorter.

Unit tests on a recording connection class (no server, no timing bound).
"""

from __future__ import annotations

import time
from typing import Any, cast

import redis

from cachekit.backends.guard import DEADLINE
from cachekit.backends.redis import READ_SLACK, budgeted


class Sock:
    """Records the timeouts set on it."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.set: list[float] = []

    def gettimeout(self) -> float:
        return self.timeout

    def settimeout(self, value: float) -> None:
        self.set.append(value)
        self.timeout = value


class Recording:
    """A connection whose reads record the keyword arguments they were given."""

    socket_timeout = 0.25

    def __init__(self) -> None:
        self._sock = Sock(self.socket_timeout)
        self.reads: list[dict[str, Any]] = []

    def read_response(self, *args: Any, **kwargs: Any) -> bytes:
        self.reads.append(kwargs)
        return b"reply"


def connection() -> Any:
    cls = budgeted(cast(type[redis.Connection], Recording))
    return cast(Any, cls)()


def own_timeout(conn: Any) -> bool:
    """Whether the last read ran with the socket's own timeout, nothing set for it."""
    return "timeout" not in conn.reads[-1] and conn._sock.set == []


def test_a_read_with_more_budget_left_than_its_socket_timeout_keeps_it() -> None:
    conn = connection()
    # The socket's own timeout ends the read before the deadline: nothing to set.
    token = DEADLINE.set(time.monotonic() + Recording.socket_timeout + 1.0)
    try:
        assert conn.read_response() == b"reply"
    finally:
        DEADLINE.reset(token)
    assert own_timeout(conn)


def test_a_read_late_in_its_budget_gets_a_timeout_of_its_own() -> None:
    conn = connection()
    left = Recording.socket_timeout - 10 * READ_SLACK - 0.05
    token = DEADLINE.set(time.monotonic() + left)
    try:
        conn.read_response()
    finally:
        DEADLINE.reset(token)
    assert not own_timeout(conn)
    given = conn.reads[-1].get("timeout", conn._sock.set[0] if conn._sock.set else None)
    assert given is not None
    assert given <= left


def test_outside_a_guarded_call_nothing_is_bounded() -> None:
    conn = connection()
    conn.read_response()
    assert own_timeout(conn)
