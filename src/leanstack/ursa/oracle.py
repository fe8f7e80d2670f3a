"""The oracle: the smallest static per-tier allocation that meets every SLA at a given load.

Found by search in the simulator, not by any model: starting from every tier at ``max_cpu``, each
tier in turn (largest first) is bisected down to the least CPU at which a full simulated run
still meets the SLA target (violation rate at most ``target``), the others held where they are.
It knows the load in advance and sees the future, so a controller can only approach it; it is
the yardstick for "how much CPU does meeting the SLA really take".
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from leanstack.errors import LeanstackError
from leanstack.microservices.app import AppSpec
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.observation import Allocation
from leanstack.microservices.result import violation_rate
from leanstack.microservices.sim import SimBackend


@dataclass
class OracleResult:
    """The allocation found, its total CPU and violation rate, and what the search cost."""

    allocation: Allocation
    total_cpu: float
    violation_rate: float
    runs: int
    wall_s: float


def violation_rate_at(app: AppSpec, allocation: Allocation, load: LoadSpec,
                      seed: int = 0) -> float:
    """Run the simulator with a fixed allocation and return its violation rate."""
    backend = SimBackend(seed=seed)
    backend.deploy(app, allocation)
    try:
        backend.start(load)
        steps = max(1, round(load.duration_s / backend.interval_s))
        timeline = []
        for _ in range(steps):
            obs = backend.observe()
            timeline.append({**obs.to_dict(), "allocation": allocation.to_dict()})
    finally:
        backend.close()
    return violation_rate(timeline)


def search_oracle(app: AppSpec, load: LoadSpec, target: float = 0.01, precision: float = 0.02,
                  seed: int = 0, progress: bool = True) -> OracleResult:
    """Bisect each tier's CPU down while the run still meets ``target`` (see module doc)."""
    if not 0 <= target < 1:
        raise LeanstackError(f"--target must be a violation rate in [0, 1), got {target}")
    if not 0 < precision < 1:
        raise LeanstackError(f"oracle precision must be in (0, 1), got {precision}")
    t0 = time.monotonic()
    alloc = Allocation.static_max(app)
    runs = 0
    order = sorted(app.services, key=lambda n: -app.services[n].max_cpu)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), disable=not progress) as bar:
        task = bar.add_task(f"oracle search {app.name} @ {load.rps:g} req/s", total=len(order))
        for name in order:
            svc = app.services[name]
            lo, hi = svc.min_cpu, alloc.tiers[name].cpu  # hi meets the target
            runs += 1
            if violation_rate_at(app, alloc.with_tier(name, cpu=lo), load, seed) <= target:
                hi = lo
            while hi - lo > precision * max(hi, 0.05):
                mid = round((lo + hi) / 2, 4)
                runs += 1
                if violation_rate_at(app, alloc.with_tier(name, cpu=mid), load, seed) <= target:
                    hi = mid
                else:
                    lo = mid
            alloc = alloc.with_tier(name, cpu=hi)
            bar.update(task, advance=1)
    final = violation_rate_at(app, alloc, load, seed)
    return OracleResult(alloc, alloc.total_cpu(), final, runs + 1, time.monotonic() - t0)
