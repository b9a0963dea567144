"""Export a cache's counters to Prometheus, read when the registry is scraped.

:class:`CacheCollector` is a prometheus-client custom collector: each counter of
:meth:`cachekit.Cache.stats` becomes a counter family ``cachekit_<name>_total``
(``cachekit_hits_total``, ``cachekit_bloom_rejects_total``, ...). The counters are read at
scrape time from the cache's in-process snapshot, so a scrape does no I/O and never waits
on Redis; a counter a later cachekit version adds is exported without any change here.

Usage::

    from prometheus_client import CollectorRegistry, generate_latest
    from cachekit.contrib.prometheus import CacheCollector

    registry = CollectorRegistry()
    registry.register(CacheCollector(cache))
    generate_latest(registry)     # b'# HELP cachekit_hits_total ...'

    # several caches in one registry: tell them apart by a constant label
    registry.register(CacheCollector(sessions_cache, labels={"cache": "sessions"}))

Counters are per process, like the stats they come from: with several workers, let
Prometheus add them up (``sum by (job) (rate(cachekit_hits_total[1m]))``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Final

from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from cachekit.exceptions import ConfigurationError

if TYPE_CHECKING:
    from cachekit.cache import Cache

__all__ = ["HELP", "CacheCollector"]

HELP: Final[Mapping[str, str]] = {
    "hits": "Reads answered by a fresh cached value.",
    "misses": "Reads that found no usable value.",
    "stale_hits": "Reads answered by a stale value while one rebuild ran.",
    "null_hits": "Reads answered by a cached not-found marker.",
    "bloom_rejects": "Lookups a Bloom filter answered as certainly absent (no Redis, no load).",
    "loads": "Calls of the wrapped loader (the database).",
    "load_errors": "Loader calls that raised.",
    "coalesced": "Callers that joined another caller's load in this process.",
    "reads_coalesced": "Callers that shared another caller's GET of the key in this process.",
    "lock_waits": "Callers that waited for another process's load (the lease).",
    "lock_timeouts": "Waits that outlasted their bound.",
    "fallbacks": "Reads that failed open because Redis failed.",
    "stale_sets_refused": "Fills refused because an invalidation came while they loaded.",
    "rebuilds": "Background rebuilds started for stale values.",
    "bloom_missing": "Bloom filter lookups that found the filter missing in Redis.",
    "bloom_over_capacity": "Bloom filter adds beyond the filter's capacity.",
    "deferred": "Invalidations queued for retry because Redis failed.",
    "deferred_retries": "Retries of queued invalidations.",
    "deferred_dropped": "Queued invalidations given up on.",
    "invalid_payloads": "Stored values that failed their checks and were treated as misses.",
    "schema_misses": "Stored values written for another type (a changed model): misses.",
    "uncacheable": "Results returned uncached: they would not come back as they went in.",
    "oversized_values": "Results returned uncached because they exceed max_value_size.",
    "write_errors": "Cache writes that failed after a load.",
    "http_bypasses": "HTTP requests the response cache let through without consulting Redis.",
    "http_uncacheable": "HTTP responses the response cache could not store.",
    "http_revalidations": "Stored HTTP responses the app confirmed with a 304 (revalidated).",
}
"""The help text of each known counter; any other counter gets a generic one."""

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


class CacheCollector(Collector):
    """A prometheus-client collector of one cache's counters, as ``<namespace>_<name>_total``.

    **Parameters:**

    * **cache** - the :class:`~cachekit.Cache` whose :meth:`~cachekit.Cache.stats` to export.
    * **namespace** - the first part of every metric name (default ``"cachekit"``).
    * **labels** - constant labels added to every sample, to tell several caches (or
      apps) apart in one registry, e.g. ``{"cache": "sessions"}``.

    Usage::

        registry = CollectorRegistry()
        registry.register(CacheCollector(cache))
    """

    def __init__(
        self,
        cache: Cache,
        *,
        namespace: str = "cachekit",
        labels: Mapping[str, str] | None = None,
    ) -> None:
        if not _NAME.fullmatch(namespace):
            raise ConfigurationError(f"{namespace!r} is not a valid Prometheus metric name")
        constant = dict(labels or {})
        for name in constant:
            if not _NAME.fullmatch(name) or name.startswith("__"):
                raise ConfigurationError(f"{name!r} is not a valid Prometheus label name")
        self.cache = cache
        self.namespace = namespace
        self._label_names = list(constant)
        self._label_values = list(constant.values())

    def describe(self) -> Iterator[Metric]:
        """The families this collector yields (empty), so a registry can check for clashes."""
        for name in self.cache.stats():
            yield self._family(name)

    def collect(self) -> Iterator[Metric]:
        """One counter family per counter, read from the cache now (no I/O)."""
        for name, value in self.cache.stats().items():
            family = self._family(name)
            family.add_metric(self._label_values, value)
            yield family

    def _family(self, name: str) -> CounterMetricFamily:
        help_text = HELP.get(name, f"cachekit {name.replace('_', ' ')} events.")
        return CounterMetricFamily(f"{self.namespace}_{name}", help_text, labels=self._label_names)

    def __repr__(self) -> str:
        return f"<CacheCollector {self.namespace} {self.cache!r}>"
