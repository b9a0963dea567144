"""Drive a flow by hand, one effect at a time, so a test can act between two effects."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from cachekit.backends.base import SyncBackend
from cachekit.backends.ops import Op
from cachekit.flow.effects import Flow, Listen

T = TypeVar("T")


class Stepper(Generic[T]):
    """Drives a flow by hand on a sync backend, so a test can act between two effects.

    ``Listen`` is answered without starting anything (the cache's own subscription, if
    the test started it through the public API, keeps running on its thread). Every
    effect performed, and the reply it got, is kept in ``performed``.
    """

    def __init__(self, flow: Flow[T], backend: SyncBackend) -> None:
        self._flow = flow
        self._backend = backend
        self._reply: Any = None
        self.performed: list[tuple[object, Any]] = []

    def _perform(self, effect: object) -> Any:
        if isinstance(effect, Listen):
            return None
        assert isinstance(effect, Op), f"unexpected effect {effect!r}"
        reply = self._backend.run(effect)
        self.performed.append((effect, reply))
        return reply

    def until(self, stop: Callable[[object], bool]) -> Any:
        """Perform effects until one matches ``stop``; return that one, not performed."""
        while True:
            try:
                effect = self._flow.send(self._reply)
            except StopIteration:
                raise AssertionError("the flow ended before the awaited effect") from None
            if stop(effect):
                return effect
            self._reply = self._perform(effect)

    def perform(self, effect: object) -> Any:
        """Perform ``effect`` now (the test decides when); its result, to pass to finish."""
        return self._perform(effect)

    def finish(self, reply: Any) -> T:
        """Send ``reply`` for the effect returned by :meth:`until` and run to the end."""
        self._reply = reply
        while True:
            try:
                effect = self._flow.send(self._reply)
            except StopIteration as end:
                result: T = end.value
                return result
            self._reply = self._perform(effect)

    def replies(self, kind: type[Op[Any]]) -> list[Any]:
        """The replies of the effects of type ``kind`` performed so far, in order."""
        return [reply for effect, reply in self.performed if isinstance(effect, kind)]
