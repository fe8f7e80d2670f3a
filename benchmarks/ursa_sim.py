"""Ursa vs Kubernetes HPA vs static on the simulator, all four apps, steady and diurnal load.

Per app: profile every tier (recording the collection wall time), plan (recording the MILP solve
time), then run static, HPA (real Kubernetes time constants) and Ursa on the same seeds under a
steady Poisson load and a diurnal load; and search the oracle — the smallest static allocation
that meets every SLA at the steady load — to set Ursa's CPU against.

    python benchmarks/ursa_sim.py [--quick] [--apps social-network,...]

Writes benchmarks/results/ursa_sim.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from leanstack.atomic import write_json
from leanstack.microservices.app import load_app
from leanstack.microservices.controllers import HPAController, StaticController
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.result import environment
from leanstack.microservices.runner import run_experiment
from leanstack.microservices.sim import SimBackend
from leanstack.ursa.controller import UrsaController
from leanstack.ursa.oracle import search_oracle
from leanstack.ursa.plan import make_plan
from leanstack.ursa.profile import ProfileSettings, profile_app
from stats_format import cell

RESULT = Path(__file__).parent / "results" / "ursa_sim.json"
RPS = {"social-network": 300.0, "media-service": 300.0, "hotel-reservation": 400.0,
       "video-pipeline": 100.0}
"""Mean load per app: static max meets every SLA at 1.5x (the diurnal peak)."""


def loads(rps: float, quick: bool, seed: int) -> dict[str, LoadSpec]:
    return {"steady": LoadSpec("poisson", rps, 300.0 if quick else 900.0, seed=seed),
            "diurnal": LoadSpec("diurnal", rps, 600.0 if quick else 1800.0, seed=seed,
                                amplitude=0.5)}


def run_app(name: str, quick: bool, seed: int, tmp: Path) -> dict[str, Any]:
    """Profile, plan, the three controllers under both loads, and the oracle, for one app."""
    app, rps = load_app(name), RPS[name]
    profile = profile_app(app, SimBackend(seed=seed), ProfileSettings(rps=rps), seed=seed)
    plan = make_plan(app, profile)
    out: dict[str, Any] = {
        "rps": rps, "profile_wall_s": profile.collection_wall_s,
        "profile_sim_s": profile.collection_backend_s, "plan_solve_ms": plan.solve_ms,
        "plan_cpu_per_rps": plan.cpu_per_rps,
        "backpressure_free": {t: p.backpressure_free for t, p in profile.tiers.items()},
        "runs": {}}
    for load_name, load in loads(rps, quick, seed).items():
        controllers = {"static": StaticController(), "hpa": HPAController(),
                       "ursa": UrsaController(plan, headroom=0.15),
                       "ursa-h0.3": UrsaController(plan, headroom=0.3)}
        for label, ctrl in controllers.items():
            res = run_experiment(app, SimBackend(seed=seed), ctrl, load,
                                 tmp / f"{name}-{load_name}-{label}.json", progress=False)
            s = res["summary"]
            out["runs"][f"{load_name}/{label}"] = {
                "violation_rate": s["violation_rate"], "mean_cpu": s["mean_cpu"],
                "decision_ms_median": s["decision_ms_median"],
                "class_violation_rate": {c: v["violation_rate"]
                                         for c, v in s["classes"].items()},
                "wall_s": res["environment"]["wall_s"]}
            print(f"  {name} {load_name} {label}: {s['violation_rate']:.1%} violations, "
                  f"{s['mean_cpu']:.2f} cores", file=sys.stderr)
    oracle = search_oracle(app, LoadSpec("poisson", rps, 60.0 if quick else 120.0, seed=seed),
                           seed=seed)
    out["oracle"] = {"total_cpu": oracle.total_cpu, "violation_rate": oracle.violation_rate,
                     "runs": oracle.runs, "wall_s": oracle.wall_s,
                     "allocation": oracle.allocation.to_dict()}
    for label in ("ursa", "ursa-h0.3"):
        out[f"{label}_over_oracle"] = out["runs"][f"steady/{label}"]["mean_cpu"] / oracle.total_cpu
        for load_name in ("steady", "diurnal"):
            hpa = out["runs"][f"{load_name}/hpa"]["mean_cpu"]
            out[f"{load_name}_{label}_cpu_vs_hpa"] = (
                out["runs"][f"{load_name}/{label}"]["mean_cpu"] / hpa)
    return out


def table(results: dict[str, Any]) -> str:
    labels = ("static", "hpa", "ursa", "ursa-h0.3")
    rows = ["| app | load | static | HPA | Ursa, headroom 0.15 | Ursa, headroom 0.3 (default) "
            "| Ursa CPU vs HPA | oracle CPU (Ursa / oracle) |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results["apps"].items():
        for load_name in ("steady", "diurnal"):
            cells = [f"{100 * r['runs'][f'{load_name}/{c}']['violation_rate']:.1f}% / "
                     f"{r['runs'][f'{load_name}/{c}']['mean_cpu']:.2f}" for c in labels]
            vs_hpa = " / ".join(f"{cell(100 * (r[f'{load_name}_{c}_cpu_vs_hpa'] - 1), 0)}%"
                                for c in labels[2:])
            oracle = (f"{r['oracle']['total_cpu']:.2f} ({r['ursa_over_oracle']:.2f}x / "
                      f"{r['ursa-h0.3_over_oracle']:.2f}x)" if load_name == "steady" else "")
            rows.append(f"| {name} | {load_name} {r['rps']:g} req/s | " + " | ".join(cells)
                        + f" | {vs_hpa} | {oracle} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter runs")
    ap.add_argument("--apps", default=",".join(RPS), help="comma-separated app names")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.monotonic()
    results: dict[str, Any] = {"apps": {}, "settings": {
        "quick": args.quick, "seed": args.seed, "hpa": "Kubernetes defaults (time_scale 1)",
        "ursa": {"headroom": [0.15, 0.3], "margin": 0.2, "window": 3},
        "loads": {k: {"pattern": v.pattern, "duration_s": v.duration_s}
                  for k, v in loads(1.0, args.quick, args.seed).items()}}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.apps.split(","):
            print(f"{name} ...", file=sys.stderr)
            results["apps"][name] = run_app(name, args.quick, args.seed, Path(tmp))
    results["environment"] = environment(time.monotonic() - t0, sys.argv)
    write_json(RESULT, results)
    print(table(results))


if __name__ == "__main__":
    main()
