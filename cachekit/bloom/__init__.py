"""Bloom filters against cache penetration, across the layers.

* :mod:`~cachekit.bloom.state` - the geometry and the local pybloom-live mirror (pure);
* :mod:`~cachekit.bloom.flow` - loading, following, testing, adding and rebuilding as flows;
* :mod:`~cachekit.bloom.filter` - the public :class:`~cachekit.Bloom` / ``SyncBloom``.

Usage::

    bloom = cache.bloom("products", capacity=1_000_000, error_rate=0.001)
    await bloom.add(5)
"""
