"""Ursa vs Sinan (vs HPA) on the simulator, and what each costs to set up and to run.

For the social network and hotel reservation at Sinan's evaluation load: profile and plan Ursa
(timed), load Sinan's shipped model (its collection and training cost are *not* measured here:
they are read from benchmarks/results/sinan_costs.json, written by benchmarks/sinan_eval.py, and
the tables and JSON say so next to them), then run HPA, Sinan
and Ursa side by side on the same seeds under steady and diurnal load. Decision times come from
these runs.

    python benchmarks/ursa_vs_sinan.py [--quick]

Writes benchmarks/results/ursa_vs_sinan.json and prints two Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from leanstack.atomic import write_json
from leanstack.microservices.app import load_app
from leanstack.microservices.controllers import HPAController
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.result import environment
from leanstack.microservices.runner import run_experiment
from leanstack.microservices.sim import SimBackend
from leanstack.sinan.controller import SinanController
from leanstack.ursa.controller import UrsaController
from leanstack.ursa.plan import make_plan
from leanstack.ursa.profile import ProfileSettings, profile_app

RESULTS = Path(__file__).parent / "results"
APPS = ("social-network", "hotel-reservation")
RPS = 450.0  # Sinan's evaluation load (benchmarks/sinan_eval.py)


def run_app(name: str, quick: bool, seeds: list[int], tmp: Path) -> dict[str, Any]:
    app = load_app(name)
    t0 = time.monotonic()
    profile = profile_app(app, SimBackend(seed=seeds[0]), ProfileSettings(rps=RPS),
                          seed=seeds[0])
    plan = make_plan(app, profile)
    setup_s = time.monotonic() - t0
    runs: list[dict[str, Any]] = []
    for seed in seeds:
        for pattern in ("poisson", "diurnal"):
            load = LoadSpec(pattern, RPS, 180.0 if quick else 600.0, seed=seed, amplitude=0.5)
            for ctrl in (HPAController(), SinanController(), UrsaController(plan)):
                res = run_experiment(app, SimBackend(seed=seed), ctrl, load,
                                     tmp / f"{name}-{pattern}-{ctrl.name}.json", progress=False)
                s = res["summary"]
                runs.append({"load": pattern, "controller": ctrl.name, "seed": seed,
                             "violation_rate": s["violation_rate"], "mean_cpu": s["mean_cpu"],
                             "decision_ms_median": s["decision_ms_median"]})
                print(f"  {name} {pattern} {ctrl.name}: {s['violation_rate']:.1%}, "
                      f"{s['mean_cpu']:.2f} cores, {s['decision_ms_median']:.2f} ms",
                      file=sys.stderr)
    return {"ursa_profile_wall_s": profile.collection_wall_s,
            "ursa_profile_sim_s": profile.collection_backend_s,
            "ursa_setup_wall_s": setup_s, "ursa_plan_solve_ms": plan.solve_ms, "runs": runs}


def summarise(name: str, r: dict[str, Any], sinan_costs: dict[str, Any]) -> dict[str, Any]:
    def med(ctrl: str, key: str, load: str | None = None) -> float:
        return statistics.median(x[key] for x in r["runs"] if x["controller"] == ctrl
                                 and (load is None or x["load"] == load))

    sc = sinan_costs.get(name, {})
    sinan_setup = sc.get("collection_wall_s", float("nan")) + sc.get("train_wall_s", 0.0)
    out = {"control": {load: {c: {"violation_rate": med(c, "violation_rate", load),
                                  "mean_cpu": med(c, "mean_cpu", load)}
                              for c in ("hpa", "sinan", "ursa")}
                       for load in ("poisson", "diurnal")},
           "decision_ms_median": {c: med(c, "decision_ms_median") for c in ("hpa", "sinan",
                                                                            "ursa")},
           "ursa_profile_wall_s": r["ursa_profile_wall_s"],
           "ursa_profile_sim_s": r["ursa_profile_sim_s"],
           "sinan_costs_measured": ("not in this run: read from "
                                    f"benchmarks/results/sinan_costs.json ({sc.get('command')}, "
                                    f"{sc.get('timestamp')})" if sc else "missing"),
           "sinan_collection_wall_s": sc.get("collection_wall_s"),
           "sinan_collection_sim_s": sc.get("collection_sim_s"),
           "sinan_train_wall_s": sc.get("train_wall_s")}
    out["collection_wall_ratio"] = (sc["collection_wall_s"] / r["ursa_profile_wall_s"]
                                    if sc else None)
    out["collection_sim_ratio"] = (sc["collection_sim_s"] / r["ursa_profile_sim_s"]
                                   if sc else None)
    out["setup_wall_ratio"] = sinan_setup / r["ursa_setup_wall_s"] if sc else None
    out["decision_ratio"] = out["decision_ms_median"]["sinan"] / out["decision_ms_median"]["ursa"]
    return out


def tables(summary: dict[str, Any]) -> str:
    lines = ["| app | load | HPA viol. / CPU | Sinan viol. / CPU | Ursa viol. / CPU |",
             "|---|---|---|---|---|"]
    for name, s in summary.items():
        for load, per in s["control"].items():
            cells = " | ".join(f"{100 * per[c]['violation_rate']:.1f}% / {per[c]['mean_cpu']:.2f}"
                               for c in ("hpa", "sinan", "ursa"))
            lines.append(f"| {name} | {'steady' if load == 'poisson' else load} | {cells} |")
    lines += ["", "| app | data collection: Sinan* / Ursa (wall s) | ratio | simulated load "
              "seconds: Sinan* / Ursa | Sinan training* (s) | decision ms: Sinan / Ursa / HPA "
              "| ratio |", "|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        d = s["decision_ms_median"]
        lines.append(
            f"| {name} | {s['sinan_collection_wall_s']:.0f} / {s['ursa_profile_wall_s']:.0f} | "
            f"{s['collection_wall_ratio']:.1f}x | {s['sinan_collection_sim_s']:.0f} / "
            f"{s['ursa_profile_sim_s']:.0f} | {s['sinan_train_wall_s']:.0f} | "
            f"{d['sinan']:.2f} / {d['ursa']:.2f} / {d['hpa']:.3f} | {s['decision_ratio']:.0f}x |")
    sources = sorted({s["sinan_costs_measured"] for s in summary.values()})
    lines += ["", "\\* Sinan's collection and training seconds: " + "; ".join(sources)
              + ". Ursa's profiling time and every decision time were measured in this run."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="180 s runs")
    args = ap.parse_args()
    torch.set_num_threads(1)
    costs_path = RESULTS / "sinan_costs.json"
    sinan_costs = json.loads(costs_path.read_text()) if costs_path.is_file() else {}
    t0 = time.monotonic()
    seeds = [11]
    raw, summary = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in APPS:
            print(f"{name} ...", file=sys.stderr)
            raw[name] = run_app(name, args.quick, seeds, Path(tmp))
            summary[name] = summarise(name, raw[name], sinan_costs)
    result = {"benchmark": "ursa_vs_sinan", "quick": args.quick, "rps": RPS, "seeds": seeds,
              "duration_s": 180.0 if args.quick else 600.0,
              "hpa": "Kubernetes defaults (time_scale 1)", "sinan_model": "shipped",
              "sinan_costs_source": "benchmarks/results/sinan_costs.json",
              "summary": summary, "raw": raw,
              "environment": environment(time.monotonic() - t0, sys.argv)}
    write_json(RESULTS / "ursa_vs_sinan.json", result)
    print(tables(summary))


if __name__ == "__main__":
    main()
