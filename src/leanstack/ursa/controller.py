"""Ursa's online controller: per-tier CPU = measured load / planned load-per-core threshold.

Each interval, per tier: the load is the larger of what the tier served and what the offered app
load implies for it (visits per request x offered req/s), averaged over the last ``window``
intervals; CPU = load / threshold x (1 + headroom), clamped to the tier's
``[min_cpu, max_cpu]``; replicas grow so that no replica needs more than one core. A tier whose
profile never reached its knee (it still met its bound at ``min_cpu``) gets no headroom: its
threshold is a lower bound already.

Drift: the plan assumes each tier's latency-vs-load-per-core curve from the profile. When a
tier's observed own tail latency stays above both its budget and 1.5x the profile's prediction
at its current load per core for ``drift_intervals`` intervals, the tier is re-profiled from
those live observations: its curve (kept in the plan) is scaled by the median observed/predicted
ratio and its threshold recomputed for the same budget. Each such event is listed in ``describe()``.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from leanstack.errors import LeanstackError
from leanstack.microservices.app import AppSpec
from leanstack.microservices.observation import Allocation, Observation, TierAllocation
from leanstack.ursa.callgraph import visits_per_request
from leanstack.ursa.plan import Plan

DEFAULT_HEADROOM = 0.3
CPU_STEP = 0.001  # cores: allocations are rounded up to 0.1 ms of quota per 100 ms period


class UrsaController:
    """Allocates each tier's CPU from its planned load-per-core threshold."""

    name = "ursa"

    def __init__(self, plan: str | Path | Plan | None = None,
                 headroom: float = DEFAULT_HEADROOM, window: int = 3,
                 drift_intervals: int = 5, reprofile: bool = True,
                 warmup_intervals: int = 1) -> None:
        if plan is None:
            raise LeanstackError("the ursa controller needs a plan — make one with 'leanstack "
                                 "ursa profile' and 'leanstack ursa plan', then pass "
                                 "--opt plan=PLAN.json")
        if not 0 <= headroom <= 5:
            raise LeanstackError(f"ursa headroom must be in [0, 5], got {headroom}")
        if window < 1 or drift_intervals < 1:
            raise LeanstackError("ursa window and drift_intervals must be at least 1")
        self.plan = plan if isinstance(plan, Plan) else Plan.load(plan)
        self.headroom = headroom
        self.window = window
        self.drift_intervals = drift_intervals
        self.reprofile = bool(reprofile)
        self.warmup_intervals = warmup_intervals
        self._app: AppSpec | None = None
        self._thresholds: dict[str, float] = {}
        self._scale: dict[str, float] = {}
        self._drift: dict[str, list[float]] = {}
        self.events: list[dict[str, Any]] = []

    def reset(self, app: AppSpec, interval_s: float) -> Allocation:
        """Check the plan fits the app; start at the static maximum until load is measured."""
        if self.plan.app != app.name:
            raise LeanstackError(f"the plan is for app '{self.plan.app}', not '{app.name}' — "
                                 f"plan {app.name} first")
        missing = [t for t in app.services if t not in self.plan.tiers]
        if missing:
            raise LeanstackError(f"the plan has no threshold for tier(s) {', '.join(missing)} — "
                                 "re-plan from a profile of the current app file")
        self._app = app
        self._visits = visits_per_request(app)
        self._thresholds = {t: p.threshold for t, p in self.plan.tiers.items()}
        self._scale = dict.fromkeys(app.services, 1.0)
        self._drift = {t: [] for t in app.services}
        self.events = []
        return Allocation.static_max(app)

    def decide(self, history: list[Observation], current: Allocation) -> Allocation:
        """The allocation for the next interval from the last ``window`` observations."""
        assert self._app is not None, "reset() first"
        if len(history) < self.warmup_intervals:
            return current
        recent = history[-self.window:]
        if self.reprofile:
            self._watch_drift(history[-1], current)
        tiers = {}
        for name, svc in self._app.services.items():
            load = statistics.fmean(max(o.tiers[name].rps, o.offered_rps * self._visits[name])
                                    for o in recent)
            cpu = load / self._thresholds[name]
            if self.plan.tiers[name].knee:  # headroom keeps a tier off its knee
                cpu *= 1 + self.headroom
            cpu = min(max(math.ceil(cpu / CPU_STEP) * CPU_STEP, svc.min_cpu), svc.max_cpu)
            replicas = svc.replicas if svc.is_storage else max(svc.replicas, math.ceil(cpu))
            tiers[name] = TierAllocation(round(cpu, 4), replicas)
        return Allocation(tiers)

    def thresholds(self) -> dict[str, float]:
        """Current load-per-core threshold per tier (after any re-profiling)."""
        return dict(self._thresholds)

    def describe(self) -> dict[str, Any]:
        """Settings, the plan's per-tier thresholds and every re-profiling event."""
        return {"name": self.name, "headroom": self.headroom, "window": self.window,
                "drift_intervals": self.drift_intervals, "reprofile": self.reprofile,
                "plan_cpu_per_rps": self.plan.cpu_per_rps, "margin": self.plan.margin,
                "thresholds": self.thresholds(), "reprofile_events": self.events}

    def _watch_drift(self, obs: Observation, current: Allocation) -> None:
        key = self.plan.percentile
        for name, st in obs.tiers.items():
            cpu = current.tiers[name].cpu
            seen = st.own_latency_ms.get(key)
            if not seen or cpu <= 0 or st.rps <= 0:
                self._drift[name] = []
                continue
            tier = self.plan.tiers[name]
            expected = tier.latency_at(st.rps / cpu) * self._scale[name]
            budget = tier.budget_ms
            if seen > budget and seen > 1.5 * expected:
                self._drift[name].append(seen / max(expected, 1e-6))
            else:
                self._drift[name] = []
            if len(self._drift[name]) >= self.drift_intervals:
                self._rescale(name, statistics.median(self._drift[name]), obs.t)
                self._drift[name] = []

    def _rescale(self, name: str, factor: float, t: float) -> None:
        """Scale the tier's curve by ``factor``; its threshold becomes the largest profiled
        load per core whose scaled latency still fits the budget."""
        self._scale[name] *= factor
        tier = self.plan.tiers[name]
        fits = [x for x, y in tier.curve if y * self._scale[name] <= tier.budget_ms]
        old = self._thresholds[name]
        if fits:
            new = max(fits)
        else:  # slower than every profiled point: shrink the slowest-load point in proportion
            x0, y0 = tier.curve[0]
            new = x0 * tier.budget_ms / max(y0 * self._scale[name], 1e-9)
        self._thresholds[name] = min(new, old)
        self.events.append({"t": t, "tier": name, "factor": round(factor, 3),
                            "threshold_before": old, "threshold_after": self._thresholds[name]})
