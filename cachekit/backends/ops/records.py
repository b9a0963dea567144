"""Operations on hash records: server-side sessions and carts, each one atomic Lua script.

A *session record* is a Redis hash: ``@sid`` (the id it was issued for), ``@deadline``
(the absolute end of its life, server time in ms), the stamps ``@created``, ``@seen``
(last load) and ``@cookie`` (last send of its cookie, for rolling expiry), and one
``d:<name>`` field per session key holding that value's JSON (sealed when encrypting).
Its TTL is the idle timeout, capped by the deadline, and all of it is computed from the
server's clock, so no client clock can stretch a session.

A *cart record* is a Redis hash of ``sku -> quantity`` plus ``@version``, the version of
the SQL cart it mirrors, and ``@owner``, the owner it belongs to. It is only ever replaced
whole by a newer version (:class:`StoreCart`), so a slow writer can never put an older cart
back. A read names the owner it expects (:class:`ReadCart`): a record naming another owner,
or none (bytes copied from another cart's key), is not served but deleted as a miss, as a
session record names its id and a cached value the CRC of its key.

The memory backend keeps a hash as the JSON of its fields (values as latin-1 text, which
round-trips any bytes).

Usage::

    fields = backend.run(TouchSession("p:session:{id}", idle=1800))
    backend.run(StoreCart("p:cart:{alice}", "p:cart:{alice}:fill", "alice", 7, {"A": 2}, 86400))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import orjson

from cachekit.backends.ops import Op, Script, Store, ms
from cachekit.exceptions import SerializationError

__all__ = [
    "COOKIE",
    "CREATED",
    "DEADLINE",
    "OWNER",
    "SEEN",
    "SID",
    "VERSION",
    "CartRead",
    "CartRecord",
    "ReadCart",
    "SaveSession",
    "StoreCart",
    "TouchSession",
    "Touched",
]

SID = "@sid"
DEADLINE = "@deadline"
CREATED = "@created"  # session records: server ms of creation
SEEN = "@seen"  # ... of the last load
COOKIE = "@cookie"  # ... of the last time the cookie was sent (rolling expiry)
VERSION = "@version"
OWNER = "@owner"


def _hash_read(store: Store, key: str) -> dict[str, bytes] | None:
    raw = store.read(key)
    if raw is None:
        return None
    return {name: value.encode("latin-1") for name, value in orjson.loads(raw).items()}


def _hash_write(store: Store, key: str, fields: Mapping[str, bytes], ttl: float) -> None:
    packed = {name: value.decode("latin-1") for name, value in fields.items()}
    store.write(key, orjson.dumps(packed), ttl)


def _pairs(reply: Sequence[bytes]) -> dict[str, bytes]:
    try:
        return {reply[i].decode(): reply[i + 1] for i in range(0, len(reply), 2)}
    except UnicodeDecodeError:
        raise SerializationError("a record whose field names are not UTF-8") from None


def _now_ms(store: Store) -> int:
    return int(store.now() * 1000)


_TOUCH = Script(
    """
-- KEYS[1] the session record; ARGV[1] the idle timeout in ms; ARGV[2] the rolling
-- interval in ms (0: the cookie is never re-sent).
-- Restarts the idle TTL (capped by the deadline), records this access in @seen, and
-- when the cookie was last sent ARGV[2] ms ago or more, records a re-send in @cookie.
-- {now, ttl, rolled (0/1), previous @seen (-1: none), HGETALL}; nil when absent or over.
local deadline = tonumber(redis.call('HGET', KEYS[1], '@deadline'))
if not deadline then return false end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local left = deadline - now
if left <= 0 then
  redis.call('DEL', KEYS[1])
  return false
end
local ttl = math.min(tonumber(ARGV[1]), left)
redis.call('PEXPIRE', KEYS[1], ttl)
local seen = tonumber(redis.call('HGET', KEYS[1], '@seen')) or -1
redis.call('HSET', KEYS[1], '@seen', now)
local rolled = 0
local every = tonumber(ARGV[2])
if every > 0 then
  local sent = tonumber(redis.call('HGET', KEYS[1], '@cookie'))
  if not sent or now - sent >= every then
    redis.call('HSET', KEYS[1], '@cookie', now)
    rolled = 1
  end
end
return {now, ttl, rolled, seen, redis.call('HGETALL', KEYS[1])}
"""
)


class Touched(NamedTuple):
    """What :class:`TouchSession` found: the record and the server's view of its life.

    ``now_ms`` is the server time of this access, ``ttl_ms`` the idle time the record now
    has left, ``rolled`` whether the cookie is due to be re-sent (and was marked sent),
    ``seen_ms`` the previous access (``None``: never loaded before).
    """

    now_ms: int
    ttl_ms: int
    rolled: bool
    seen_ms: int | None
    fields: dict[str, bytes]


@dataclass(slots=True)
class TouchSession(Op[Touched | None]):
    """Read a session record and restart its idle timeout; ``None`` when gone or over.

    ``roll`` is the rolling interval in seconds (0: no rolling): when the record's cookie
    was last sent that long ago or more, the answer says so and the record notes a new
    send in ``@cookie``. Every touch also notes the access in ``@seen``.

    Raises :class:`~cachekit.exceptions.SerializationError` for field names not in UTF-8.
    """

    key: str
    idle: float
    roll: float = 0

    kind = "script"
    script = _TOUCH

    def script_call(self) -> tuple[Sequence[str], Sequence[Any]]:
        return [self.key], [ms(self.idle), ms(self.roll) if self.roll > 0 else 0]

    def parse(self, reply: Any) -> Touched | None:
        if reply is None:
            return None
        now, ttl, rolled, seen, fields = reply
        return Touched(
            int(now), int(ttl), bool(rolled), None if seen < 0 else int(seen), _pairs(fields)
        )

    def apply(self, store: Store) -> Touched | None:
        fields = _hash_read(store, self.key)
        if fields is None or DEADLINE not in fields:
            return None
        now = _now_ms(store)
        left = int(fields[DEADLINE]) - now
        if left <= 0:
            store.remove(self.key)
            return None
        ttl = min(ms(self.idle), left)
        seen = fields.get(SEEN)
        fields[SEEN] = b"%d" % now
        rolled = False
        if self.roll > 0:
            sent = fields.get(COOKIE)
            if sent is None or not sent.isdigit() or now - int(sent) >= ms(self.roll):
                fields[COOKIE] = b"%d" % now
                rolled = True
        _hash_write(store, self.key, fields, ttl / 1000)
        previous = int(seen) if seen is not None and seen.isdigit() else None
        return Touched(now, ttl, rolled, previous, fields)


_SAVE = Script(
    """
-- KEYS[1] the session record
-- ARGV[1] 'new' (create; refused if the key exists) or 'update' (refused if it does not)
-- ARGV[2] idle timeout ms, ARGV[3] absolute lifetime ms (for 'new'), ARGV[4] the sid,
-- ARGV[5] n: then n field/value pairs to set, then the fields to delete.
-- A new record also notes its creation (@created) and its cookie's send (@cookie).
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local deadline
if ARGV[1] == 'new' then
  if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
  deadline = now + tonumber(ARGV[3])
  redis.call('HSET', KEYS[1], '@sid', ARGV[4], '@deadline', deadline, '@created', now,
             '@cookie', now)
else
  -- Gone (logout, regeneration, expiry): an update never brings a session back.
  deadline = tonumber(redis.call('HGET', KEYS[1], '@deadline'))
  if not deadline then return 0 end
end
local left = deadline - now
if left <= 0 then
  redis.call('DEL', KEYS[1])
  return 0
end
local n = tonumber(ARGV[5])
for i = 6, 5 + 2 * n, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
for i = 6 + 2 * n, #ARGV do redis.call('HDEL', KEYS[1], ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], math.min(tonumber(ARGV[2]), left))
return 1
"""
)

Saved = Literal["saved", "gone", "taken"]


@dataclass(slots=True)
class SaveSession(Op[Saved]):
    """Create a session record, or change some fields of a live one.

    ``"saved"``; ``"gone"`` when an update found no live record (it is not recreated);
    ``"taken"`` when a create found the key in use (it is left alone).
    """

    key: str
    sid: str
    create: bool
    idle: float
    lifetime: float
    changed: Mapping[str, bytes]
    removed: Sequence[str]

    kind = "script"
    script = _SAVE

    def script_call(self) -> tuple[Sequence[str], Sequence[Any]]:
        args: list[Any] = [
            "new" if self.create else "update",
            ms(self.idle),
            ms(self.lifetime),
            self.sid,
            len(self.changed),
        ]
        for name, value in self.changed.items():
            args += (name, value)
        args += self.removed
        return [self.key], args

    def parse(self, reply: Any) -> Saved:
        return _SAVED[int(reply)]

    def apply(self, store: Store) -> Saved:
        now = _now_ms(store)
        fields = _hash_read(store, self.key)
        if self.create:
            if fields is not None:
                return "taken"
            stamp = b"%d" % now
            fields = {
                SID: self.sid.encode(),
                DEADLINE: b"%d" % (now + ms(self.lifetime)),
                CREATED: stamp,
                COOKIE: stamp,
            }
        elif fields is None or DEADLINE not in fields:
            return "gone"
        left = int(fields[DEADLINE]) - now
        if left <= 0:
            store.remove(self.key)
            return "gone"
        fields.update(self.changed)
        for name in self.removed:
            fields.pop(name, None)
        _hash_write(store, self.key, fields, min(ms(self.idle), left) / 1000)
        return "saved"


_SAVED: dict[int, Saved] = {1: "saved", 0: "gone", -1: "taken"}


class CartRecord(NamedTuple):
    """A cart as Redis holds it: the SQL version it mirrors and ``sku -> quantity``."""

    version: int
    items: dict[str, int]


class CartRead(NamedTuple):
    """The answer to :class:`ReadCart`.

    ``record`` is ``None`` on a miss (the fill lease then taken); ``foreign`` says the key
    held a record naming another owner or none, deleted as not this cart.
    """

    record: CartRecord | None
    foreign: bool = False


_READ_CART = Script(
    """
-- KEYS[1] the cart record, KEYS[2] its fill lease
-- ARGV[1] the owner it must name, ARGV[2] a token, ARGV[3] the lease ms
-- The record if it names ARGV[1]. Else a miss, which takes the fill lease that any store
-- of a change voids; a record naming another owner or none (bytes copied from another
-- cart's key) is deleted first and answered 0, so the caller counts it.
local fields = redis.call('HGETALL', KEYS[1])
local foreign = #fields > 0 and redis.call('HGET', KEYS[1], '@owner') ~= ARGV[1]
if #fields > 0 and not foreign then return fields end
if foreign then redis.call('DEL', KEYS[1]) end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
if foreign then return 0 end
return fields
"""
)


@dataclass(slots=True)
class ReadCart(Op[CartRead]):
    """``owner``'s cart record; a miss (having leased the refill to ``token``) otherwise.

    A record that does not name ``owner`` is deleted and answered as a foreign miss.
    Raises :class:`~cachekit.exceptions.SerializationError` for a record that is not a cart.
    """

    key: str
    lease: str
    owner: str
    token: bytes
    lease_ttl: float

    kind = "script"
    script = _READ_CART

    def script_call(self) -> tuple[Sequence[str], Sequence[Any]]:
        return [self.key, self.lease], [self.owner, self.token, ms(self.lease_ttl)]

    def parse(self, reply: Any) -> CartRead:
        if isinstance(reply, int):
            return CartRead(None, foreign=True)
        return CartRead(_cart(_pairs(reply), self.owner) if reply else None)

    def apply(self, store: Store) -> CartRead:
        fields = _hash_read(store, self.key)
        foreign = fields is not None and fields.get(OWNER) != self.owner.encode()
        if foreign:
            store.remove(self.key)
        if fields is None or foreign:
            store.write(self.lease, self.token, self.lease_ttl)
            return CartRead(None, foreign)
        return CartRead(_cart(fields, self.owner))


def _cart(fields: dict[str, bytes], owner: str) -> CartRecord:
    # The script checked the owner already; checked again here, where it cannot be skipped.
    if fields.pop(OWNER, None) != owner.encode():
        raise SerializationError("a cart record that names another owner")
    try:
        version = int(fields.pop(VERSION))
        return CartRecord(version, {sku: int(qty) for sku, qty in fields.items()})
    except (KeyError, ValueError):
        raise SerializationError("a cart record that is not one") from None


_STORE_CART = Script(
    """
-- KEYS[1] the cart record, KEYS[2] its fill lease
-- ARGV[1] the owner, ARGV[2] the version, ARGV[3] TTL ms, ARGV[4] the refill's lease token
-- ('' for a change), then sku/quantity pairs.
-- Replaces the record only with a newer version: an older cart never comes back. A
-- refill also needs its lease: a change stored since (which voids it) may have been
-- evicted again, and the version alone could not tell.
if ARGV[4] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[4] then return 0 end
-- A record naming another owner is no version of this cart (bytes copied from another
-- cart's key): replaced, whatever version it claims. One naming none may be this cart as
-- stored before records named their owner (a rolling upgrade): its version still counts.
local owner = redis.call('HGET', KEYS[1], '@owner')
if not owner or owner == ARGV[1] then
  local current = tonumber(redis.call('HGET', KEYS[1], '@version'))
  if current and current >= tonumber(ARGV[2]) then return 0 end
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], '@version', ARGV[2], '@owner', ARGV[1])
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
)


@dataclass(slots=True)
class StoreCart(Op[bool]):
    """Replace ``owner``'s cart record with ``items`` at ``version``, unless it holds a newer one.

    A refill after a miss passes the ``token`` its :class:`ReadCart` leased and is refused
    once the lease is gone; a change passes none and voids the lease. A record naming
    another owner is replaced whatever its version.
    """

    key: str
    lease: str
    owner: str
    version: int
    items: Mapping[str, int]
    ttl: float
    token: bytes = b""

    kind = "script"
    script = _STORE_CART

    def script_call(self) -> tuple[Sequence[str], Sequence[Any]]:
        args: list[Any] = [self.owner, self.version, ms(self.ttl), self.token]
        for sku, qty in self.items.items():
            args += (sku, qty)
        return [self.key, self.lease], args

    def parse(self, reply: Any) -> bool:
        return bool(reply)

    def apply(self, store: Store) -> bool:
        if self.token and store.read(self.lease) != self.token:
            return False
        owner = self.owner.encode()
        fields = _hash_read(store, self.key)
        if fields is not None and fields.get(OWNER, owner) == owner:
            current = fields.get(VERSION, b"")
            if current.isdigit() and int(current) >= self.version:
                return False
        store.remove(self.lease)
        record = {VERSION: b"%d" % self.version, OWNER: owner}
        record.update({sku: b"%d" % qty for sku, qty in self.items.items()})
        _hash_write(store, self.key, record, self.ttl)
        return True
