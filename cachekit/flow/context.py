"""The inputs of every flow: the cache-wide :class:`Context` and a function's :class:`Policy`.

Both are plain frozen values; flows read them and never change them. The clock and the
random source are here so that tests inject them (deterministic expiry, jitter and early
refresh), and so that no flow touches :mod:`time` or :mod:`random` itself.

Usage::

    policy = Policy(name="shop.get_product", ttl=300, stale=60)
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from cachekit.clock import Clock
from cachekit.flow.keys import KeySpace
from cachekit.serializers import Serializer
from cachekit.stats import LogOnce, Stats

if TYPE_CHECKING:
    from cachekit.bloom.state import BloomState

__all__ = ["DEFAULT_MAX_VALUE_SIZE", "Context", "OnLockTimeout", "Policy", "new_token"]

DEFAULT_MAX_VALUE_SIZE = 1 << 20  # 1 MiB, like the response cache's max_body_size

OnLockTimeout = Literal["load", "raise"]


def new_token() -> bytes:
    """A lease or lock token: 128 random bits, unique across processes and restarts."""
    return secrets.token_hex(16).encode()


@dataclass(frozen=True, slots=True, kw_only=True)
class Context:
    """What every flow of one cache may consult."""

    keyspace: KeySpace
    serializer: Serializer
    default_ttl: float
    clock: Clock
    stats: Stats
    log: LogOnce
    random: random.Random = field(default_factory=random.Random)
    jitter: float = 0.1
    double_delete: float = 0.0
    max_value_size: int = DEFAULT_MAX_VALUE_SIZE
    blooms: Mapping[str, BloomState] = field(default_factory=dict)

    @property
    def channel(self) -> str:
        """Where fills, releases and invalidations are announced."""
        return self.keyspace.prefix + ":notify"


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """How one decorated function is cached.

    * ``ttl`` - fresh lifetime in seconds (``None``: the cache's default).
    * ``null_ttl`` - lifetime of a cached ``None`` (0: ``None`` is not cached).
    * ``serializer`` - ``None``: the cache's.
    * ``stale`` - seconds after ``ttl`` in which the old value is served while one
      background rebuild runs (0: no logical expiry).
    * ``lock`` - guard a cold miss with a lease, so one process loads and the rest wait.
    * ``lock_ttl`` - the lease: after this long a dead loader's lease lapses.
    * ``lock_wait`` - how long a caller waits for another's load before ``on_lock_timeout``.
    * ``on_lock_timeout`` - ``"load"`` (load without caching) or ``"raise"`` (``LockTimeout``).
    * ``early`` - XFetch's beta for probabilistic early refresh (0: off).
    * ``jitter`` - spread of every TTL written, as a fraction (``None``: the cache's).
    * ``bloom`` - the Bloom filter the call's identifier must pass before any lookup.
    * ``bloom_reject`` - raised (instead of returning ``None``) for a certain miss.
    * ``tags`` - tag templates; ``cache.invalidate_tags(tag)`` makes the entries a miss.
    * ``max_value_size`` - bytes above which a result is returned uncached (``None``: the
      cache's).
    """

    name: str
    ttl: float | None = None
    null_ttl: float = 0.0
    serializer: Serializer | None = None
    stale: float = 0.0
    lock: bool = True
    lock_ttl: float = 5.0
    lock_wait: float = 5.0
    on_lock_timeout: OnLockTimeout = "load"
    early: float = 0.0
    jitter: float | None = None
    bloom: str | None = None
    bloom_reject: type[Exception] | None = None
    tags: tuple[str, ...] = ()
    max_value_size: int | None = None
