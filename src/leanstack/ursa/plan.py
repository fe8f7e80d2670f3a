"""SLA decomposition: per-tier latency budgets that fit every class's SLA at the least CPU.

Each tier picks one point of its profile — a latency budget and the load per core that keeps the
tier's own tail latency within it. Along every class's call tree the budgets compose (own budget
plus, per call group, the slowest call; a pipeline class also waits for its slowest queued
branch) and the root must fit the class's SLA less a safety margin. The objective is total CPU
per unit of app load: ``sum_tier visits_per_request / load_per_core``. It is a mixed-integer
program (one binary per tier and profile point, one continuous latency per call-tree node),
solved with ``scipy.optimize.milp``.

Priorities: given a capacity (cores) and a planning load, a plan that would need more CPU than the
capacity gives up the lowest-priority classes first and says so. A class whose SLA cannot fit
even with every tier at its fastest profiled point is an error naming the smallest SLA that
would fit.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from leanstack.atomic import read_json, write_json
from leanstack.errors import LeanstackError
from leanstack.microservices.app import AppSpec
from leanstack.ursa.callgraph import Visit, class_tree, visits_per_request
from leanstack.ursa.profile import AppProfile

DEFAULT_MARGIN = 0.2
"""Share of each SLA kept free for what budgets do not capture (tails adding, RPC, noise)."""


@dataclass
class TierPlan:
    """One tier's decision: its own-latency budget and the load per core that keeps it."""

    budget_ms: float
    threshold: float  # requests/s per core
    cpu_per_rps: float  # cores per app request/s at that threshold
    curve: list[tuple[float, float]] = field(default_factory=list)  # the profile it came from
    knee: bool = True  # its profile reached the knee (bound or saturation), not just min_cpu

    def latency_at(self, load_per_core: float) -> float:
        """Own latency the profile expects at ``load_per_core``: linear between points, the
        last segment's slope beyond them."""
        if not self.curve:
            return 0.0
        xs = [x for x, _ in self.curve]
        ys = [y for _, y in self.curve]
        if load_per_core > xs[-1] and len(xs) > 1:
            slope = max((ys[-1] - ys[-2]) / max(xs[-1] - xs[-2], 1e-9), 0.0)
            return ys[-1] + slope * (load_per_core - xs[-1])
        return float(np.interp(load_per_core, xs, ys))


@dataclass
class ClassPlan:
    """A class's SLA against the latency its critical path is budgeted."""

    sla_ms: float
    priority: int
    planned_ms: float
    fastest_ms: float  # critical path with every tier at its fastest profiled point
    met: bool


@dataclass
class Plan:
    """Ursa's plan for one app: budgets and thresholds per tier, what each class gets."""

    app: str
    percentile: str
    margin: float
    tiers: dict[str, TierPlan]
    classes: dict[str, ClassPlan]
    unmet: list[str] = field(default_factory=list)
    cpu_per_rps: float = 0.0
    solve_ms: float = 0.0
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        """Write the plan as JSON (temp file + rename)."""
        return write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        tiers = {n: TierPlan(**{**t, "curve": [tuple(p) for p in t.get("curve", [])]})
                 for n, t in d["tiers"].items()}
        return cls(**{**d, "tiers": tiers,
                      "classes": {n: ClassPlan(**c) for n, c in d["classes"].items()}})

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """Read a plan written by :meth:`save`; a wrong file is a one-line error."""
        return read_json(path, cls.from_dict, "Ursa plan", "'leanstack ursa plan --app APP "
                         "--profile PROFILE --out FILE'")


def make_plan(app: AppSpec, profile: AppProfile, margin: float = DEFAULT_MARGIN,
              capacity: float | None = None, rps: float | None = None) -> Plan:
    """Decompose the app's SLAs into per-tier budgets (see the module docstring)."""
    if profile.app != app.name:
        raise LeanstackError(f"the profile is for app '{profile.app}', not '{app.name}' — "
                             f"profile {app.name} first")
    missing = [t for t in app.services if t not in profile.tiers]
    if missing:
        raise LeanstackError(f"the profile has no data for tier(s) {', '.join(missing)} — "
                             "profile every tier (drop --tiers)")
    if not 0 <= margin < 1:
        raise LeanstackError(f"--margin must be in [0, 1), got {margin}")
    if (capacity is None) != (rps is None):
        raise LeanstackError("--capacity and --rps go together: the capacity is checked at "
                             "that load")
    t0 = time.perf_counter()
    model = _Model(app, profile, margin)
    model.check_feasible()
    classes = sorted(app.classes, key=lambda c: (app.classes[c].priority, c))
    kept = list(classes)
    while True:
        choice = model.solve(kept)
        cpu_per_rps = model.cpu_per_rps(choice)
        if capacity is None or cpu_per_rps * rps <= capacity or len(kept) == 1:
            break
        lowest = max(app.classes[c].priority for c in kept)
        if all(app.classes[c].priority == lowest for c in kept):
            break
        kept = [c for c in kept if app.classes[c].priority != lowest]
    unmet = [c for c in classes if c not in kept]
    note = ""
    if unmet:
        note = (f"{', '.join(unmet)} given up: meeting every SLA needs more than {capacity:g} "
                f"cores at {rps:g} req/s; higher-priority classes are planned first")
    if capacity is not None and cpu_per_rps * rps > capacity:
        note += (" — even so the plan needs " if note else "the plan needs ") + (
            f"{cpu_per_rps * rps:.2f} cores at {rps:g} req/s, above the {capacity:g}-core "
            "capacity")
    return Plan(app=app.name, percentile=profile.percentile, margin=margin,
                tiers=model.tier_plans(choice), classes=model.class_plans(choice, kept),
                unmet=unmet, cpu_per_rps=cpu_per_rps,
                solve_ms=(time.perf_counter() - t0) * 1e3, note=note)


class _Model:
    """The MILP's data: candidate points per tier and every class's call tree."""

    def __init__(self, app: AppSpec, profile: AppProfile, margin: float) -> None:
        self.app, self.margin = app, margin
        self.visits = visits_per_request(app)
        self.tiers = list(app.services)
        self.points: dict[str, list[tuple[float, float]]] = {}
        for t in self.tiers:
            xs, ys = profile.tiers[t].curve()
            self.points[t] = [(float(x), float(y)) for x, y in zip(xs, ys, strict=True)
                              if x > 0] or [(1e-9, 0.0)]
        self.trees = {c: class_tree(app, c) for c in app.classes}
        self.knee = {t: profile.tiers[t].stopped in ("bound", "saturated") for t in self.tiers}
        self.fastest = {t: min(y for _, y in pts) for t, pts in self.points.items()}

    def target_ms(self, cls: str) -> float:
        return self.app.classes[cls].sla.ms * (1 - self.margin)

    def check_feasible(self) -> None:
        """Raise when some class cannot fit its SLA even with the fastest budgets."""
        for c in self.app.classes:
            need = path_latency(self.trees[c], self.fastest, self._pipeline(c))
            if need > self.target_ms(c):
                smallest = math.ceil(need / (1 - self.margin) * 10) / 10
                raise LeanstackError(
                    f"class '{c}': SLA {self.app.classes[c].sla.key} {self.app.classes[c].sla.ms:g}"
                    f" ms cannot be met — its critical path needs {need:.2f} ms with every tier at "
                    f"its fastest profiled point (plus the {self.margin:.0%} margin); the smallest "
                    f"SLA that fits is {smallest:g} ms")

    def solve(self, classes: list[str]) -> dict[str, int]:
        """Pick one point per tier; returns tier -> point index."""
        col: dict[tuple, int] = {}

        def var(key: tuple) -> int:
            if key not in col:
                col[key] = len(col)
            return col[key]

        for t in self.tiers:
            for j in range(len(self.points[t])):
                var(("x", t, j))
        rows: list[tuple[dict[int, float], float, float]] = []  # (coefficients, lo, hi)
        for t in self.tiers:
            rows.append(({var(("x", t, j)): 1.0 for j in range(len(self.points[t]))}, 1, 1))
        for c in classes:
            pipeline = self._pipeline(c)
            root = self._node_rows(c, self.trees[c], (0,), pipeline, var, rows)
            rows.append(({root: 1.0}, -np.inf, self.target_ms(c)))
        n = len(col)
        cost = np.zeros(n)
        integrality = np.zeros(n)
        for (kind, *rest), i in col.items():
            if kind == "x":
                t, j = rest
                cost[i] = self.visits[t] / self.points[t][j][0]
                integrality[i] = 1
        a = np.zeros((len(rows), n))
        lo, hi = np.empty(len(rows)), np.empty(len(rows))
        for r, (coef, low, high) in enumerate(rows):
            for i, v in coef.items():
                a[r, i] += v
            lo[r], hi[r] = low, high
        upper = np.where(integrality == 1, 1.0, np.inf)
        res = milp(cost, constraints=LinearConstraint(a, lo, hi), integrality=integrality,
                   bounds=Bounds(np.zeros(n), upper))
        if res.x is None:
            raise LeanstackError(f"the SLA decomposition found no solution ({res.message}) — "
                                 "check the profile covers every tier")
        return {t: max(range(len(self.points[t])), key=lambda j: res.x[col[("x", t, j)]])
                for t in self.tiers}

    def _node_rows(self, cls: str, node: Visit, path: tuple, pipeline: bool, var,
                   rows: list) -> int:
        """Add the rows of one call-tree node; return the column of its latency variable."""
        lat = var(("L", cls, path))
        own = {var(("x", node.tier, j)): y for j, (_, y) in enumerate(self.points[node.tier])}
        coef = {**own, lat: -1.0}
        for g, group in enumerate(node.groups):
            m = var(("M", cls, path, g))
            coef[m] = coef.get(m, 0.0) + 1.0
            for k, child in enumerate(group):
                ch = self._node_rows(cls, child, (*path, g, k), pipeline, var, rows)
                rows.append(({ch: 1.0, m: -1.0}, -np.inf, 0.0))
        rows.append((coef, -np.inf, 0.0))  # own + sum of group maxima <= L
        if not (pipeline and node.queued):
            return lat
        total, q = var(("P", cls, path)), var(("Q", cls, path))
        rows.append(({lat: 1.0, q: 1.0, total: -1.0}, -np.inf, 0.0))
        for k, child in enumerate(node.queued):
            ch = self._node_rows(cls, child, (*path, "q", k), pipeline, var, rows)
            rows.append(({ch: 1.0, q: -1.0}, -np.inf, 0.0))
        return total

    def _pipeline(self, cls: str) -> bool:
        return self.app.classes[cls].wait == "pipeline"

    def cpu_per_rps(self, choice: dict[str, int]) -> float:
        return sum(self.visits[t] / self.points[t][j][0] for t, j in choice.items())

    def tier_plans(self, choice: dict[str, int]) -> dict[str, TierPlan]:
        out = {}
        for t, j in choice.items():
            lpc, lat = self.points[t][j]
            out[t] = TierPlan(budget_ms=lat, threshold=lpc, cpu_per_rps=self.visits[t] / lpc,
                              curve=self.points[t], knee=self.knee[t])
        return out

    def class_plans(self, choice: dict[str, int], kept: list[str]) -> dict[str, ClassPlan]:
        budget = {t: self.points[t][j][1] for t, j in choice.items()}
        out = {}
        for c, spec in self.app.classes.items():
            planned = path_latency(self.trees[c], budget, self._pipeline(c))
            out[c] = ClassPlan(sla_ms=spec.sla.ms, priority=spec.priority, planned_ms=planned,
                               fastest_ms=path_latency(self.trees[c], self.fastest,
                                                       self._pipeline(c)),
                               met=c in kept and planned <= self.target_ms(c) + 1e-6)
        return out


def path_latency(node: Visit, own_ms: dict[str, float], pipeline: bool) -> float:
    """A call tree's latency when each tier takes ``own_ms`` (sum of groups' slowest calls)."""
    lat = own_ms[node.tier] + sum(max(path_latency(c, own_ms, pipeline) for c in group)
                                  for group in node.groups)
    if pipeline and node.queued:
        lat += max(path_latency(c, own_ms, pipeline) for c in node.queued)
    return lat
