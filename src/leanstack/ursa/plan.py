"""SLA decomposition: per-tier latency budgets that fit every class's SLA at the least CPU.

Each tier picks one point of its profile — a latency budget and the load per core that keeps the
tier's own tail latency within it. The objective is total CPU per unit of app load:
``sum_tier visits_per_request / load_per_core``. It is a mixed-integer program (one binary per
tier and profile point, one continuous latency per call-tree node), solved with
``scipy.optimize.milp``: along every class's call tree the budgets add (own budget plus, per call
group, the slowest call; a pipeline class also waits for its slowest queued branch) and the root
must fit a per-class *path target*.

Composition (``compose="convolve"``, the default): tail latencies do not add — a request rarely
meets every tier's p99 at once — so the class's end-to-end percentile is predicted by composing
the chosen points' own-latency distributions along the tree (:mod:`ursa.compose`), anchored at
the one allocation whose end-to-end tail was measured (the generous one, while profiling: the
prediction is shifted by measured - composed there, which absorbs what independence and
per-step worst-case tails get wrong at the base). Each class's path target is rescaled until
that prediction fits the SLA less the margin at the least CPU (the cheapest plan whose every
class fits is kept). ``compose="sum"`` keeps the path target at the SLA less the margin: budgets
simply add, which is safe but pessimistic by a wide factor on deep paths.

Priorities: given a capacity (cores) and a planning load, a plan that would need more CPU than the
capacity gives up the lowest-priority classes first and says so. A class whose SLA cannot fit
even with every tier at its fastest profiled point is an error naming the smallest SLA that
would fit; one whose fastest path fits the SLA but not the SLA less the margin keeps only the
margin that is left, and one the generous allocation met while profiling (the profile's
``generous_ms``) is planned at its fastest points (the note says so): an SLA the static
allocation demonstrably meets is never refused.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field
from scipy.optimize import Bounds, LinearConstraint, milp

from leanstack.atomic import read_json, write_json
from leanstack.errors import LeanstackError
from leanstack.microservices.app import AppSpec
from leanstack.schema import FileModel, NonNegative, PercentileKey, Positive, check
from leanstack.ursa.callgraph import Visit, class_tree, visits_per_request
from leanstack.ursa.compose import LatencyDist, TreeSample
from leanstack.ursa.profile import AppProfile

DEFAULT_MARGIN = 0.2
"""Share of each SLA kept free for what the profile does not capture (RPC, noise, drift)."""

COMPOSITIONS = ("convolve", "sum")
COMPOSED = {"convolve": "distributions convolved", "sum": "budgets added"}
ROUNDS = 12  # path-target rescalings per solve (each one MILP)
TAIL_REQUESTS = 1000  # requests of a tier per profiled interval before its p99.9 is used


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
    planned_ms: float  # end-to-end percentile predicted for the plan (composed)
    fastest_ms: float  # the same with every tier at its fastest profiled point
    met: bool
    summed_ms: float = 0.0  # the plan's budgets added along the critical path
    anchor: float = 0.0  # measured - composed end-to-end tail (ms) at the generous allocation


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
    composition: str = "convolve"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        """Write the plan as JSON (temp file + rename)."""
        return write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "plan") -> Plan:
        """A plan from its JSON form, checked against :class:`PlanFile`."""
        check(PlanFile, d, source, "make one with 'leanstack ursa plan'")
        tiers = {n: TierPlan(**{**t, "curve": [tuple(p) for p in t.get("curve", [])]})
                 for n, t in d["tiers"].items()}
        return cls(**{**d, "tiers": tiers,
                      "classes": {n: ClassPlan(**c) for n, c in d["classes"].items()}})

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """Read a plan written by :meth:`save`; a wrong file is a one-line error."""
        return read_json(path, lambda d: cls.from_dict(d, str(path)), "Ursa plan",
                         "'leanstack ursa plan --app APP --profile PROFILE --out FILE'")


class TierPlanFile(FileModel):
    budget_ms: NonNegative
    threshold: Positive  # the controller divides by it
    cpu_per_rps: NonNegative
    curve: list[tuple[Positive, NonNegative]] = []
    knee: bool = True


class ClassPlanFile(FileModel):
    sla_ms: Positive
    priority: Annotated[int, Field(ge=1)]
    planned_ms: NonNegative
    fastest_ms: NonNegative
    met: bool
    summed_ms: NonNegative = 0.0
    anchor: float = 0.0


class PlanFile(FileModel):
    """The schema of a plan file (:meth:`Plan.save`)."""

    app: str
    percentile: PercentileKey
    margin: Annotated[float, Field(ge=0, lt=1)]
    tiers: dict[str, TierPlanFile]
    classes: dict[str, ClassPlanFile]
    unmet: list[str] = []
    cpu_per_rps: NonNegative = 0.0
    solve_ms: NonNegative = 0.0
    note: str = ""
    composition: Literal["convolve", "sum"] = "convolve"


def make_plan(app: AppSpec, profile: AppProfile, margin: float = DEFAULT_MARGIN,
              capacity: float | None = None, rps: float | None = None,
              compose: str = "convolve") -> Plan:
    """Decompose the app's SLAs into per-tier budgets (see the module docstring)."""
    if compose not in COMPOSITIONS:
        raise LeanstackError(f"unknown composition '{compose}' — use one of "
                             f"{', '.join(COMPOSITIONS)}")
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
    for flag, value in (("--capacity", capacity), ("--rps", rps)):
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise LeanstackError(f"{flag} must be a number above 0, got {value}")
    t0 = time.perf_counter()
    model = _Model(app, profile, margin, compose)
    squeezed = model.check_feasible()
    classes = sorted(app.classes, key=lambda c: (app.classes[c].priority, c))
    kept = list(classes)
    while True:
        choice = model.solve_composed(kept)
        cpu_per_rps = model.cpu_per_rps(choice)
        if capacity is None or cpu_per_rps * rps <= capacity or len(kept) == 1:
            break
        lowest = max(app.classes[c].priority for c in kept)
        if all(app.classes[c].priority == lowest for c in kept):
            break
        kept = [c for c in kept if app.classes[c].priority != lowest]
    unmet = [c for c in classes if c not in kept]
    notes = [f"class '{c}' keeps only a {m:.0%} margin: with every tier at its fastest profiled "
             f"point its path already needs {model.fastest_ms(c):.1f} ms"
             + (f" (the generous allocation measured {model.generous[c]:.1f} ms)"
                if model.generous[c] is not None else "")
             for c, m in squeezed.items()]
    if unmet:
        notes.append(f"{', '.join(unmet)} given up: meeting every SLA needs more than "
                     f"{capacity:g} cores at {rps:g} req/s; higher-priority classes are "
                     "planned first")
    note = "; ".join(notes)
    if capacity is not None and cpu_per_rps * rps > capacity:
        note += (" — even so the plan needs " if note else "the plan needs ") + (
            f"{cpu_per_rps * rps:.2f} cores at {rps:g} req/s, above the {capacity:g}-core "
            "capacity")
    return Plan(app=app.name, percentile=profile.percentile, margin=margin,
                tiers=model.tier_plans(choice), classes=model.class_plans(choice, kept),
                unmet=unmet, cpu_per_rps=cpu_per_rps,
                solve_ms=(time.perf_counter() - t0) * 1e3, note=note, composition=compose)


class _Model:
    """The MILP's data: candidate points per tier and every class's call tree."""

    def __init__(self, app: AppSpec, profile: AppProfile, margin: float, compose: str) -> None:
        self.app, self.margin, self.compose = app, margin, compose
        self.visits = visits_per_request(app)
        self.tiers = list(app.services)
        self.points: dict[str, list[tuple[float, float]]] = {}
        self.dists: dict[str, list[LatencyDist]] = {}
        for t in self.tiers:
            xs, ys = profile.tiers[t].curve()
            tails = profile.tiers[t].tail_curve()
            keep = [j for j, x in enumerate(xs) if x > 0]
            # a tier the profile saw no load on (a rare class's): planned as handling its
            # expected share of the profiled load at its min_cpu, and scaled with load from there
            idle_point = (max(profile.rps * self.visits[t] / app.services[t].min_cpu, 1e-9), 0.0)
            self.points[t] = [(float(xs[j]), float(ys[j])) for j in keep] or [idle_point]
            # an interval's p99.9 says something only with ~1000 requests of the tier in it
            seen = profile.rps * self.visits[t] * profile.settings.get("interval_s", 1.0)
            top = 99.9 if seen >= TAIL_REQUESTS else 99.0
            self.dists[t] = [LatencyDist.from_tails(tails[j], float(ys[j]), top)
                             for j in keep] or [LatencyDist.from_tails({}, 0.0)]
        self.trees = {c: class_tree(app, c) for c in app.classes}
        # one sample of call paths per class, drawn once for every round of the solve
        self.samples = {c: TreeSample(tree, self._pipeline(c)) for c, tree in self.trees.items()}
        self.knee = {t: profile.tiers[t].stopped in ("bound", "saturated") for t in self.tiers}
        self.fastest_choice = {t: 0 for t in self.tiers}  # curves rise with load per core
        self.fastest = {t: pts[0][1] for t, pts in self.points.items()}
        self.targets = {c: spec.sla.ms * (1 - margin) for c, spec in app.classes.items()}
        self.generous = {c: profile.generous_ms.get(c, {}).get(spec.sla.key)
                         for c, spec in app.classes.items()}
        self.anchor = dict.fromkeys(app.classes, 0.0)
        if compose == "convolve":  # anchor each class at the one allocation measured end to end
            for c, measured in self.generous.items():
                if measured:
                    self.anchor[c] = measured - self.predicted_ms(c, self.fastest_choice)

    def predicted_ms(self, cls: str, choice: dict[str, int]) -> float:
        """The class's end-to-end SLA percentile with each tier at its chosen point."""
        tree, pipeline = self.trees[cls], self._pipeline(cls)
        if self.compose == "sum":
            return path_latency(tree, {t: self.points[t][j][1] for t, j in choice.items()},
                                pipeline)
        dists = {t: self.dists[t][j] for t, j in choice.items()}
        return self.anchor[cls] + self.samples[cls].quantile(
            dists, self.app.classes[cls].sla.percentile / 100)

    def fastest_ms(self, cls: str) -> float:
        return self.predicted_ms(cls, self.fastest_choice)

    def check_feasible(self) -> dict[str, float]:
        """Raise when some class cannot fit its SLA even with the fastest points, unless the
        profile measured the generous allocation meeting it; return the classes that fit
        only with less margin (class -> the margin left), their targets raised to match."""
        squeezed = {}
        for c, spec in self.app.classes.items():
            need = self.fastest_ms(c)
            measured = self.generous[c]
            if need > spec.sla.ms and measured is not None and measured <= spec.sla.ms:
                self.targets[c] = need  # demonstrably met: plan its fastest points
                squeezed[c] = 0.0
            elif need > spec.sla.ms:
                smallest = math.ceil(min(need, measured or need) * 10) / 10
                raise LeanstackError(
                    f"class '{c}': SLA {spec.sla.key} {spec.sla.ms:g} ms cannot be met — with "
                    f"every tier at its fastest profiled point its path needs {need:.2f} ms "
                    f"({COMPOSED[self.compose]} along the call tree); the smallest SLA that "
                    f"fits is {smallest:g} ms")
            if need > self.targets[c]:
                self.targets[c] = need
                squeezed[c] = 1 - need / spec.sla.ms
        return squeezed

    def solve_composed(self, classes: list[str]) -> dict[str, int]:
        """The cheapest choice whose predicted percentiles fit every class's target.

        With budgets added (``sum``) one MILP does it. Otherwise each class's path target for
        the MILP is rescaled by target / predicted for up to ``ROUNDS`` rounds (never below its
        fastest path) and the cheapest choice that fits is kept. Should none fit, the tiers on
        the paths of the classes that never fitted are held at their fastest points (which
        fit: checked before) and the rounds run again for the rest."""
        if self.compose == "sum":
            return self.solve(classes, self.targets)
        best, misfits = self._rescale(classes, set())
        if best is None:
            held = {t for c in misfits for t in self.trees[c].tiers()}
            best, _ = self._rescale(classes, held)
        if best is None:  # every path at its fastest points fits (checked before)
            held = {t for c in classes for t in self.trees[c].tiers()}
            return self.solve(classes, {c: math.inf for c in classes}, held)
        return best

    def _rescale(self, classes: list[str], held: set[str]) -> tuple[dict[str, int] | None,
                                                                    set[str]]:
        """The rounds of :meth:`solve_composed` with ``held`` tiers at their fastest points;
        the cheapest fitting choice (or ``None``) and the classes that never fitted."""
        surrogate_floor = {c: path_latency(self.trees[c], self.fastest, self._pipeline(c))
                           for c in classes}
        limits = {c: max(self.targets[c], surrogate_floor[c]) for c in classes}
        best: tuple[float, dict[str, int]] | None = None
        fitted: set[str] = set()
        for _ in range(ROUNDS):
            choice = self.solve(classes, limits, held)
            pred = {c: self.predicted_ms(c, choice) for c in classes}
            fits = {c for c in classes if pred[c] <= self.targets[c] + 1e-9}
            fitted |= fits
            cost = self.cpu_per_rps(choice)
            if len(fits) == len(classes) and (best is None or cost < best[0] - 1e-12):
                best = (cost, choice)
            new = {c: max(surrogate_floor[c],
                          limits[c] * (self.targets[c] / max(pred[c], 1e-9)) ** 0.8)
                   for c in classes}
            if all(abs(new[c] - limits[c]) <= 1e-3 * limits[c] for c in classes):
                break
            limits = new
        return (best[1] if best else None), set(classes) - fitted

    def solve(self, classes: list[str], limits: dict[str, float],
              held: set[str] | frozenset[str] = frozenset()) -> dict[str, int]:
        """Pick one point per tier so that every class's added budgets fit ``limits`` (``held``
        tiers at their fastest point); returns tier -> point index."""
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
            rows.append(({root: 1.0}, -np.inf, limits[c] * (1 + 1e-9)))
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
        lower = np.zeros(n)
        for t in held:
            lower[col[("x", t, 0)]] = 1.0
        res = milp(cost, constraints=LinearConstraint(a, lo, hi), integrality=integrality,
                   bounds=Bounds(lower, upper))
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
            planned = self.predicted_ms(c, choice)
            out[c] = ClassPlan(sla_ms=spec.sla.ms, priority=spec.priority, planned_ms=planned,
                               fastest_ms=self.fastest_ms(c),
                               met=c in kept and planned <= self.targets[c] + 1e-6,
                               summed_ms=path_latency(self.trees[c], budget, self._pipeline(c)),
                               anchor=self.anchor[c])
        return out


def path_latency(node: Visit, own_ms: dict[str, float], pipeline: bool) -> float:
    """A call tree's latency when each tier takes ``own_ms`` (sum of groups' slowest calls)."""
    lat = own_ms[node.tier] + sum(max(path_latency(c, own_ms, pipeline) for c in group)
                                  for group in node.groups)
    if pipeline and node.queued:
        lat += max(path_latency(c, own_ms, pipeline) for c in node.queued)
    return lat
