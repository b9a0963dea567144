"""Integrations with other libraries, and the process-wide default cache they share.

Each integration lives in its own module and imports its library only there, so
``import cachekit`` never needs SQLAlchemy (or any other optional dependency):

* :mod:`cachekit.contrib.sqlalchemy` - invalidate cache entries after a database commit,
  and add new rows to Bloom filters.
* :mod:`cachekit.contrib.prometheus` - export ``cache.stats()`` as Prometheus counters.

An integration that is not given a cache explicitly uses the *default cache*: the one most
recently passed to :func:`set_default_cache` in this process. The registry is
:mod:`cachekit.defaults` (where :meth:`~cachekit.Cache.configure` registers its cache),
re-exported here for integrations.

Usage::

    from cachekit.contrib import set_default_cache

    cache = Cache.from_url(os.environ["REDIS_URL"])
    set_default_cache(cache)      # integrations declared with cache=None now use it
"""

from __future__ import annotations

from cachekit.defaults import default_cache, set_default_cache

__all__ = ["default_cache", "set_default_cache"]
