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
ratio and its threshold recomputed for the same budget. Drift that clears is undone the same
way: when a re-profiled tier's own tail stays below 0.8x the scaled prediction for
``drift_intervals`` intervals, its scale falls by the median ratio (never below the profile's
own curve) and its threshold rises again (never above the plan's). Each such event is listed in
``describe()``.

Throttle guard (``throttle_guard`` > 0, off by default): on real processes a tier held at a
small quota is throttled for the rest of a CFS period when a burst arrives, which its averaged
load never shows. A tier throttled in an interval has its allocation multiplied by a further
``1 + throttle_guard`` (compounding while it stays throttled, up to its ``max_cpu``); after
``guard_hold`` intervals without throttling (default: ``window``) the factor falls back one step
at a time. A short hold hands the quota back just before the next burst throttles the tier again;
a long one keeps the level that stopped the throttling.

Period floor (``throttle_risk`` > 0, off by default): a CFS quota is spent per period, not per
second. A tier serving ``r`` req/s at ``c`` ms of CPU each needs ``c * N`` ms of quota in a period
of ``P`` ms, with ``N`` the requests arriving in it (Poisson with mean ``r * P``); using 60% of
its quota on average, a tier that sees three requests per period runs out of quota in about one
period in twelve, and a request caught there waits for the next period. The floor keeps each
tier's CPU at least ``c * Q / P``, ``Q`` the ``1 - throttle_risk`` quantile of ``N``, so a
period runs short with about that probability; ``c`` is the tier's measured CPU per request over
the last ``window`` intervals and ``P`` is the CFS period the backend reports in its observations
(the kernel's and Kubernetes' default, 100 ms, where it reports none).

Priority under a capacity: with ``capacity`` (cores for the whole app) set, an interval whose
tiers want more than that funds tiers by the priority of the most important class they serve:
every tier first keeps its ``min_cpu``, then the tiers of priority-1 classes get all they want,
then priority 2, and so on; the first level that does not fit shares what is left in proportion
to its wants and lower levels stay at ``min_cpu``. A tier shared with a more important class is
funded at that class's level: it serves every class first-come first-served, so cutting it would
slow the important class too.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from scipy.stats import poisson

from leanstack.errors import LeanstackError
from leanstack.microservices.app import AppSpec
from leanstack.microservices.cgroups import PERIOD_US
from leanstack.microservices.observation import Allocation, Observation, TierAllocation
from leanstack.ursa.callgraph import classes_through, visits_per_request
from leanstack.ursa.plan import Plan

DEFAULT_HEADROOM = 0.3
CPU_STEP = 0.001  # cores: allocations are rounded up to 0.1 ms of quota per 100 ms period
DRIFT_RATIO = 1.5  # observed / predicted own latency that counts as drift
RECOVER_RATIO = 0.8  # ... and below which a re-profiled tier counts as recovered
DEFAULT_CFS_PERIOD_MS = PERIOD_US / 1000  # the kernel's: the floor's P if observations lack one


class UrsaController:
    """Allocates each tier's CPU from its planned load-per-core threshold."""

    name = "ursa"

    def __init__(self, plan: str | Path | Plan | None = None,
                 headroom: float = DEFAULT_HEADROOM, window: int = 3,
                 drift_intervals: int = 5, reprofile: bool = True,
                 warmup_intervals: int = 1, capacity: float | None = None,
                 throttle_guard: float = 0.0, guard_hold: int | None = None,
                 throttle_risk: float = 0.0) -> None:
        if plan is None:
            raise LeanstackError("the ursa controller needs a plan — make one with 'leanstack "
                                 "ursa profile' and 'leanstack ursa plan', then pass "
                                 "--opt plan=PLAN.json")
        if not 0 <= headroom <= 5:
            raise LeanstackError(f"ursa headroom must be in [0, 5], got {headroom}")
        guard_hold = window if guard_hold is None else guard_hold
        if window < 1 or drift_intervals < 1 or guard_hold < 1:
            raise LeanstackError(f"ursa window, drift_intervals and guard_hold must be at least "
                                 f"1, got {window}, {drift_intervals} and {guard_hold}")
        if warmup_intervals < 0:
            raise LeanstackError(f"ursa warmup_intervals must be 0 or more, got "
                                 f"{warmup_intervals}")
        if capacity is not None and not (math.isfinite(capacity) and capacity > 0):
            raise LeanstackError(f"ursa capacity must be a number of cores above 0, got "
                                 f"{capacity}")
        if not 0 <= throttle_guard <= 4:
            raise LeanstackError(f"ursa throttle_guard must be in [0, 4] (0 = off), got "
                                 f"{throttle_guard}")
        if not 0 <= throttle_risk < 1:
            raise LeanstackError(f"ursa throttle_risk must be in [0, 1) (0 = off), e.g. 0.001, "
                                 f"got {throttle_risk}")
        self.plan = plan if isinstance(plan, Plan) else Plan.load(plan)
        self.headroom = headroom
        self.window = window
        self.drift_intervals = drift_intervals
        self.reprofile = bool(reprofile)
        self.warmup_intervals = warmup_intervals
        self.capacity = capacity
        self.throttle_guard = throttle_guard
        self.guard_hold = int(guard_hold)
        self.throttle_risk = throttle_risk
        self._app: AppSpec | None = None
        self._level: dict[str, int] = {}
        self._thresholds: dict[str, float] = {}
        self._scale: dict[str, float] = {}
        self._drift: dict[str, list[float]] = {}
        self._guard: dict[str, float] = {}  # throttle-guard factor per tier
        self._unthrottled: dict[str, int] = {}  # intervals since the tier was last throttled
        self.events: list[dict[str, Any]] = []

    def reset(self, app: AppSpec, interval_s: float) -> Allocation:
        """Check the plan fits the app; start at the static maximum (cut to ``capacity``) until
        load is measured."""
        if self.plan.app != app.name:
            raise LeanstackError(f"the plan is for app '{self.plan.app}', not '{app.name}' — "
                                 f"plan {app.name} first")
        missing = [t for t in app.services if t not in self.plan.tiers]
        if missing:
            raise LeanstackError(f"the plan has no threshold for tier(s) {', '.join(missing)} — "
                                 "re-plan from a profile of the current app file")
        floor = sum(s.min_cpu for s in app.services.values())
        if self.capacity is not None and self.capacity < floor:
            raise LeanstackError(f"ursa capacity {self.capacity:g} cores is below the "
                                 f"{floor:g} cores every tier's min_cpu adds up to — raise it")
        self._app = app
        self._visits = visits_per_request(app)
        unused = max(c.priority for c in app.classes.values()) + 1  # a tier no class visits
        self._level = {t: min((app.classes[c].priority for c in through), default=unused)
                       for t, through in classes_through(app).items()}
        self._thresholds = {t: p.threshold for t, p in self.plan.tiers.items()}
        self._scale = dict.fromkeys(app.services, 1.0)
        self._drift = {t: [] for t in app.services}
        self._guard = dict.fromkeys(app.services, 1.0)
        self._unthrottled = dict.fromkeys(app.services, 0)
        self.events = []
        top = Allocation.static_max(app)
        cpus = self._within_capacity({n: t.cpu for n, t in top.tiers.items()})
        return Allocation({n: TierAllocation(round(cpus[n], 4), t.replicas)
                           for n, t in top.tiers.items()})

    def decide(self, history: list[Observation], current: Allocation) -> Allocation:
        """The allocation for the next interval from the last ``window`` observations."""
        assert self._app is not None, "reset() first"
        if len(history) < self.warmup_intervals:
            return current
        recent = history[-self.window:]
        if self.reprofile:
            self._watch_drift(history[-1], current)
        if self.throttle_guard:
            self._watch_throttling(history[-1])
        want = {}
        for name, svc in self._app.services.items():
            load = statistics.fmean(max(o.tiers[name].rps, o.offered_rps * self._visits[name])
                                    for o in recent)
            cpu = load / self._thresholds[name]
            if self.plan.tiers[name].knee:  # headroom keeps a tier off its knee
                cpu *= 1 + self.headroom
            if self.throttle_risk:
                cpu = max(cpu, self._period_floor(name, load, recent))
            cpu = max(math.ceil(cpu / CPU_STEP) * CPU_STEP, svc.min_cpu)
            if self._guard[name] > 1.0:  # the guard lifts the min_cpu floor too
                cpu = math.ceil(cpu * self._guard[name] / CPU_STEP) * CPU_STEP
            want[name] = min(cpu, svc.max_cpu)
        tiers = {}
        for name, cpu in self._within_capacity(want).items():
            svc = self._app.services[name]
            replicas = svc.replicas if svc.is_storage else max(svc.replicas, math.ceil(cpu))
            tiers[name] = TierAllocation(round(cpu, 4), replicas)
        return Allocation(tiers)

    def _period_floor(self, name: str, load: float, recent: list[Observation]) -> float:
        """Cores that cover ``name``'s CPU demand in one CFS period with probability
        ``1 - throttle_risk`` at ``load`` req/s (see the module docstring)."""
        served = sum(o.tiers[name].rps for o in recent)
        if served <= 0 or load <= 0:
            return 0.0
        cpu_s_per_request = sum(o.tiers[name].cpu_used for o in recent) / served
        period_s = (recent[-1].cfs_period_ms or DEFAULT_CFS_PERIOD_MS) / 1000
        arrivals = poisson.ppf(1 - self.throttle_risk, load * period_s)
        return cpu_s_per_request * float(arrivals) / period_s

    def _watch_throttling(self, obs: Observation) -> None:
        """Raise the guard factor of every tier throttled in ``obs``; lower it one step after
        ``guard_hold`` clean intervals."""
        step = 1 + self.throttle_guard
        for name, st in obs.tiers.items():
            if st.throttled_s > 0:
                self._guard[name] = min(self._guard[name] * step, 1e3)
                self._unthrottled[name] = 0
                continue
            self._unthrottled[name] += 1
            if self._unthrottled[name] >= self.guard_hold and self._guard[name] > 1.0:
                self._guard[name] = max(self._guard[name] / step, 1.0)
                self._unthrottled[name] = 0

    def _within_capacity(self, want: dict[str, float]) -> dict[str, float]:
        """``want`` cut to ``capacity`` by class priority (see the module docstring)."""
        assert self._app is not None
        if self.capacity is None or sum(want.values()) <= self.capacity + 1e-9:
            return want
        out = {t: self._app.services[t].min_cpu for t in want}
        left = self.capacity - sum(out.values())
        for level in sorted(set(self._level.values())):
            tiers = [t for t in want if self._level[t] == level]
            need = sum(want[t] - out[t] for t in tiers)
            share = 1.0 if need <= left else max(left, 0.0) / need
            for t in tiers:
                extra = (want[t] - out[t]) * share
                out[t] += math.floor(extra / CPU_STEP) * CPU_STEP if share < 1 else extra
            left -= need * share
        return out

    def thresholds(self) -> dict[str, float]:
        """Current load-per-core threshold per tier (after any re-profiling)."""
        return dict(self._thresholds)

    def describe(self) -> dict[str, Any]:
        """Settings, the plan's per-tier thresholds and every re-profiling event."""
        return {"name": self.name, "headroom": self.headroom, "window": self.window,
                "drift_intervals": self.drift_intervals, "reprofile": self.reprofile,
                "capacity": self.capacity, "throttle_guard": self.throttle_guard,
                "guard_hold": self.guard_hold, "throttle_risk": self.throttle_risk,
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
            ratio = seen / max(expected, 1e-6)
            drifting = seen > tier.budget_ms and ratio > DRIFT_RATIO
            recovering = self._scale[name] > 1.0 and ratio < RECOVER_RATIO
            # a streak holds one direction: a switch starts it anew
            streak = self._drift[name]
            if not (drifting or recovering) or (streak and (streak[-1] > 1) != drifting):
                streak.clear()
            if drifting or recovering:
                streak.append(ratio)
            if len(streak) >= self.drift_intervals:
                self._rescale(name, statistics.median(streak), obs.t)
                streak.clear()

    def _rescale(self, name: str, factor: float, t: float) -> None:
        """Scale the tier's curve by ``factor`` (never below the profiled curve); its threshold
        becomes the largest profiled load per core whose scaled latency still fits the budget,
        at most the plan's."""
        self._scale[name] = max(self._scale[name] * factor, 1.0)
        tier = self.plan.tiers[name]
        fits = [x for x, y in tier.curve if y * self._scale[name] <= tier.budget_ms]
        old = self._thresholds[name]
        if fits:
            new = max(fits)
        else:  # slower than every profiled point: shrink the slowest-load point in proportion
            x0, y0 = tier.curve[0]
            new = x0 * tier.budget_ms / max(y0 * self._scale[name], 1e-9)
        self._thresholds[name] = min(new, tier.threshold)
        self.events.append({"t": t, "tier": name, "factor": round(factor, 3),
                            "threshold_before": old, "threshold_after": self._thresholds[name]})
