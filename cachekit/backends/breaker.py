"""A circuit breaker per Redis endpoint: stop paying timeouts to a server that is down.

Closed, every call goes through and consecutive connection failures are counted; at
``failures`` in a row the breaker opens. Open, no call is made at all for ``cooldown``
seconds. Then it half-opens: exactly one caller is let through as a probe while the others
are still refused; the probe's success closes the breaker, its failure opens it for another
cool-down. Each transition is counted and logged once, never a traceback per request.

The breaker is pure bookkeeping on an injectable clock; the backend guard
(:mod:`cachekit.backends.guard`) asks it before each call and reports each outcome.

Every admission is a ticket (:data:`NORMAL` or :data:`PROBE`; :data:`REFUSED` is falsy),
and every report carries it back: a call let through while the breaker was closed may
report only after it has opened and half-opened (a call can outlive a cool-down), and
such a late report must not be taken for the probe's outcome.

Usage::

    breaker = Breaker(failures=5, cooldown=2.0)
    if ticket := breaker.allow():
        try:
            reply = call_redis()
        except BackendUnavailable:
            breaker.failure(ticket)
        else:
            breaker.success(ticket)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Final, Literal

from cachekit.clock import SYSTEM_CLOCK, Clock
from cachekit.exceptions import ConfigurationError

__all__ = [
    "DEFAULT_COOLDOWN",
    "DEFAULT_FAILURES",
    "NORMAL",
    "PROBE",
    "REFUSED",
    "Breaker",
    "State",
    "Ticket",
]

State = Literal["closed", "open", "half_open"]

Ticket = Literal[0, 1, 2]
REFUSED: Final[Ticket] = 0
NORMAL: Final[Ticket] = 1
PROBE: Final[Ticket] = 2

DEFAULT_FAILURES: Final = 5
DEFAULT_COOLDOWN: Final = 2.0

logger = logging.getLogger("cachekit")

# The counter each transition bumps (names in cachekit.stats.COUNTERS).
_COUNTER: Final[dict[State, str]] = {
    "open": "breaker_opened",
    "half_open": "breaker_half_opened",
    "closed": "breaker_closed",
}


class Breaker:
    """Closed / open / half-open state of one endpoint, safe across threads and tasks.

    **Parameters:**

    * **failures** - consecutive failures that open the breaker (default 5).
    * **cooldown** - seconds it stays open before one probe is let through (default 2).
    * **clock** - where ``monotonic()`` is read; a ``FakeClock`` in tests.
    * **on_transition** - called with the counter name of each transition (the cache's
      ``Stats.incr``); ``None`` to count nothing.
    * **name** - how log lines name the endpoint.

    Usage::

        breaker = Breaker(failures=5, cooldown=2.0, clock=FakeClock())
        breaker.state     # 'closed'
    """

    __slots__ = (
        "_answered",
        "_clock",
        "_cooldown",
        "_failures",
        "_lock",
        "_notify",
        "_opened_at",
        "_probing",
        "_state",
        "_streak",
        "closed",
        "name",
    )

    def __init__(
        self,
        *,
        failures: int = DEFAULT_FAILURES,
        cooldown: float = DEFAULT_COOLDOWN,
        clock: Clock = SYSTEM_CLOCK,
        on_transition: Callable[[str], None] | None = None,
        name: str = "redis",
    ) -> None:
        if failures < 1:
            raise ConfigurationError(f"breaker failures must be at least 1, got {failures!r}")
        if not cooldown > 0:
            raise ConfigurationError(f"breaker cooldown must be positive, got {cooldown!r}")
        self._failures = failures
        self._cooldown = float(cooldown)
        self._clock = clock
        self._notify = on_transition
        self.name = name
        self._lock = threading.Lock()
        self._state: State = "closed"
        #: ``state == "closed"`` as a plain attribute: what the guard reads on every call.
        self.closed = True
        self._streak = 0
        self._opened_at = 0.0
        self._probing = False
        self._answered = float("-inf")  # when the endpoint last answered anyone

    @property
    def state(self) -> State:
        """``'closed'``, ``'open'`` or ``'half_open'`` (an open breaker past its cool-down
        reads as ``'open'`` until a caller asks to go through)."""
        return self._state

    def allow(self) -> Ticket:
        """A ticket if a call may go to the endpoint now (:data:`REFUSED`, falsy, if not).

        A caller given a ticket must later hand it to :meth:`success` or :meth:`failure`
        (or :meth:`release` when the call never reached the endpoint).
        """
        if self.closed:  # the hot path: one attribute read, no lock
            return NORMAL
        return self._admit()

    def _admit(self) -> Ticket:
        with self._lock:
            if self._state == "closed":
                return NORMAL
            if self._state == "open":
                if self._clock.monotonic() - self._opened_at < self._cooldown:
                    return REFUSED
                self._move("half_open")
            if self._probing:
                return REFUSED  # one probe at a time; the others keep failing fast
            self._probing = True
            return PROBE

    def answered_within(self, seconds: float) -> bool:
        """Whether the endpoint answered anything (:meth:`success`, :meth:`heard`) in the
        last ``seconds``.

        A call that timed out while others were being answered was slow because of the
        queue it waited in (too few connections, a loaded client), not because the endpoint
        failed: the guard charges a timeout only when nobody was answered for half a
        deadline before it.

        Usage::

            if not breaker.answered_within(deadline):
                breaker.failure(ticket)
        """
        return self._clock.monotonic() - self._answered <= seconds

    def heard(self) -> None:
        """The endpoint answered something that is no call's outcome (a reconnect's
        handshake): it is alive, for :meth:`answered_within`; nothing else changes.

        Usage::

            connection.register_connect_callback(lambda _connection: breaker.heard())
        """
        self._answered = self._clock.monotonic()

    def success(self, ticket: Ticket = PROBE) -> None:
        """The endpoint answered: reset the failure streak; a successful probe closes."""
        self._answered = self._clock.monotonic()  # a plain store: no lock on the hot path
        if self.closed and not self._streak:
            return
        with self._lock:
            if self._state == "half_open":
                if ticket == PROBE:
                    self._probing = False
                    self._streak = 0
                    self._move("closed")
            elif self._state == "closed":
                self._streak = 0

    def failure(self, ticket: Ticket = PROBE) -> None:
        """The endpoint failed (unreachable or timed out): maybe open the breaker."""
        with self._lock:
            if self._state == "half_open":
                if ticket == PROBE:
                    self._probing = False
                    self._open()
                return  # a late report of a call let through before the opening
            if self._state == "open":
                return  # a call that started before the breaker opened
            self._streak += 1
            if self._streak >= self._failures:
                self._open()

    def release(self, ticket: Ticket = PROBE) -> None:
        """A call that was let through never reached the endpoint (no pool slot in time)."""
        if ticket != PROBE:
            return
        with self._lock:
            if self._state == "half_open":
                self._probing = False

    def _open(self) -> None:
        self._streak = 0
        self._opened_at = self._clock.monotonic()
        self._move("open")

    def _move(self, state: State) -> None:
        self._state = state
        self.closed = state == "closed"
        if state == "open":
            logger.warning(
                "cachekit: circuit breaker for %s opened: Redis is not called for %.1fs",
                self.name,
                self._cooldown,
            )
        elif state == "closed":
            logger.warning("cachekit: circuit breaker for %s closed: Redis is back", self.name)
        else:
            logger.info("cachekit: circuit breaker for %s half-open: one probe", self.name)
        if self._notify is not None:
            self._notify(_COUNTER[state])

    def __repr__(self) -> str:
        return f"<Breaker {self.name} {self._state}>"
