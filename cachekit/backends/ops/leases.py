"""Operations for leases, locks and their notifications, each one atomic Lua script.

A lease (or lock) key holds a random token and always has a TTL. Whoever holds the token
may fill the value it guards (:class:`Fill`, refused once the lease is gone: no stale
set), release it (:class:`Release`) or extend it.

A request refused because someone else holds the lease or lock (:class:`TakeLease`,
:class:`Acquire`) records a waiter, and a fill, release or invalidation announces the key
only to recorded waiters, on the key's own channel (:mod:`cachekit.backends.ops.waiting`
states the protocol and why no wake-up is lost). All keys of one script share a hash
tag, hence one Cluster slot; on Cluster the announcement goes by ``SPUBLISH``: the
scripts take the command and channel as arguments.
A lease taken by a read path is first *on probation* (:data:`LEASE_PROBATION`): its
request carries that short expiry, and the holder's watchdog extends it to the whole lease
(a token-checked renewal, :mod:`cachekit.drivers.watchdog`) once the holder has the reply and is
still at work. A request whose caller gave up waiting (a paused or stopped server answers
it seconds later, perhaps after the caller's release of it already ran) then takes a lease
nobody holds, and it lapses within the probation, not after a whole lease.
A lock is a lease with a fencing token: its acquisition is
:class:`~cachekit.backends.ops.locks.Acquire`; it is released by :class:`Release`.

Usage::

    got = backend.run(TakeLease("p:{k}:lease", token, ttl=10, value_key="p:{k}"))
    if got.acquired:
        ...
        backend.run(Fill("p:{k}", data, 60, "p:{k}:lease", token, channel="p:notify"))
    # announced on "p:notify:{k}" only if a TakeLease was refused meanwhile
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from cachekit.backends.ops import Op, Script, Store, ms
from cachekit.backends.ops.waiting import (
    WAITING_SLACK,
    announce_to_waiters,
    key_announcement,
    record_waiter,
    waiting_key,
)
from cachekit.backends.shards import on_shards

__all__ = [
    "LEASE_PROBATION",
    "Fill",
    "Invalidate",
    "Leased",
    "Release",
    "TakeLease",
]


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
-- KEYS[1] the lease key, KEYS[2] the value key it guards, KEYS[3] the record that
-- someone waits for the value key
-- ARGV[1] our token, ARGV[2] the lease in ms, ARGV[3] how long a waiter's record outlives
-- the lease, in ms
-- Our own token already there means redis-py resent this script after its reply was
-- lost: the lease is ours (waiting for it to lapse would stall us for a whole lease).
if redis.call('GET', KEYS[1]) == ARGV[1]
    or redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, redis.call('GET', KEYS[2])}
end
-- Held by someone else: we wait, so its fill or release must announce the value key.
local left = math.max(redis.call('PTTL', KEYS[1]), 1)
redis.call('SET', KEYS[3], '1', 'PX', left + tonumber(ARGV[3]))
return {0, left}
"""
)


@dataclass(slots=True)
class TakeLease(Op[Leased]):
    """Try the lease guarding ``value_key``; on success also read ``value_key``.

    With ``probation`` the lease is taken for only that long (at most ``ttl``): its
    holder extends it to ``ttl`` (a watchdog's renewal) if it needs longer, so a request
    the server runs after its caller gave up leaves a lease that lapses that soon.
    Refused, it records a waiter for ``value_key`` (:func:`waiting_key`).
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
        keys = (self.key, self.value_key, waiting_key(self.value_key))
        return keys, (self.token, ms(self.lease), ms(WAITING_SLACK))

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
            remaining = store.remaining(self.key) or 0.001
            record_waiter(store, self.value_key, remaining)
            return Leased(False, None, remaining)
        # No probation here: an in-process store runs a request when it is made, never
        # after its caller gave up, and a fake clock may pass a whole probation inside a
        # load before a watchdog (on real time) could confirm it.
        store.write(self.key, self.token, self.ttl)
        return Leased(True, store.read(self.value_key), 0.0)


_FILL = Script(
    """
-- KEYS[1] the value key, KEYS[2] its lease key, KEYS[3] the record that someone waits
-- ARGV[1] the lease token, ARGV[2] the value, ARGV[3] its TTL in ms,
-- ARGV[4] '1' to write only if the value key is absent (null markers never overwrite data),
-- ARGV[5] and ARGV[6] announce it to the waiters: PUBLISH (SPUBLISH on Cluster), the channel
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if ARGV[4] == '1' then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3], 'NX')
else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
redis.call('DEL', KEYS[2])
if redis.call('DEL', KEYS[3]) == 1 then redis.call(ARGV[5], ARGV[6], KEYS[1]) end
return 1
"""
)


@dataclass(slots=True)
class Fill(Op[bool]):
    """Write ``value`` only while ``lease`` still holds ``token``; release and notify.

    With ``nx`` the value is written only if ``key`` is absent; the lease is released and
    the key announced either way (the fill was not refused: there was nothing to do).
    It is announced only if a waiter was recorded (:func:`waiting_key`).
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
        announce = key_announcement(self.channel, self.key, self.sharded)
        args = (self.token, self.value, ms(self.ttl), "1" if self.nx else "0", *announce)
        return (self.key, self.lease, waiting_key(self.key)), args

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
        announce_to_waiters(store, self.channel, self.key)
        return True


_RELEASE = Script(
    """
-- KEYS[1] the lock or lease key, KEYS[2] the record that someone waits for the message
-- ARGV[1] our token
-- ARGV[2] PUBLISH (SPUBLISH on Cluster), ARGV[3] the channel, ARGV[4] the message
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if redis.call('DEL', KEYS[2]) == 1 then redis.call(ARGV[2], ARGV[3], ARGV[4]) end
return 1
"""
)


@dataclass(slots=True)
class Release(Op[bool]):
    """Delete ``key`` if it holds ``token`` and announce ``message`` (default: the key) to
    its waiters, if any were recorded (:func:`waiting_key` of ``message``)."""

    key: str
    token: bytes
    channel: str
    message: str | None = None  # a key of the same hash tag
    sharded: bool = False

    kind = "script"
    script = _RELEASE

    def script_call(self) -> tuple[Sequence[str], Sequence[Any]]:
        message = self.message or self.key
        return (self.key, waiting_key(message)), (
            self.token,
            *key_announcement(self.channel, message, self.sharded),
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
        announce_to_waiters(store, self.channel, self.message or self.key)
        return True


_INVALIDATE = Script(
    """
-- KEYS: the value key, then the keys that go with it (its lease), last the record that
-- someone waits for the value key
-- ARGV[1] PUBLISH (SPUBLISH on Cluster), ARGV[2] the channel; the value key is announced
-- to its waiters so they re-check it (a voided lease will never be filled)
local record = table.remove(KEYS)
local removed = redis.call('UNLINK', unpack(KEYS))
if redis.call('DEL', record) == 1 then redis.call(ARGV[1], ARGV[2], KEYS[1]) end
return removed
"""
)


@dataclass(slots=True)
class Invalidate(Op[int]):
    """Delete a value and its lease (voiding any fill in flight) and notify its waiters."""

    keys: Sequence[str]
    channel: str
    sharded: bool = False

    kind = "script"
    script = _INVALIDATE

    def script_call(self) -> tuple[Sequence[str], Sequence[Any]]:
        keys = (*self.keys, waiting_key(self.keys[0]))
        return keys, key_announcement(self.channel, self.keys[0], self.sharded)

    def for_cluster(self) -> Op[int]:
        return on_shards(self)

    def parse(self, reply: Any) -> int:
        return int(reply)

    def apply(self, store: Store) -> int:
        removed = sum(store.remove(key) for key in self.keys)
        announce_to_waiters(store, self.channel, self.keys[0])
        return removed
