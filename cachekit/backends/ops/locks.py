"""A lock's acquisition: ``SET NX PX`` with a random token and a fencing token, one script.

A lock key holds its holder's random token and always has a TTL; it is released by
:class:`~cachekit.backends.ops.leases.Release` and extended by a token-checked renewal,
like a lease. Acquiring also draws the next fencing token, strictly increasing per lock
name. The fencing counter has a TTL too (:func:`fence_ttl` past its last token, which is
never below the server clock), so lock names used once do not pile up keys. A refused
acquisition records a waiter (:mod:`cachekit.backends.ops.waiting`): the holder's release
announces the lock to it.

Usage::

    got = backend.run(Acquire("p:lock:{report}", token, ttl=10, fence="p:lock:{report}:fence"))
    if got.acquired:
        ...
        backend.run(Release("p:lock:{report}", token, channel="p:notify"))
    # announced on "p:notify:{report}" only if an Acquire was refused meanwhile
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from cachekit.backends.ops import Op, Script, Store, ms
from cachekit.backends.ops.waiting import WAITING_SLACK, record_waiter, waiting_key

__all__ = [
    "FENCE_TTL_FLOOR",
    "FENCE_TTL_LEASES",
    "Acquire",
    "Acquired",
    "fence_ttl",
]


class Acquired(NamedTuple):
    """The answer to :class:`Acquire`.

    ``fence`` is the fencing token when acquired (strictly increasing per fence key);
    ``remaining`` is how long the current holder's lease still runs when not.
    """

    acquired: bool
    fence: int
    remaining: float


# The fencing counter outlives its last token by this much (at least), so an idle lock
# name costs no key for longer: a name used once per order or per user would otherwise
# leave a counter behind forever. Ten leases, so the counter outlives every lease drawn
# from it (a resent Acquire finds its own fence), and at least ten minutes.
FENCE_TTL_LEASES = 10
FENCE_TTL_FLOOR = 600.0


def fence_ttl(lease_ttl: float) -> float:
    """How long a fencing counter lives after the token it last gave, in seconds.

    Usage::

        fence_ttl(10)    # 600.0: ten minutes
        fence_ttl(120)   # 1200.0: ten leases
    """
    return max(FENCE_TTL_FLOOR, FENCE_TTL_LEASES * lease_ttl)


_ACQUIRE = Script(
    """
-- KEYS[1] the lock key, KEYS[2] the record that someone waits for it,
-- KEYS[3] its fencing counter (may be absent: no fencing)
-- ARGV[1] our token, ARGV[2] the lease in ms, ARGV[3] the counter's TTL in ms,
-- ARGV[4] how long a waiter's record outlives the lease, in ms
-- Our own token already there means this is redis-py resending a script whose reply was
-- lost: the lock is ours, with the fence that run drew (drawing another would skip one).
local ours = redis.call('GET', KEYS[1]) == ARGV[1]
if ours or redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if #KEYS < 3 then return 1 end
  if ours then
    local fence = tonumber(redis.call('GET', KEYS[3]))
    if fence then return fence end
  end
  -- A token is above the last one and above the server clock in microseconds (a counter
  -- behind the clock is lifted to it first), so a lost counter - expired, evicted, a
  -- restart without persistence, a failover to a replica that missed the last INCR -
  -- starts again above every token it gave.
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local raw = redis.call('GET', KEYS[3])
  local last = raw and string.match(raw, '^%d+$') and tonumber(raw)
  local fence
  if last then  -- INCRBY: exact integer arithmetic, however far the counter has run
    fence = redis.call('INCRBY', KEYS[3], string.format('%.0f', math.max(now - last, 0) + 1))
  else  -- absent, or not a counter (garbled): seeded from the clock
    fence = now + 1
    redis.call('SET', KEYS[3], string.format('%.0f', fence))
  end
  -- The counter expires ARGV[3] ms after the clock passes its value (not after now): a
  -- counter that ran ahead of the clock lives until the clock has caught up with it, so
  -- the clock re-seeds it above every token it gave, whatever the clock did meanwhile.
  local at = math.floor(fence / 1000) + tonumber(ARGV[3])
  redis.call('PEXPIREAT', KEYS[3], string.format('%.0f', at))
  return fence
end
-- Held by someone else: record that a waiter exists (its release announces the lock only
-- then), and say for how long it is held (never 0, which would read as "acquired").
local left = math.max(redis.call('PTTL', KEYS[1]), 1)
redis.call('SET', KEYS[2], '1', 'PX', left + tonumber(ARGV[4]))
return -left
"""
)


@dataclass(slots=True)
class Acquire(Op[Acquired]):
    """``SET key token NX PX ttl``, plus the next fencing token when acquired and fenced.

    The token is ``max(counter, server clock in microseconds) + 1``; the counter expires
    :func:`fence_ttl` after the clock passes its value, refreshed by every acquisition.
    Refused, it records a waiter (:func:`waiting_key`): the holder's release announces.
    """

    key: str
    token: bytes
    ttl: float
    fence: str | None = None

    kind = "script"
    script = _ACQUIRE

    def script_call(self) -> tuple[Sequence[str], Sequence[Any]]:
        keys = (self.key, waiting_key(self.key))
        args = (self.token, ms(self.ttl), ms(fence_ttl(self.ttl)), ms(WAITING_SLACK))
        return (keys if self.fence is None else (*keys, self.fence)), args

    def parse(self, reply: Any) -> Acquired:
        value = int(reply)
        if value > 0:
            return Acquired(True, value, 0.0)
        return Acquired(False, 0, -value / 1000)

    def apply(self, store: Store) -> Acquired:
        holder = store.read(self.key)
        ours = holder == self.token  # as in the script: a resend finds our own acquisition
        if holder is not None and not ours:
            remaining = store.remaining(self.key) or 0.001
            record_waiter(store, self.key, remaining)
            return Acquired(False, 0, remaining)
        if not ours:
            store.write(self.key, self.token, self.ttl)
        if self.fence is None:
            return Acquired(True, 1, 0.0)
        last = _counter(store.read(self.fence))
        if ours and last:
            return Acquired(True, last, 0.0)
        now = store.now()
        fence = max(last, int(now * 1_000_000)) + 1
        expires = (fence // 1000 + ms(fence_ttl(self.ttl))) / 1000
        store.write(self.fence, b"%d" % fence, expires - now)
        return Acquired(True, fence, 0.0)


def _counter(raw: bytes | None) -> int:
    """A fencing counter's value; 0 (the clock wins) when absent or not digits only."""
    return int(raw) if raw is not None and raw.isdigit() else 0
