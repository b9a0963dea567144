"""The scenarios of ``python -m loadtests``, in the order they run.

Each module has a ``NAME`` and ``async def run(ctx: Context) -> ScenarioResult``; the
library-level arms always run, the demo-level ones when ``ctx.settings.demo`` is set.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from loadtests.harness.outcome import Context, ScenarioResult
from loadtests.scenarios import avalanche, breakdown, cart, consistency, outage, penetration, stale

__all__ = ["SCENARIOS", "Runner"]

Runner = Callable[[Context], Awaitable[ScenarioResult]]

SCENARIOS: dict[str, Runner] = {
    penetration.NAME: penetration.run,
    breakdown.NAME: breakdown.run,
    avalanche.NAME: avalanche.run,
    stale.NAME: stale.run,
    consistency.NAME: consistency.run,
    outage.NAME: outage.run,
    cart.NAME: cart.run,
}
