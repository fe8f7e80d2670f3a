"""How long Ursa's convolved plan takes with the call-path sample drawn once per class.

Profiles the social network on the simulator (fast profile, 100 req/s), then plans it
alternately with the cached sample (:class:`~leanstack.ursa.compose.TreeSample`, drawn once per
class and re-used across the planner's rounds) and with a fresh sample drawn for every
evaluation (what the planner did before), checking both give the same plan. Writes
``benchmarks/results/ursa_plan_speed.json`` with medians, load average, versions and command.

    nice -n 10 python benchmarks/ursa_plan_speed.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from leanstack.atomic import write_json
from leanstack.microservices.app import load_app
from leanstack.microservices.result import environment
from leanstack.microservices.sim import SimBackend
from leanstack.ursa import plan as plan_module
from leanstack.ursa.compose import SAMPLES, TreeSample
from leanstack.ursa.profile import ProfileSettings, profile_app

RESULTS = Path(__file__).parent / "results" / "ursa_plan_speed.json"


class _FreshSample(TreeSample):
    """Draws a new sample for every evaluation: the planner without the cache."""

    def quantile(self, dists, q):  # noqa: ANN001, ANN201 - same signature as the parent
        return TreeSample(self.tree, self.pipeline, self.samples).quantile(dists, q)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    t0 = time.monotonic()
    before = os.getloadavg()
    app = load_app("social-network")
    prof = profile_app(app, SimBackend(seed=1), ProfileSettings.fast(100.0), progress=False)
    times: dict[str, list[float]] = {"cached": [], "fresh": []}
    plans = {}
    for _ in range(args.repeats):
        for name, cls in (("cached", TreeSample), ("fresh", _FreshSample)):
            plan_module.TreeSample = cls
            start = time.perf_counter()
            plans[name] = plan_module.make_plan(app, prof)
            times[name].append(time.perf_counter() - start)
    plan_module.TreeSample = TreeSample
    same = (plans["cached"].cpu_per_rps == plans["fresh"].cpu_per_rps
            and all(plans["cached"].classes[c].planned_ms == plans["fresh"].classes[c].planned_ms
                    for c in app.classes))
    result = {
        "benchmark": "ursa_plan_speed", "app": app.name, "rounds": plan_module.ROUNDS,
        "samples": SAMPLES,
        "plan_s": times, "median_s": {k: statistics.median(v) for k, v in times.items()},
        "same_plan": same, "plan_cpu_per_100rps": plans["cached"].cpu_per_rps * 100,
        "loadavg_before": list(before), "loadavg_after": list(os.getloadavg()),
        "environment": environment(time.monotonic() - t0, sys.argv),
    }
    write_json(RESULTS, result)
    med = result["median_s"]
    print(f"plan: {med['fresh']:.2f} s with a fresh sample per evaluation, {med['cached']:.2f} s "
          f"cached ({med['fresh'] / med['cached']:.1f}x); same plan: {same}; load average "
          f"{before[0]:.1f} -> {result['loadavg_after'][0]:.1f}; wrote {RESULTS}")


if __name__ == "__main__":
    main()
