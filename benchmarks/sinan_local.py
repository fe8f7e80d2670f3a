"""Sinan vs Kubernetes HPA on the local backend: the social network on real processes.

Sinan runs with its shipped model (trained on the simulator); HPA with its time constants x0.1
for the short run. Same diurnal arrivals, one after the other.

    python benchmarks/sinan_local.py [--quick]

Writes benchmarks/results/sinan_local.json and prints a Markdown table. Needs writable cgroups
(root); run it alone, on a quiet machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from hpa_vs_static import local_available
from leanstack.microservices.app import load_app
from leanstack.microservices.controllers import HPAController
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.result import environment, write_json_atomic
from leanstack.microservices.runner import make_backend, run_experiment
from leanstack.sinan.controller import SinanController

RESULT = Path(__file__).parent / "results" / "sinan_local.json"
APP = "social-network"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="60 s runs")
    ap.add_argument("--rps", type=float, default=100.0)
    args = ap.parse_args()
    why_not = local_available()
    if why_not:
        sys.exit(f"local backend unavailable: {why_not}")
    torch.set_num_threads(1)
    t0 = time.monotonic()
    app = load_app(APP)
    duration = 60.0 if args.quick else 180.0
    load = LoadSpec("diurnal", args.rps, duration, seed=0, amplitude=0.5)
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for ctrl in (HPAController(time_scale=0.1), SinanController()):
            res = run_experiment(app, make_backend("local"), ctrl, load,
                                 Path(tmp) / f"{ctrl.name}.json", progress=sys.stderr.isatty())
            s = res["summary"]
            runs[ctrl.name] = {k: s[k] for k in ("violation_rate", "mean_cpu", "mean_cpu_used",
                                                 "errors", "requests", "p99_ms",
                                                 "decision_ms_median")}
            print(f"  {ctrl.name}: {s['violation_rate']:.1%} violations, {s['mean_cpu']:.2f} "
                  "cores", file=sys.stderr)
    write_json_atomic({"benchmark": "sinan_local", "app": APP, "quick": args.quick,
                       "load": {"pattern": "diurnal", "rps": args.rps, "duration_s": duration,
                                "amplitude": 0.5},
                       "hpa_time_scale": 0.1, "sinan_model": "shipped (trained on the simulator)",
                       "runs": runs, "environment": environment(time.monotonic() - t0, sys.argv)},
                      RESULT)
    print("| controller | violation rate | mean CPU (cores) | decision ms (median) |")
    print("|---|---|---|---|")
    for name, r in runs.items():
        print(f"| {name} | {r['violation_rate']:.1%} | {r['mean_cpu']:.2f} | "
              f"{r['decision_ms_median']:.2f} |")


if __name__ == "__main__":
    main()
