"""Per-tier exploration: how a tier's own tail latency grows with its load per core.

One deployment, one steady load. Every tier but the one explored keeps a generous allocation;
the explored tier's CPU steps down geometrically (its load per core steps up) until its own tail
latency passes its exploration bound, its CPU reaches its ``min_cpu`` (no controller goes lower),
or it stops keeping up with its load. Each step yields one profile point ``(load per core, own
tail latency)``, the load being what it served (its expected share of the steady load in a step
too short to count a low-rate tier's requests, while it keeps up); once the bound is
passed, the knee between the last two steps is bisected twice more. While a tier is squeezed,
the other tiers' own latencies are watched: a caller whose own latency rises with it is not
*backpressure-free* (it queues behind a slow callee), which breaks the assumption that a tier's
latency depends only on its own load per core; the profile records it.

Each point also keeps the step's worst own-latency percentiles (p50 ... p99.9), which the plan
composes along call paths, and the first point of every tier is the generous allocation itself;
the classes' end-to-end percentiles seen there (``generous_ms``) are what a static allocation
demonstrably delivers.

Faster collection: ``parallel`` explores tiers that do not call one another (directly or not)
in the same steps — one tier's squeeze cannot change another's own latency — and ``early_stop``
ends a step after its first interval once every squeezed tier's tail is clearly inside or
outside its bound. :meth:`ProfileSettings.fast` combines both.

Fewer measured points: with ``shape`` on a backend other than the simulator, the app is first
explored on the simulator (a few seconds), then each tier is measured only at its generous
allocation and at one to three steps starting at the knee the simulator's curve predicts, or at
the tier's floor where the simulated tier never left its bound (inside there: done): a step
inside the bound moves down at least to where the fast profile would start (a tier the simulator
overrates still reaches its real knee), one outside moves up, and a bracketed knee is bisected. The
simulator's curve is carried over with two scales fitted on the real tier: its load-per-core
axis by the ratio of CPU per request (simulated / measured, at the generous allocation) and its
latency axis by the ratio of measured to simulated latency, interpolated at each carried-over
point's load between the generous point and the measured steps inside the bound (past the knee a
tail is a cliff, not a scale). The profile keeps every measured point and adds the scaled
simulator points below the first measured step (its tails scaled the same way). All tiers
share one generous step at the start, measured in full, and one more ends the exploration (the
classes' ``generous_ms``).

The wall time of the whole exploration is ``collection_wall_s`` — Ursa's data-collection cost.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from leanstack.atomic import read_json, write_json
from leanstack.errors import LeanstackError
from leanstack.microservices.app import AppSpec
from leanstack.microservices.backend import Backend
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.observation import Allocation, Observation
from leanstack.schema import FileModel, NonNegative, PercentileKey, Positive, check
from leanstack.ursa.callgraph import callers, classes_through, visits_per_request

CPU_FLOOR = 0.01
"""The smallest CPU quota explored (1 ms per 100 ms CFS period); a tier's ``min_cpu`` if higher."""


CLEAR = 3.0
"""A step's tail is clearly inside its bound below bound / CLEAR, clearly outside above
bound * CLEAR (early stop)."""

KEEP_UP_MIN_REQUESTS = 20
"""A step judges whether a tier keeps up with its load only if it expected this many requests:
the chance that a Poisson count with mean 20 comes in under half of it is about 0.5%."""

COUNT_MIN_REQUESTS = 100
"""Below this many expected requests in a step, a point's load is the tier's expected share of
the profiling load (a Poisson count is off by a tenth or more), not what it served."""


@dataclass
class TierProfile:
    """One tier's exploration: points sorted by load per core, and what was seen on the way."""

    tier: str
    points: list[tuple[float, float]]  # (requests/s per core, own latency ms at the percentile)
    bound_ms: float
    stopped: str  # "bound" | "floor" | "saturated" | "idle"
    backpressure_free: bool = True
    slowed_by: list[str] = field(default_factory=list)  # callees whose squeeze slowed this tier
    tails: list[dict[str, float]] = field(default_factory=list)  # own percentiles per point

    def curve(self) -> tuple[np.ndarray, np.ndarray]:
        """Load per core and the running maximum of latency (the tail never improves with load)."""
        xs = np.array([p[0] for p in self.points], dtype=float)
        ys = np.maximum.accumulate(np.array([p[1] for p in self.points], dtype=float))
        return xs, ys

    def tail_curve(self) -> list[dict[str, float]]:
        """Every point's own-latency percentiles, each a running maximum over load like
        :meth:`curve`; empty dicts when the profile recorded none."""
        if len(self.tails) != len(self.points):
            return [{} for _ in self.points]
        out: list[dict[str, float]] = []
        for tails in self.tails:
            prev = out[-1] if out else {}
            out.append({k: max(v, prev.get(k, 0.0)) for k, v in tails.items()})
        return out


@dataclass
class AppProfile:
    """Every tier's profile for one app, with how and at what cost it was collected."""

    app: str
    backend: str
    percentile: str
    rps: float
    tiers: dict[str, TierProfile]
    collection_wall_s: float
    collection_backend_s: float  # seconds of (real or simulated) load spent exploring
    settings: dict[str, Any] = field(default_factory=dict)
    # class -> its end-to-end percentiles at the generous allocation (median over the intervals
    # measured there): what a static allocation demonstrably delivers
    generous_ms: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        """Write the profile as JSON (temp file + rename)."""
        return write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "profile") -> AppProfile:
        """A profile from its JSON form, checked against :class:`ProfileFile`."""
        check(ProfileFile, d, source, "make one with 'leanstack ursa profile'")
        tiers = {n: TierProfile(**{**t, "points": [tuple(p) for p in t["points"]]})
                 for n, t in d["tiers"].items()}
        return cls(**{**d, "tiers": tiers})

    @classmethod
    def load(cls, path: str | Path) -> AppProfile:
        """Read a profile written by :meth:`save`; a wrong file is a one-line error."""
        return read_json(path, lambda d: cls.from_dict(d, str(path)), "Ursa profile",
                         "'leanstack ursa profile --app APP --out FILE'")


class TierProfileFile(FileModel):
    tier: str
    points: Annotated[list[tuple[NonNegative, NonNegative]], Field(min_length=1)]
    bound_ms: NonNegative
    stopped: Literal["bound", "floor", "saturated", "idle"]
    backpressure_free: bool = True
    slowed_by: list[str] = []
    tails: list[dict[PercentileKey, NonNegative]] = []


class ProfileFile(FileModel):
    """The schema of a profile file (:meth:`AppProfile.save`)."""

    app: str
    backend: str
    percentile: PercentileKey
    rps: Positive
    tiers: dict[str, TierProfileFile]
    collection_wall_s: NonNegative
    collection_backend_s: NonNegative
    settings: dict[str, Any] = {}
    generous_ms: dict[str, dict[PercentileKey, NonNegative]] = {}


@dataclass
class ProfileSettings:
    """How the exploration runs; the defaults suit both backends."""

    rps: float = 100.0  # steady app load during exploration
    step_intervals: int = 3  # control intervals measured per step
    settle_intervals: int = 1  # intervals skipped after each CPU change
    shrink: float = 0.75  # CPU multiplier per step
    start_utilization: float = 0.1  # first step's CPU = used / this (capped at max_cpu)
    max_steps: int = 14
    refine_steps: int = 2  # bisections of the knee once the bound is passed
    bound_fraction: float = 0.5  # exploration bound = this * the tightest SLA through the tier
    percentile: str = "p99"
    slowdown_ms: float = 1.0  # a caller's own latency rising by more than this and 50% ...
    tiers: list[str] | None = None  # explore only these tiers (default: all)
    parallel: int = 1  # tiers explored at once (only tiers that do not call one another)
    early_stop: bool = True  # end a step once every tier's tail is clearly in or out of bound
    shape: bool = False  # reuse the simulator's curve shapes; measure only around their knee
    shape_steps: int = 3  # measured steps per tier after the generous one, with ``shape``

    @classmethod
    def fast(cls, rps: float = 100.0, **overrides: Any) -> ProfileSettings:
        """The fast profile: every non-interacting tier squeezed at once, starting at 20%
        utilisation, early stops on (on the simulator's social network: 62 s of load instead
        of 344 s, a plan within a few percent of the one-at-a-time plan's CPU)."""
        return cls(**{"rps": rps, "parallel": 64, "start_utilization": 0.2,
                      "step_intervals": 3, **overrides})


def profile_app(app: AppSpec, backend: Backend, settings: ProfileSettings | None = None,
                progress: bool = True, seed: int = 0) -> AppProfile:
    """Explore every tier of ``app`` on ``backend`` (deployed here, closed at the end)."""
    cfg = settings or ProfileSettings()
    names = cfg.tiers or list(app.services)
    for n in names:
        if n not in app.services:
            raise LeanstackError(f"unknown tier '{n}' — {app.name} has "
                                 f"{', '.join(app.services)}")
    if not (cfg.rps > 0 and math.isfinite(cfg.rps)):
        raise LeanstackError(f"profiling load must be above 0 req/s, got {cfg.rps}")
    if cfg.step_intervals < 1 or cfg.settle_intervals < 0 or not 0 < cfg.shrink < 1:
        raise LeanstackError("profile settings need step_intervals >= 1, settle_intervals >= 0 "
                             f"and 0 < shrink < 1, got {cfg.step_intervals}, "
                             f"{cfg.settle_intervals} and {cfg.shrink}")
    if cfg.parallel < 1 or not 0 < cfg.start_utilization <= 1:
        raise LeanstackError(f"profile settings need parallel >= 1 and 0 < start_utilization "
                             f"<= 1, got {cfg.parallel} and {cfg.start_utilization}")
    generous = Allocation.static_max(app)
    wall0 = time.monotonic()
    shape = None
    if cfg.shape and backend.name != "sim":
        from leanstack.microservices.runner import make_backend

        sim = _Explorer(app, make_backend("sim", backend.interval_s, seed=seed), generous,
                        replace(cfg, shape=False))
        _run(sim, names, seed, progress)
        shape = {n: (sim.tiers[n], sim.cost[n]) for n in names if n in sim.cost}
    explorer = _Explorer(app, backend, generous, cfg, shape)
    _run(explorer, names, seed, progress)
    tiers = explorer.finish()
    return AppProfile(app=app.name, backend=backend.name, percentile=cfg.percentile, rps=cfg.rps,
                      tiers=tiers, collection_wall_s=time.monotonic() - wall0,
                      collection_backend_s=explorer.observed_s,
                      settings={**asdict(cfg), "interval_s": backend.interval_s},
                      generous_ms=explorer.generous_ms())


def _run(explorer: _Explorer, names: list[str], seed: int, progress: bool) -> None:
    """Deploy at the generous allocation, explore every batch under steady load, close."""
    cfg, backend = explorer.cfg, explorer.backend
    batches = explorer.batches(names)
    per_step = cfg.step_intervals + cfg.settle_intervals
    budget_s = ((len(batches) * (cfg.max_steps + cfg.refine_steps + 1) + 2) * per_step
                * backend.interval_s)
    backend.deploy(explorer.app, explorer.generous)
    try:
        backend.start(LoadSpec("poisson", cfg.rps, budget_s, seed=seed))
        with _progress(progress) as bar:
            task = bar.add_task(f"profiling {explorer.app.name} on {backend.name}",
                                total=len(names))
            for batch in batches:
                explorer.explore(batch)
                bar.update(task, advance=len(batch))
            if explorer.shape:  # the shared generous step came first, before the warm-up ended
                explorer.generous_step()
    finally:
        backend.close()


class _Explorer:
    """Steps tiers down in CPU, a batch of non-interacting tiers at a time, and records what it
    sees. Each tier's exploration is a generator: it yields the CPU it wants measured next and
    receives that step's observations, so a batch's tiers share every step. With ``shape``
    (tier -> simulated profile and CPU seconds per request) a tier is measured only around
    the knee of its simulated curve, and the first generous step is every batch's base."""

    def __init__(self, app: AppSpec, backend: Backend, generous: Allocation,
                 cfg: ProfileSettings,
                 shape: dict[str, tuple[TierProfile, float]] | None = None) -> None:
        self.app, self.backend, self.generous, self.cfg = app, backend, generous, cfg
        self.shape = shape or {}
        self.cost: dict[str, float] = {}  # CPU seconds per request at the generous allocation
        self.visits = visits_per_request(app)
        self.through = classes_through(app)
        self.callers = callers(app)
        self.observed_s = 0.0
        self.steps = 0
        self.tiers: dict[str, TierProfile] = {}
        self.slowed: dict[str, list[str]] = {t: [] for t in app.services}
        self.generous_obs: list[Observation] = []  # every interval at the generous allocation
        self.bounds = {t: cfg.bound_fraction * min(
            (app.classes[c].sla.ms for c in self.through[t]), default=1000.0)
            for t in app.services}

    def batches(self, names: list[str]) -> list[list[str]]:
        """Tiers grouped so that no tier of a group calls another (directly or not), at most
        ``parallel`` per group: squeezing one cannot change another's own latency."""
        groups: list[list[str]] = []
        for n in names:
            for g in groups:
                if len(g) < self.cfg.parallel and not any(
                        n in self.callers[m] or m in self.callers[n] for m in g):
                    g.append(n)
                    break
            else:
                groups.append([n])
        return groups

    def explore(self, names: list[str]) -> None:
        """Explore ``names`` together, one shared step at a time, until each is done."""
        runs = {n: self._tier_steps(n) for n in names}
        want = {n: next(g) for n, g in runs.items()}
        while want:
            generous = all(cpu == self.generous.tiers[n].cpu for n, cpu in want.items())
            if generous and self.shape and self.generous_obs:  # one generous step serves all
                obs = self.generous_obs
            else:
                alloc = self.generous
                for n, cpu in want.items():
                    alloc = alloc.with_tier(n, cpu=round(cpu, 4))
                self.backend.set_allocation(alloc)
                # with shape, this is the base of every batch: measured in full
                obs = self._full_step() if generous and self.shape else self._step(list(want))
                if generous:
                    self.generous_obs += obs
            nxt = {}
            for n in want:
                with contextlib.suppress(StopIteration):  # that tier is done
                    nxt[n] = runs[n].send(obs)
            want = nxt

    def _tier_steps(self, name: str) -> Generator[float, list[Observation], None]:
        cfg = self.cfg
        bound = self.bounds[name]
        cpu_max = self.generous.tiers[name].cpu
        base = yield cpu_max
        floor = min(max(CPU_FLOOR, self.app.services[name].min_cpu), cpu_max)  # no controller
        used = float(np.mean([o.tiers[name].cpu_used for o in base]))  # goes below min_cpu
        cpu = min(cpu_max, max(used / cfg.start_utilization, floor))
        points: list[tuple[float, float]] = []
        tails: list[dict[str, float]] = []
        first, tail = self._point(name, cpu_max, base)  # the generous allocation is a point too
        if first is not None:
            points.append(first)
            tails.append(tail)
            if used > 0:
                self.cost[name] = used / (first[0] * cpu_max)
        if first is not None and name in self.cost and name in self.shape:
            yield from self._shaped_steps(name, base, first, tail, cpu)
            return
        stopped, last, good = "floor", base, None
        expected = cfg.rps * self.visits[name]
        for _ in range(cfg.max_steps):
            step = yield from self._measure_at(name, cpu, points, tails)
            if step is None:
                stopped = "idle"
                break
            point, last = step
            if point[1] > bound:
                stopped = "bound"
                break
            if self._falls_behind(expected, point[0] * cpu, last):
                stopped = "saturated"
                break
            if cpu <= floor:
                break
            good, cpu = cpu, max(cpu * cfg.shrink, floor)
        if stopped == "bound" and good is not None:  # bisect the knee between good and cpu
            bad = cpu
            for _ in range(cfg.refine_steps):
                mid = (good * bad) ** 0.5
                step = yield from self._measure_at(name, mid, points, tails)
                if step is None:
                    break
                good, bad = (mid, bad) if step[0][1] <= bound else (good, mid)
        self._watch_callers(name, base, last)
        order = sorted(range(len(points)), key=lambda i: points[i])
        self.tiers[name] = TierProfile(name, [points[i] for i in order] or [(0.0, 0.0)], bound,
                                       stopped, tails=[tails[i] for i in order] or [{}])

    def _shaped_steps(self, name: str, base: list[Observation], first: tuple[float, float],
                      first_tail: dict[str, float], fast_start: float) -> Generator[
            float, list[Observation], None]:
        """Measure ``name`` around the knee its simulated curve predicts (see the module
        docstring); record the measured points and the scaled simulated ones. A tier whose
        simulated curve stays inside the bound is measured at its floor first (inside there:
        done). A tier with a simulated knee starts there; a step inside the bound with none
        outside yet is followed by one at most at ``fast_start`` (where the fast profile would
        start) and 0.75 of its CPU, so a tier the simulator thinks costlier than it is still
        reaches its real knee without a jump to the floor, whose backlog would spill into the
        next step; one outside moves up; once a step inside and one outside bracket the knee,
        the next bisects them."""
        cfg, bound = self.cfg, self.bounds[name]
        cpu_max = self.generous.tiers[name].cpu
        floor = min(max(CPU_FLOOR, self.app.services[name].min_cpu), cpu_max)
        sim, sim_cost = self.shape[name]
        xs, ys = sim.curve()
        sx = float(sim_cost / self.cost[name])  # real load per core at the same utilisation
        sy = float(first[1] / ys[0]) if ys[0] > 0 else 1.0
        within = [j for j in range(len(xs)) if sy * ys[j] <= bound]
        knee_x = xs[within[-1] if within else 0] * sx
        expected = cfg.rps * self.visits[name]
        cpu = float(min(cpu_max, max(expected / knee_x if knee_x > 0 else cpu_max, floor)))
        if sim.stopped != "bound":  # the simulated tier stayed inside its bound down to the
            cpu = floor  # floor: measure the floor first
        measured: list[tuple[float, float]] = []
        points, tails = [first], [first_tail]
        stopped, last = "floor", base
        inside, outside = math.inf, 0.0  # least CPU measured inside the bound, most outside
        for _ in range(cfg.shape_steps):
            step = yield from self._measure_at(name, cpu, points, tails)
            if step is None:
                stopped = "idle"
                break
            point, last = step
            measured.append(point)
            if point[1] > bound:
                outside = max(outside, cpu)
            elif self._falls_behind(expected, point[0] * cpu, last):
                stopped = "saturated"
                break
            else:
                inside = min(inside, cpu)
                if cpu <= floor:  # inside the bound at the least CPU any controller gives
                    break
            if outside and inside < math.inf:  # bracketed: bisect, unless already one step wide
                if inside * cfg.shrink <= outside:
                    break
                nxt = (inside * outside) ** 0.5
            elif outside:
                nxt = min(cpu / cfg.shrink, cpu_max)
            else:  # inside, none outside yet: step down, at least to the fast start
                nxt = max(min(cpu * cfg.shrink, fast_start), floor)
            if nxt == cpu:
                break
            cpu = nxt
        if stopped == "floor" and outside:
            stopped = "bound"
        # the latency scale, measured / simulated, at the generous point and at each step inside
        # the bound (past the knee a tail is a cliff, and its ratio says nothing about the curve
        # below it); a carried-over point takes the scale interpolated between them at its load
        anchors = sorted([(first[0], sy)] + [
            (x, y / s) for x, y in measured
            if y <= bound and (s := float(np.interp(x / sx, xs, ys))) > 0])
        at_x, ratio = [a[0] for a in anchors], [a[1] for a in anchors]
        below = min((p[0] for p in measured), default=math.inf)
        for (x, _), sim_tail in zip(sim.points, sim.tails, strict=False):
            if first[0] < x * sx < below and sim_tail:
                r = float(np.interp(x * sx, at_x, ratio))
                points.append((float(x * sx), float(np.interp(x, xs, ys)) * r))
                tails.append({k: v * r for k, v in sim_tail.items()})
        self._watch_callers(name, base, last)
        order = sorted(range(len(points)), key=lambda i: points[i])
        self.tiers[name] = TierProfile(name, [points[i] for i in order], bound, stopped,
                                       tails=[tails[i] for i in order])

    def generous_ms(self) -> dict[str, dict[str, float]]:
        """Each class's end-to-end percentiles at the generous allocation (interval median)."""
        out = {}
        for c in self.app.classes:
            seen = [o.classes[c].latency_ms for o in self.generous_obs
                    if c in o.classes and o.classes[c].completed > 0]
            if seen:
                out[c] = {k: float(np.median([s[k] for s in seen if k in s])) for k in seen[0]}
        return out

    def finish(self) -> dict[str, TierProfile]:
        for name, prof in self.tiers.items():
            prof.slowed_by = sorted(self.slowed[name])
            prof.backpressure_free = not prof.slowed_by
        return self.tiers

    def _measure_at(self, name: str, cpu: float, points: list[tuple[float, float]],
                    tails: list[dict[str, float]]) -> Generator[
            float, list[Observation], tuple[tuple[float, float], list[Observation]] | None]:
        """Ask for ``cpu`` cores for ``name``, add the point measured there to ``points`` and its
        tail to ``tails``, and return the point with the step's observations; ``None`` when the
        tier served nothing in that step."""
        obs = yield cpu
        point, tail = self._point(name, cpu, obs)
        if point is None:
            return None
        points.append(point)
        tails.append(tail)
        return point, obs

    def _falls_behind(self, expected: float, served: float, obs: list[Observation]) -> bool:
        """Whether a tier served under half the ``expected`` req/s (``served``) in a step that
        expected at least ``KEEP_UP_MIN_REQUESTS`` (fewer, and chance alone could halve the
        count)."""
        seconds = sum(o.interval_s for o in obs)
        return expected * seconds >= KEEP_UP_MIN_REQUESTS and served < 0.5 * expected

    def _point(self, name: str, cpu: float, obs: list[Observation]) -> tuple[
            tuple[float, float] | None, dict[str, float]]:
        """A step's point ``(req/s per core, worst own p99)`` and the worst of each own-latency
        percentile over the step. The load is what the tier served, except in a step expected to
        bring it fewer than ``COUNT_MIN_REQUESTS`` while it keeps up: there the count is off by
        a tenth or more by chance (a 5 req/s tier serves 2 or 8 in a second), the plan's CPU
        would follow it, and the tier's expected share of the profiling load is used."""
        served = float(np.mean([o.tiers[name].rps for o in obs]))
        if served <= 0:
            return None, {}
        expected = self.cfg.rps * self.visits[name]
        few = expected * sum(o.interval_s for o in obs) < COUNT_MIN_REQUESTS
        rate = expected if few and not self._falls_behind(expected, served, obs) else served
        tail = {k: max(o.tiers[name].own_latency_ms.get(k, 0.0) for o in obs)
                for k in obs[0].tiers[name].own_latency_ms}
        return (rate / cpu, tail.get(self.cfg.percentile, 0.0)), tail

    def generous_step(self) -> None:
        """One more step at the generous allocation, measured in full (for ``generous_ms``)."""
        self.backend.set_allocation(self.generous)
        self.generous_obs += self._full_step()

    def _full_step(self) -> list[Observation]:
        """A step of ``step_intervals`` measured intervals, never ended early."""
        early, self.cfg = self.cfg, replace(self.cfg, early_stop=False)
        try:
            return self._step([])
        finally:
            self.cfg = early

    def _step(self, names: list[str]) -> list[Observation]:
        """Settle, then measure up to ``step_intervals`` intervals; with ``early_stop``, stop
        once every tier's worst own tail so far is clearly inside (below a third) or outside
        (above three times) its bound."""
        for _ in range(self.cfg.settle_intervals):
            self.backend.observe()
        obs: list[Observation] = []
        key = self.cfg.percentile
        while len(obs) < self.cfg.step_intervals:
            obs.append(self.backend.observe())
            if self.cfg.early_stop and all(
                    not self.bounds[n] / CLEAR <= max(o.tiers[n].own_latency_ms.get(key, 0.0)
                                                      for o in obs) <= CLEAR * self.bounds[n]
                    for n in names):
                break
        self.observed_s += (len(obs) + self.cfg.settle_intervals) * self.backend.interval_s
        self.steps += 1
        return obs

    def _watch_callers(self, name: str, base: list[Observation],
                       last: list[Observation]) -> None:
        """Mark callers of ``name`` whose worst own latency rose while ``name`` was squeezed
        (the same worst-of-step measure the profile points use)."""
        key = self.cfg.percentile
        for caller in self.callers[name]:
            before = max(o.tiers[caller].own_latency_ms.get(key, 0.0) for o in base)
            after = max(o.tiers[caller].own_latency_ms.get(key, 0.0) for o in last)
            if after > before * 1.5 and after - before > self.cfg.slowdown_ms:
                self.slowed[caller].append(name)


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), disable=not enabled, transient=False)

