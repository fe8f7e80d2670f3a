"""Ursa vs Kubernetes HPA (and static) on the local backend: the social network on real processes.

Profiles every tier on real worker processes, redis-server and memcached under cgroup CPU limits
(recording the collection wall time), plans, then runs static, HPA (time constants x0.1 for the
short run) and Ursa on the same diurnal arrivals, one after the other.

    python benchmarks/ursa_local.py [--quick] [--fast-profile]

Writes benchmarks/results/ursa_local.json and prints a Markdown table. Needs writable cgroups
(root); on a busy machine the numbers move — run it alone.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from leanstack.atomic import write_json
from leanstack.microservices.app import load_app
from leanstack.microservices.controllers import HPAController, StaticController
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.result import environment
from leanstack.microservices.runner import make_backend
from leanstack.ursa.controller import UrsaController
from leanstack.ursa.plan import make_plan
from leanstack.ursa.profile import ProfileSettings, profile_app
from local_runs import print_table, require_local, run_local

RESULT = Path(__file__).parent / "results" / "ursa_local.json"
APP = "social-network"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="40 s runs, one measured step interval")
    ap.add_argument("--rps", type=float, default=100.0)
    ap.add_argument("--fast-profile", action="store_true",
                    help="profile with ProfileSettings.fast (non-interacting tiers at once)")
    args = ap.parse_args()
    require_local()
    t0 = time.monotonic()
    load_before = os.getloadavg()
    app = load_app(APP)
    duration = 40.0 if args.quick else 180.0
    steps = 1 if args.quick else 2
    settings = (ProfileSettings.fast(args.rps, step_intervals=max(steps, 3))
                if args.fast_profile else ProfileSettings(rps=args.rps, step_intervals=steps))
    profile = profile_app(app, make_backend("local"), settings)
    plan = make_plan(app, profile)
    print(f"profiled in {profile.collection_wall_s:.0f} s; plan {plan.cpu_per_rps * 100:.2f} "
          f"cores per 100 req/s", file=sys.stderr)
    load = LoadSpec("diurnal", args.rps, duration, seed=0, amplitude=0.5)
    runs = run_local(app, [StaticController(), HPAController(time_scale=0.1),
                           UrsaController(plan)], load)
    result = {"benchmark": "ursa_local", "app": APP, "quick": args.quick,
              "load": {"pattern": "diurnal", "rps": args.rps, "duration_s": duration,
                       "amplitude": 0.5},
              "hpa_time_scale": 0.1, "profile_wall_s": profile.collection_wall_s,
              "profile_settings": profile.settings, "plan_cpu_per_rps": plan.cpu_per_rps,
              "backpressure_free": {t: p.backpressure_free for t, p in profile.tiers.items()},
              "runs": runs, "loadavg_before": list(load_before),
              "loadavg_after": list(os.getloadavg()),
              "environment": environment(time.monotonic() - t0, sys.argv)}
    write_json(RESULT, result)
    print_table(runs)


if __name__ == "__main__":
    main()
