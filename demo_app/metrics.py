"""``GET /metrics``: the cache's counters and the database's query count, for Prometheus.

Each app has a registry of its own (not prometheus-client's global one), so several apps
can live in one process (the tests build many). Both collectors read in-process counters
at scrape time: a scrape does no I/O.

Usage::

    registry = build_registry(cache, queries)
    routes = [Route("/metrics", metrics_endpoint(registry))]
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from cachekit import Cache
from cachekit.contrib.prometheus import CacheCollector
from demo_app.db import QueryCounter

__all__ = ["QueryCollector", "build_registry", "metrics_endpoint"]


class QueryCollector(Collector):
    """``demo_db_queries_total``: SQL statements the shop's engine sent."""

    def __init__(self, queries: QueryCounter) -> None:
        self.queries = queries

    def describe(self) -> Iterator[Metric]:
        """The one family this collector yields."""
        yield CounterMetricFamily("demo_db_queries", "SQL statements sent to the database.")

    def collect(self) -> Iterator[Metric]:
        """The count now."""
        yield CounterMetricFamily(
            "demo_db_queries", "SQL statements sent to the database.", value=self.queries.count
        )


def build_registry(cache: Cache, queries: QueryCounter) -> CollectorRegistry:
    """A registry of this app's own: ``cachekit_*_total`` and ``demo_db_queries_total``."""
    registry = CollectorRegistry()
    registry.register(CacheCollector(cache))
    registry.register(QueryCollector(queries))
    return registry


def metrics_endpoint(registry: CollectorRegistry) -> Callable[[Request], Awaitable[Response]]:
    """The ``/metrics`` endpoint of ``registry``, in Prometheus' text format."""

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return metrics
