"""Pure decisions: every flow of cachekit, written once as a sans-I/O generator.

A flow yields what it needs done (a backend operation from :mod:`cachekit.backends.ops`,
or an effect from :mod:`cachekit.flow.effects`) and is sent the answer; it never performs
I/O, reads the time or draws a random number itself. The sync and async drivers in
:mod:`cachekit.drivers` perform the effects, so ``def`` and ``async def`` callers run the
same decisions.

* :mod:`~cachekit.flow.read` - the cache-aside read path of decorated functions;
* :mod:`~cachekit.flow.raw` - ``get``, ``set``, ``delete``, ``invalidate`` and batches;
* :mod:`~cachekit.flow.context` - the inputs of every flow (``Context``, ``Policy``);
* :mod:`~cachekit.flow.envelope`, :mod:`~cachekit.flow.codecs` - the stored format and typed
  values;
* :mod:`~cachekit.flow.keys`, :mod:`~cachekit.flow.ttl` - keys, jitter and lifetimes;
* :mod:`~cachekit.flow.effects` - what a flow may ask of its driver besides storage.

Usage::

    flow = read_envelope(ctx, "shop:{product:5}", serializer)   # nothing ran yet
    envelope = binding.sync.drive(flow)                         # performs what it yields
"""
