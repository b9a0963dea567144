"""Operations for leases, locks and their notifications, each one atomic Lua script.

A lease (or lock) key holds a random token and always has a TTL. Whoever holds the token
may fill the value it guards (:class:`Fill`, refused once the lease is gone: no stale
set), release it (:class:`Release`) or extend it. Every fill, release and invalidation
publishes the key it changed on the cache's notification channel, so waiters wake on the
event instead of polling. All keys of one script share a hash tag, hence one Cluster slot,
and on Cluster the announcement goes by ``SPUBLISH`` to that slot's shard channel
(:mod:`cachekit.backends.shards`): the scripts take the command and channel as arguments.
A lease taken by a read path is first *on probation* (:data:`LEASE_PROBATION`): its
request carries that short expiry, and the holder's watchdog extends it to the whole lease
(a token-checked renewal, :mod:`cachekit.drivers.watchdog`) once the holder has the reply and is
still at work. A request whose caller gave up waiting (a paused or stopped server answers
it seconds later, perhaps after the caller's release of it already ran) then takes a lease
nobody holds, and it lapses within the probation, not after a whole lease.
A lock's fencing counter has a TTL too (:func:`fence_ttl` past its last token, which is
never below the server clock), so lock names used once do not pile up keys.

Usage::

    got = backend.run(Acquire("p:lock:{report}", token, ttl=10, fence="p:lock:{report}:fence"))
    if got.acquired:
        ...
        backend.run(Release("p:lock:{report}", token, channel="p:notify"))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from cachekit.backends.ops import Op, Script, Store, ms
from cachekit.backends.shards import announcement, on_shards

__all__ = [
    "FENCE_TTL_FLOOR",
    "FENCE_TTL_LEASES",
    "LEASE_PROBATION",
    "Acquire",
    "Acquired",
    "Fill",
    "Invalidate",
    "Leased",
    "Release",
    "TakeLease",
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
-- KEYS[1] the lock key, KEYS[2] its fencing counter (may be absent: no fencing)
-- ARGV[1] our token, ARGV[2] the lease in ms, ARGV[3] the counter's TTL in ms
-- Our own token already there means this is redis-py resending a script whose reply was
-- lost: the lock is ours, with the fence that run drew (drawing another would skip one).
local ours = redis.call('GET', KEYS[1]) == ARGV[1]
if ours or redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if #KEYS < 2 then return 1 end
  if ours then
    local fence = tonumber(redis.call('GET', KEYS[2]))
    if fence then return fence end
  end
  -- A token is above the last one and above the server clock in microseconds (a counter
  -- behind the clock is lifted to it first), so a lost counter - expired, evicted, a
  -- restart without persistence, a failover to a replica that missed the last INCR -
  -- starts again above every token it gave.
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local raw = redis.call('GET', KEYS[2])
  local last = raw and string.match(raw, '^%d+$') and tonumber(raw)
  local fence
  if last then  -- INCRBY: exact integer arithmetic, however far the counter has run
    fence = redis.call('INCRBY', KEYS[2], string.format('%.0f', math.max(now - last, 0) + 1))
  else  -- absent, or not a counter (garbled): seeded from the clock
    fence = now + 1
    redis.call('SET', KEYS[2], string.format('%.0f', fence))
  end
  -- The counter expires ARGV[3] ms after the clock passes its value (not after now): a
  -- counter that ran ahead of the clock lives until the clock has caught up with it, so
  -- the clock re-seeds it above every token it gave, whatever the clock did meanwhile.
  local at = math.floor(fence / 1000) + tonumber(ARGV[3])
  redis.call('PEXPIREAT', KEYS[2], string.format('%.0f', at))
  return fence
end
-- Held by someone else: say for how long (never 0, which would read as "acquired").
return -math.max(redis.call('PTTL', KEYS[1]), 1)
"""
)


@dataclass(slots=True)
class Acquire(Op[Acquired]):
    """``SET key token NX PX ttl``, plus the next fencing token when acquired and fenced.

    The token is ``max(counter, server clock in microseconds) + 1``; the counter expires
    :func:`fence_ttl` after the clock passes its value, refreshed by every acquisition.
    """

    key: str
    token: bytes
    ttl: float
    fence: str | None = None

    kind = "script"
    script = _ACQUIRE

    def script_call(self) -> tuple[Sequence[str], Sequence[Any]]:
        if self.fence is None:
            return (self.key,), (self.token, ms(self.ttl))
        return (self.key, self.fence), (self.token, ms(self.ttl), ms(fence_ttl(self.ttl)))

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


# How long a lease lives before its holder confirms it (the default operation deadline):
# what a lease request run after its caller gave up can cost the key's next callers.
LEASE_PROBATION: Final = 0.25


class Leased(NamedTuple):
    """The answer to :class:`TakeLease`: whether we got it, and what it guards right now.

    ``value`` is the guarded key's bytes read in the same script (when acquired), so the
    winner re-checks the cache without another round trip; ``remaining`` is how long the
    current holder's lease still runs (when not acquired).
    """

    acquired: bool
    value: bytes | None
    remaining: float


_TAKE_LEASE = Script(
    """
-- KEYS[1] the lease key, KEYS[2] the value key it guards
-- ARGV[1] our token, ARGV[2] the lease in ms
-- Our own token already there means redis-py resent this script after its reply was
-- lost: the lease is ours (waiting for it to lapse would stall us for a whole lease).
if redis.call('GET', KEYS[1]) == ARGV[1]
    or redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, redis.call('GET', KEYS[2])}
end
return {0, redis.call('PTTL', KEYS[1])}
"""
)


@dataclass(slots=True)
class TakeLease(Op[Leased]):
    """Try the lease guarding ``value_key``; on success also read ``value_key``.

    With ``probation`` the lease is taken for only that long (at most ``ttl``): its
    holder extends it to ``ttl`` (a watchdog's renewal) if it needs longer, so a request
    the server runs after its caller gave up leaves a lease that lapses that soon.
    """

    key: str
    token: bytes
    ttl: float
    value_key: str
    probation: float | None = None

    kind = "script"
    script = _TAKE_LEASE

    @property
    def lease(self) -> float:
        """The expiry the lease is taken with, in seconds."""
        return self.ttl if self.probation is None else min(self.ttl, self.probation)

    def script_call(self) -> tuple[Sequence[str], Sequence[Any]]:
        return (self.key, self.value_key), (self.token, ms(self.lease))

    def parse(self, reply: Any) -> Leased:
        flag, data = reply
        if flag:
            return Leased(True, data, 0.0)
        return Leased(False, None, max(int(data), 1) / 1000)

    def apply(self, store: Store) -> Leased:
        holder = store.read(self.key)
        if holder == self.token:  # as in the script: a resend finds our own lease
            return Leased(True, store.read(self.value_key), 0.0)
        if holder is not None:
            return Leased(False, None, store.remaining(self.key) or 0.001)
        # No probation here: an in-process store runs a request when it is made, never
        # after its caller gave up, and a fake clock may pass a whole probation inside a
        # load before a watchdog (on real time) could confirm it.
        store.write(self.key, self.token, self.ttl)
        return Leased(True, store.read(self.value_key), 0.0)


_FILL = Script(
    """
-- KEYS[1] the value key, KEYS[2] its lease key
-- ARGV[1] the lease token, ARGV[2] the value, ARGV[3] its TTL in ms,
-- ARGV[4] '1' to write only if the value key is absent (null markers never overwrite data),
-- ARGV[5] and ARGV[6] announce it: PUBLISH and the channel (SPUBLISH, a shard's, on Cluster)
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if ARGV[4] == '1' then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3], 'NX')
else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
redis.call('DEL', KEYS[2])
redis.call(ARGV[5], ARGV[6], KEYS[1])
return 1
"""
)


@dataclass(slots=True)
class Fill(Op[bool]):
    """Write ``value`` only while ``lease`` still holds ``token``; release and notify.

    With ``nx`` the value is written only if ``key`` is absent; the lease is released and
    the key announced either way (the fill was not refused: there was nothing to do).
    """

    key: str
    value: bytes
    ttl: float
    lease: str
    token: bytes
    channel: str
    nx: bool = False
    sharded: bool = False

    kind = "script"
    script = _FILL

    def script_call(self) -> tuple[Sequence[str], Sequence[Any]]:
        announce = announcement(self.channel, self.key, self.sharded)
        args = (self.token, self.value, ms(self.ttl), "1" if self.nx else "0", *announce)
        return (self.key, self.lease), args

    def for_cluster(self) -> Op[bool]:
        return on_shards(self)

    def parse(self, reply: Any) -> bool:
        return bool(reply)

    def apply(self, store: Store) -> bool:
        if store.read(self.lease) != self.token:
            return False
        if not self.nx or store.read(self.key) is None:
            store.write(self.key, self.value, self.ttl)
        store.remove(self.lease)
        store.publish(self.channel, self.key)
        return True


_RELEASE = Script(
    """
-- KEYS[1] the lock or lease key; ARGV[1] our token
-- ARGV[2] PUBLISH (SPUBLISH on Cluster), ARGV[3] the channel, ARGV[4] the message
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call(ARGV[2], ARGV[3], ARGV[4])
return 1
"""
)


@dataclass(slots=True)
class Release(Op[bool]):
    """Delete ``key`` if it holds ``token`` and announce ``message`` (default: the key)."""

    key: str
    token: bytes
    channel: str
    message: str | None = None  # a key of the same hash tag
    sharded: bool = False

    kind = "script"
    script = _RELEASE

    def script_call(self) -> tuple[Sequence[str], Sequence[Any]]:
        message = self.message or self.key
        return (self.key,), (
            self.token,
            *announcement(self.channel, message, self.sharded),
            message,
        )

    def for_cluster(self) -> Op[bool]:
        return on_shards(self)

    def parse(self, reply: Any) -> bool:
        return bool(reply)

    def apply(self, store: Store) -> bool:
        if store.read(self.key) != self.token:
            return False
        store.remove(self.key)
        store.publish(self.channel, self.message or self.key)
        return True


_INVALIDATE = Script(
    """
-- KEYS: the value key, then the keys that go with it (its lease)
-- ARGV[1] PUBLISH (SPUBLISH on Cluster), ARGV[2] the channel; the value key is announced
-- so waiters re-check it
local removed = redis.call('UNLINK', unpack(KEYS))
redis.call(ARGV[1], ARGV[2], KEYS[1])
return removed
"""
)


@dataclass(slots=True)
class Invalidate(Op[int]):
    """Delete a value and its lease (voiding any fill in flight) and notify waiters."""

    keys: Sequence[str]
    channel: str
    sharded: bool = False

    kind = "script"
    script = _INVALIDATE

    def script_call(self) -> tuple[Sequence[str], Sequence[Any]]:
        return self.keys, announcement(self.channel, self.keys[0], self.sharded)

    def for_cluster(self) -> Op[int]:
        return on_shards(self)

    def parse(self, reply: Any) -> int:
        return int(reply)

    def apply(self, store: Store) -> int:
        removed = sum(store.remove(key) for key in self.keys)
        store.publish(self.channel, self.keys[0])
        return removed
