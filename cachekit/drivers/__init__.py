"""The drivers: perform what flows ask for, blocking or on an event loop.

:mod:`~cachekit.drivers.drive` holds the two drivers (``SyncDriver`` and ``AsyncDriver``);
the rest is what they lean on: in-process single flight, deferred work, watchdogs, the
notification listeners that wake waiters, one client per event loop, and
:mod:`~cachekit.drivers.binding`, which assembles storage, guard, near cache and listener
when a cache is configured.

Usage::

    envelope = binding.sync.drive(read_envelope(ctx, key, serializer))
    envelope = await binding.aio.drive(read_envelope(ctx, key, serializer))
"""
