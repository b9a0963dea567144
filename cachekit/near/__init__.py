"""The near cache: a bounded in-process layer in front of Redis for hot keys.

* :mod:`~cachekit.near.local` - :class:`~cachekit.LocalCache`, the layer and its bounds;
* :mod:`~cachekit.near.channel` - the invalidation channel (RESP3 client tracking);
* :mod:`~cachekit.near.backend` - the backend wrapper that answers reads from the layer.

Usage::

    cache = Cache.from_url("redis://127.0.0.1:6379/0", local=LocalCache())
"""
