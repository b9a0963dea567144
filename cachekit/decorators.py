"""``@cache.cached``: cache-aside for ``def`` and ``async def`` functions alike.

The decorator looks at the function it wraps: an ``async def`` gets an
:class:`AsyncCachedFunction` whose call, ``invalidate`` and ``refresh`` are awaitable; a
``def`` gets a :class:`SyncCachedFunction` whose methods block. Both run the same flow
(:mod:`cachekit.flow.read`) and build the same keys, so a ``def`` and an ``async def`` with the
same key template share their entries. ``ParamSpec`` keeps the wrapped signature for
type checkers, and ``__wrapped__`` keeps it for ``inspect``.

Usage::

    @cache.cached(ttl=60, key="user:{user_id}")
    def load_user(user_id: int) -> dict[str, Any] | None: ...

    load_user(7)
    load_user.invalidate(user_id=7)
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from contextvars import ContextVar
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, cast, overload

from cachekit.exceptions import ConfigurationError
from cachekit.flow.codecs import ReturnType, codec_for, return_type
from cachekit.flow.context import Context, Policy
from cachekit.flow.keys import KeyBuilder
from cachekit.flow.raw import invalidate
from cachekit.flow.read import cached_read, refresh

if TYPE_CHECKING:
    from cachekit.drivers.binding import Binding
    from cachekit.serializers import Serializer

__all__ = ["BYPASS", "AsyncCachedFunction", "Decorator", "SyncCachedFunction"]

# cachekit.testing.bypass() sets it: decorated calls then load, reading and writing nothing.
BYPASS: ContextVar[bool] = ContextVar("cachekit_bypass", default=False)

P = ParamSpec("P")
R = TypeVar("R")


class _CachedFunction(Generic[P, R]):
    """What both faces share: the wrapped function, its key builder and its policy."""

    def __init__(
        self,
        bound: Callable[[], Binding],
        func: Callable[P, Any],
        policy: Policy,
        builder: KeyBuilder,
        returns: ReturnType,
        gate: Callable[[tuple[Any, ...], dict[str, Any]], object] | None = None,
        tags: tuple[KeyBuilder, ...] = (),
    ) -> None:
        functools.update_wrapper(cast(Any, self), func)
        self._bound = bound
        self._func = func
        self._policy = policy
        self._builder = builder
        self._returns = returns
        self._gate = gate
        self._tags = tags
        # The policy with the codec of the return annotation, for the serializer it was
        # built for (the cache's can change with configure()); one tuple, so threads
        # never see a policy paired with another serializer.
        self._typed: tuple[Serializer | None, Policy] = (None, policy)

    def _typed_policy(self, ctx: Context) -> Policy:
        """The policy whose serializer decodes hits into the return annotation."""
        base = self._policy.serializer or ctx.serializer
        built_for, policy = self._typed
        if built_for is base:
            return policy
        tp, problem = self._returns.resolve()
        policy = replace(self._policy, serializer=codec_for(base, tp, problem))
        self._typed = (base, policy)
        return policy

    def _read(self, b: Binding, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The read flow of one call (with its Bloom gate item and tags, when it has them)."""
        ctx = b.ctx
        if self._gate is None and not self._tags:  # the usual call: the key is all it needs
            key = self._builder.storage_key(ctx.keyspace, args, kwargs)
            built_for, policy = self._typed
            if built_for is not (self._policy.serializer or ctx.serializer):
                policy = self._typed_policy(ctx)
            return cached_read(ctx, policy, "", key=key)
        gate = self._gate
        item = None if gate is None else gate(args, kwargs)
        logical = self._builder.build(args, kwargs)
        tags = tuple(tag.build(args, kwargs) for tag in self._tags) if self._tags else ()
        return cached_read(ctx, self._typed_policy(ctx), logical, item, tags)

    def _refresh(self, b: Binding, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The flow that loads now and overwrites the entry."""
        logical = self._builder.build(args, kwargs)
        tags = tuple(tag.build(args, kwargs) for tag in self._tags) if self._tags else ()
        return refresh(b.ctx, self._typed_policy(b.ctx), logical, tags)

    def tags(self, *args: Any, **kwargs: Any) -> tuple[str, ...]:
        """The rendered tags of a call with these arguments (no I/O).

        Usage::

            catalog_page.tags(3)     # ('catalog', 'page:3')
        """
        return tuple(tag.build(args, kwargs) for tag in self._tags) if self._tags else ()

    def key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The logical cache key of a call with these arguments (no I/O).

        Usage::

            get_product.key(5)     # 'product:5'
        """
        return self._builder.build(args, kwargs)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._policy.name}>"


class AsyncCachedFunction(_CachedFunction[P, R]):
    """An ``async def`` function behind the cache; its methods are awaitable.

    Usage::

        product = await get_product(5)
        await get_product.invalidate(5)
        fresh = await get_product.refresh(5)
    """

    _func: Callable[P, Awaitable[R]]

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """The cached result, loading and storing it on a miss."""
        if BYPASS.get():
            return await self._func(*args, **kwargs)
        b = self._bound()
        flow = self._read(b, args, kwargs)
        result: R = await b.aio.drive(flow, lambda: self._func(*args, **kwargs))
        return result

    async def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Drop the entry for these arguments and void any load in flight for it."""
        b = self._bound()
        await b.aio.drive(invalidate(b.ctx, self._builder.build(args, kwargs)))

    async def refresh(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Load now, overwrite the entry and return the new result."""
        b = self._bound()
        flow = self._refresh(b, args, kwargs)
        result: R = await b.aio.drive(flow, lambda: self._func(*args, **kwargs))
        return result

    async def warm(self, calls: Iterable[Any], *, concurrency: int = 8) -> int:
        """Preload many entries (their TTLs jittered, so they do not expire together).

        Each item of ``calls`` is one call's arguments: a tuple (positional), a dict
        (keywords) or a single value. Returns how many were loaded.

        Usage::

            await get_product.warm(range(1, 1001))
        """
        gate = asyncio.Semaphore(concurrency)

        async def one(call: Any) -> None:
            args, kwargs = _arguments(call)
            async with gate:
                await self.refresh(*args, **kwargs)

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(call)) for call in calls]
        return len(tasks)


class SyncCachedFunction(_CachedFunction[P, R]):
    """A ``def`` function behind the cache; its methods block.

    Usage::

        product = get_product(5)
        get_product.invalidate(5)
        fresh = get_product.refresh(5)
    """

    _func: Callable[P, R]

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """The cached result, loading and storing it on a miss."""
        if BYPASS.get():
            return self._func(*args, **kwargs)
        b = self._bound()
        flow = self._read(b, args, kwargs)
        result: R = b.sync.drive(flow, lambda: self._func(*args, **kwargs))
        return result

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Drop the entry for these arguments and void any load in flight for it."""
        b = self._bound()
        b.sync.drive(invalidate(b.ctx, self._builder.build(args, kwargs)))

    def refresh(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Load now, overwrite the entry and return the new result."""
        b = self._bound()
        flow = self._refresh(b, args, kwargs)
        result: R = b.sync.drive(flow, lambda: self._func(*args, **kwargs))
        return result

    def warm(self, calls: Iterable[Any]) -> int:
        """Preload many entries (their TTLs jittered, so they do not expire together).

        Each item of ``calls`` is one call's arguments: a tuple (positional), a dict
        (keywords) or a single value. Returns how many were loaded.

        Usage::

            get_product.warm(range(1, 1001))
        """
        count = 0
        for call in calls:
            args, kwargs = _arguments(call)
            self.refresh(*args, **kwargs)
            count += 1
        return count


def _arguments(call: Any) -> tuple[Any, Any]:
    if isinstance(call, tuple):
        return call, {}
    if isinstance(call, dict):
        return (), call
    return (call,), {}


class Decorator:
    """What ``cache.cached(...)`` returns: apply it to a ``def`` or ``async def``.

    The key template is checked against the function's signature here, at decoration
    time, so a typo fails at import rather than at the first call.

    Usage::

        decorate = cache.cached(ttl=30)
        fast = decorate(slow_function)
    """

    __slots__ = ("_bloom_key", "_bound", "_key", "_policy")

    def __init__(
        self,
        bound: Callable[[], Binding],
        *,
        key: str | None,
        policy: Policy,
        bloom_key: str | None = None,
    ) -> None:
        self._bound = bound
        self._key = key
        self._policy = policy
        self._bloom_key = bloom_key

    @overload
    def __call__(  # type: ignore[overload-overlap]  # the async overload must win
        self, func: Callable[P, Coroutine[Any, Any, R]]
    ) -> AsyncCachedFunction[P, R]: ...

    @overload
    def __call__(self, func: Callable[P, R]) -> SyncCachedFunction[P, R]: ...

    def __call__(
        self, func: Callable[P, Any]
    ) -> AsyncCachedFunction[P, Any] | SyncCachedFunction[P, Any]:
        builder = KeyBuilder.for_function(func, self._key)
        policy = replace(self._policy, name=f"{func.__module__}.{func.__qualname__}")
        gate = None if policy.bloom is None else _gate(func, self._bloom_key)
        tags = tuple(KeyBuilder.for_function(func, tag) for tag in policy.tags)
        returns = return_type(func)  # the schema of its hits: read once, here
        kind = AsyncCachedFunction if inspect.iscoroutinefunction(func) else SyncCachedFunction
        return kind(self._bound, func, policy, builder, returns, gate, tags)


def _gate(
    func: Callable[..., Any], template: str | None
) -> Callable[[tuple[Any, ...], dict[str, Any]], object]:
    """What a call offers the Bloom filter: ``bloom_key``, else its first argument."""
    if template is not None:
        return KeyBuilder.for_function(func, template, escape_values=False).build
    names = list(inspect.signature(func).parameters)
    if not names:
        raise ConfigurationError(f"{func.__qualname__} has no argument for its Bloom filter")
    first = inspect.signature(func).parameters[names[0]]
    return lambda args, kwargs: args[0] if args else kwargs.get(first.name, first.default)
