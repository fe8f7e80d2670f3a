"""Sinan's per-tier CPU actions and the grid allocations live on (explorer and controller).

The paper's actions: -10% of the tier's max, -1 core, hold, +25% of max, +50% of max, +1 core;
a floor of 0.2 core and steps of 0.2 core below one core. Our tiers have at most one core
(the paper's had several), so we keep the 0.2-core floor but use 0.1-core steps: with 0.2 steps
a one-core tier would have only five settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from leanstack.microservices.app import AppSpec
from leanstack.microservices.observation import Allocation, TierAllocation

ACTIONS = ("down_10pct", "down_1core", "hold", "up_25pct", "up_50pct", "up_1core")
"""Per-tier actions, in the paper's order."""

DOWN_ACTIONS = ("down_10pct", "down_1core")
UP_ACTIONS = ("up_25pct", "up_50pct", "up_1core")


@dataclass(frozen=True)
class CpuGrid:
    """Where a tier's CPU may sit: ``floor``..``max_cpu`` in multiples of ``step``."""

    floor: float = 0.2
    step: float = 0.1

    def tier_floor(self, app: AppSpec, tier: str) -> float:
        """The lowest CPU a tier may get: the grid floor, at least its min_cpu, at most max."""
        svc = app.services[tier]
        return min(max(self.floor, svc.min_cpu), svc.max_cpu)

    def snap(self, app: AppSpec, tier: str, cpu: float) -> float:
        """Round ``cpu`` to the grid and clamp it to the tier's range."""
        svc = app.services[tier]
        snapped = round(round(cpu / self.step) * self.step, 6)
        return min(max(snapped, self.tier_floor(app, tier)), svc.max_cpu)

    def apply(self, app: AppSpec, tier: str, action: str, cpu: float) -> float:
        """The tier's CPU after ``action`` from ``cpu``."""
        top = app.services[tier].max_cpu
        delta = {"down_10pct": -0.10 * top, "down_1core": -1.0, "hold": 0.0,
                 "up_25pct": 0.25 * top, "up_50pct": 0.50 * top, "up_1core": 1.0}[action]
        if action == "down_10pct":  # always at least one grid step down
            delta = min(delta, -self.step)
        return self.snap(app, tier, cpu + delta)


def with_cpus(current: Allocation, cpus: dict[str, float]) -> Allocation:
    """``current`` with the CPU of the named tiers replaced (replicas kept)."""
    tiers = dict(current.tiers)
    for name, cpu in cpus.items():
        tiers[name] = TierAllocation(cpu, current.tiers[name].replicas)
    return Allocation(tiers)
