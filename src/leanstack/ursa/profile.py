"""Per-tier exploration: how a tier's own tail latency grows with its load per core.

One deployment, one steady load. Every tier but the one explored keeps a generous allocation;
the explored tier's CPU steps down geometrically (its load per core steps up) until its own tail
latency passes its exploration bound, its CPU reaches its ``min_cpu`` (no controller goes lower),
or it stops keeping up with its load. Each step yields one profile point ``(load per core, own
tail latency)``; once the bound is passed, the knee between the last two steps is bisected
twice more. While a tier is squeezed, the other tiers' own latencies are watched: a caller
whose own latency rises with it is not *backpressure-free* (it queues behind a slow callee),
which breaks the assumption that a tier's latency depends only on its own load per core; the
profile records it.

The wall time of the whole exploration is ``collection_wall_s`` — Ursa's data-collection cost.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from leanstack.atomic import read_json, write_json
from leanstack.errors import LeanstackError
from leanstack.microservices.app import AppSpec
from leanstack.microservices.backend import Backend
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.observation import Allocation, Observation
from leanstack.ursa.callgraph import callers, classes_through, visits_per_request

CPU_FLOOR = 0.01
"""The smallest CPU quota explored (1 ms per 100 ms CFS period); a tier's ``min_cpu`` if higher."""


@dataclass
class TierProfile:
    """One tier's exploration: points sorted by load per core, and what was seen on the way."""

    tier: str
    points: list[tuple[float, float]]  # (requests/s per core, own latency ms at the percentile)
    bound_ms: float
    stopped: str  # "bound" | "floor" | "saturated" | "idle"
    backpressure_free: bool = True
    slowed_by: list[str] = field(default_factory=list)  # callees whose squeeze slowed this tier

    def curve(self) -> tuple[np.ndarray, np.ndarray]:
        """Load per core and the running maximum of latency (the tail never improves with load)."""
        xs = np.array([p[0] for p in self.points], dtype=float)
        ys = np.maximum.accumulate(np.array([p[1] for p in self.points], dtype=float))
        return xs, ys


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        """Write the profile as JSON (temp file + rename)."""
        return write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AppProfile:
        tiers = {n: TierProfile(**{**t, "points": [tuple(p) for p in t["points"]]})
                 for n, t in d["tiers"].items()}
        return cls(**{**d, "tiers": tiers})

    @classmethod
    def load(cls, path: str | Path) -> AppProfile:
        """Read a profile written by :meth:`save`; a wrong file is a one-line error."""
        return read_json(path, cls.from_dict, "Ursa profile",
                         "'leanstack ursa profile --app APP --out FILE'")


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


def profile_app(app: AppSpec, backend: Backend, settings: ProfileSettings | None = None,
                progress: bool = True, seed: int = 0) -> AppProfile:
    """Explore every tier of ``app`` on ``backend`` (deployed here, closed at the end)."""
    cfg = settings or ProfileSettings()
    names = cfg.tiers or list(app.services)
    for n in names:
        if n not in app.services:
            raise LeanstackError(f"unknown tier '{n}' — {app.name} has "
                                 f"{', '.join(app.services)}")
    if not cfg.rps > 0:
        raise LeanstackError(f"profiling load must be above 0 req/s, got {cfg.rps}")
    generous = Allocation.static_max(app)
    per_step = cfg.step_intervals + cfg.settle_intervals
    budget_s = ((len(names) * (cfg.max_steps + cfg.refine_steps + 1) + 2) * per_step
                * backend.interval_s)
    wall0 = time.monotonic()
    explorer = _Explorer(app, backend, generous, cfg)
    backend.deploy(app, generous)
    try:
        backend.start(LoadSpec("poisson", cfg.rps, budget_s, seed=seed))
        with _progress(progress) as bar:
            task = bar.add_task(f"profiling {app.name} on {backend.name}", total=len(names))
            for name in names:
                explorer.explore(name)
                bar.update(task, advance=1)
    finally:
        backend.close()
    tiers = explorer.finish()
    return AppProfile(app=app.name, backend=backend.name, percentile=cfg.percentile, rps=cfg.rps,
                      tiers=tiers, collection_wall_s=time.monotonic() - wall0,
                      collection_backend_s=explorer.observed_s, settings=asdict(cfg))


class _Explorer:
    """Steps one tier at a time down in CPU and records what it sees."""

    def __init__(self, app: AppSpec, backend: Backend, generous: Allocation,
                 cfg: ProfileSettings) -> None:
        self.app, self.backend, self.generous, self.cfg = app, backend, generous, cfg
        self.visits = visits_per_request(app)
        self.through = classes_through(app)
        self.callers = callers(app)
        self.observed_s = 0.0
        self.tiers: dict[str, TierProfile] = {}
        self.slowed: dict[str, list[str]] = {t: [] for t in app.services}

    def explore(self, name: str) -> None:
        cfg = self.cfg
        bound = cfg.bound_fraction * min(
            (self.app.classes[c].sla.ms for c in self.through[name]), default=1000.0)
        self.backend.set_allocation(self.generous)
        base = self._step()
        cpu_max = self.generous.tiers[name].cpu
        floor = min(max(CPU_FLOOR, self.app.services[name].min_cpu), cpu_max)  # no controller
        used = float(np.mean([o.tiers[name].cpu_used for o in base]))  # goes below min_cpu
        cpu = min(cpu_max, max(used / cfg.start_utilization, floor))
        points: list[tuple[float, float]] = []
        stopped, last, good = "floor", base, None
        expected = cfg.rps * self.visits[name]
        for _ in range(cfg.max_steps):
            point, obs = self._measure(name, cpu)
            if point is None:
                stopped = "idle"
                break
            points.append(point)
            last = obs
            if point[1] > bound:
                stopped = "bound"
                break
            if expected > 0 and point[0] * cpu < 0.5 * expected:  # it no longer keeps up
                stopped = "saturated"
                break
            if cpu <= floor:
                break
            good, cpu = cpu, max(cpu * cfg.shrink, floor)
        if stopped == "bound" and good is not None:  # bisect the knee between good and cpu
            bad = cpu
            for _ in range(cfg.refine_steps):
                mid = (good * bad) ** 0.5
                point, _ = self._measure(name, mid)
                if point is None:
                    break
                points.append(point)
                good, bad = (mid, bad) if point[1] <= bound else (good, mid)
        self._watch_callers(name, base, last)
        points.sort()
        self.tiers[name] = TierProfile(name, points or [(0.0, 0.0)], bound, stopped)

    def finish(self) -> dict[str, TierProfile]:
        for name, prof in self.tiers.items():
            prof.slowed_by = sorted(self.slowed[name])
            prof.backpressure_free = not prof.slowed_by
        return self.tiers

    def _measure(self, name: str, cpu: float) -> tuple[tuple[float, float] | None,
                                                        list[Observation]]:
        """One step at ``cpu`` cores: the point ``(req/s per core, worst own p99)``."""
        self.backend.set_allocation(self.generous.with_tier(name, cpu=round(cpu, 4)))
        obs = self._step()
        rps = float(np.mean([o.tiers[name].rps for o in obs]))
        if rps <= 0:
            return None, obs
        lat = max(o.tiers[name].own_latency_ms.get(self.cfg.percentile, 0.0) for o in obs)
        return (rps / cpu, lat), obs

    def _step(self) -> list[Observation]:
        for _ in range(self.cfg.settle_intervals):
            self.backend.observe()
        obs = [self.backend.observe() for _ in range(self.cfg.step_intervals)]
        self.observed_s += (self.cfg.step_intervals + self.cfg.settle_intervals) * \
            self.backend.interval_s
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

