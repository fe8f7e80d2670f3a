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
import time
from pathlib import Path

import torch

from leanstack.atomic import write_json
from leanstack.microservices.app import load_app
from leanstack.microservices.controllers import HPAController
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.result import environment
from leanstack.sinan.controller import SinanController
from local_runs import print_table, require_local, run_local

RESULT = Path(__file__).parent / "results" / "sinan_local.json"
APP = "social-network"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="60 s runs")
    ap.add_argument("--rps", type=float, default=100.0)
    args = ap.parse_args()
    require_local()
    torch.set_num_threads(1)
    t0 = time.monotonic()
    app = load_app(APP)
    duration = 60.0 if args.quick else 180.0
    load = LoadSpec("diurnal", args.rps, duration, seed=0, amplitude=0.5)
    runs = run_local(app, [HPAController(time_scale=0.1), SinanController()], load)
    write_json(RESULT, {"benchmark": "sinan_local", "app": APP, "quick": args.quick,
                       "load": {"pattern": "diurnal", "rps": args.rps, "duration_s": duration,
                                "amplitude": 0.5},
                       "hpa_time_scale": 0.1, "sinan_model": "shipped (trained on the simulator)",
                       "runs": runs, "environment": environment(time.monotonic() - t0, sys.argv)})
    print_table(runs)


if __name__ == "__main__":
    main()
