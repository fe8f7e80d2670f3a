"""How fast Ursa's profile is collected, and whether the faster profile plans as well.

Profiles the social network (24 tiers) at ``--rps`` (default 100 req/s) two ways: one tier at a
time with every step measured in full (``before``: ``ProfileSettings(early_stop=False)``), and
the fast profile (``ProfileSettings.fast``: tiers that do not call one another squeezed together,
from 20% utilisation, steps ended early once every squeezed tail is clearly inside or outside its
bound), and on a real backend also ``shaped`` (the fast profile measuring only around the knee
of each tier's simulated curve, whose scales it fits: ``ProfileSettings.fast(shape=True)``).
Each profile is planned (convolved composition) and, on the simulator, the plan is run by Ursa
under a diurnal load (``--rps`` ± 50%, 600 s) for two seeds.

    python benchmarks/ursa_profile_speed.py [--backend sim|local] [--settings before,fast,shaped]
        [--rps R] [--repeats N] [--save-profiles] [--suffix S]

On ``--backend local`` (root, cgroup v1) only the profiles are collected (the wall time is the
claim; see ursa_local.py for runs). ``--repeats N`` collects the settings N times back to back,
reversing their order every other repeat, so that plans compared within a repeat come from the
same minutes of a machine whose speed drifts. Writes
benchmarks/results/ursa_profile_speed_<backend><suffix>.json with the load average and the
host-speed probe around every profile (and sampled every second through it), and prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from leanstack.atomic import write_json
from leanstack.errors import LeanstackError
from leanstack.microservices.app import load_app
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.result import environment
from leanstack.microservices.runner import make_backend, run_experiment
from leanstack.provenance import HostProbeSampler, host_probe_ms
from leanstack.ursa.controller import UrsaController
from leanstack.ursa.plan import make_plan
from leanstack.ursa.profile import ProfileSettings, profile_app

RESULTS = Path(__file__).parent / "results"
APP = "social-network"
SETTINGS = {"before": lambda rps: ProfileSettings(rps=rps, early_stop=False),
            "fast": lambda rps: ProfileSettings.fast(rps),
            "shaped": lambda rps: ProfileSettings.fast(rps, shape=True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="sim", choices=("sim", "local"))
    ap.add_argument("--settings", default="before,fast", help="comma-separated: before, fast, "
                    "shaped (simulator shapes; the same as fast on the simulator)")
    ap.add_argument("--seeds", default="0,1", help="seeds of the simulated Ursa runs")
    ap.add_argument("--suffix", default="", help="appended to the result file's name")
    ap.add_argument("--save-profiles", action="store_true",
                    help="also write every profile next to the result (for ursa_local.py "
                         "--profile)")
    ap.add_argument("--rps", type=float, default=100.0, help="profiling load (requests/s)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="collect the settings this many times, the order reversed every other "
                         "time")
    args = ap.parse_args()
    names = args.settings.split(",")
    unknown = [n for n in names if n not in SETTINGS]
    if unknown or args.repeats < 1 or args.rps <= 0:
        ap.error(f"--settings takes {', '.join(SETTINGS)} (got {', '.join(unknown) or 'ok'}); "
                 "--repeats and --rps must be positive")
    t0 = time.monotonic()
    before = os.getloadavg()
    app = load_app(APP)
    rows: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            rows.append(profile_and_plan(app, name, args, repeat))
    result = {"benchmark": "ursa_profile_speed", "app": APP, "rps": args.rps,
              "backend": args.backend, "profiles": rows, "loadavg_before": list(before),
              "loadavg_after": list(os.getloadavg()),
              "environment": environment(time.monotonic() - t0, sys.argv)}
    path = RESULTS / f"ursa_profile_speed_{args.backend}{args.suffix}.json"
    write_json(path, result)
    print("| repeat | profile | wall (s) | load (s) | plan cores / 100 req/s | host probe (ms) | "
          "Ursa violations (per seed) | Ursa mean cores |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        viol = ", ".join(f"{x['violation_rate']:.1%}" for x in r["runs"]) or "–"
        cpu = ", ".join(f"{x['mean_cpu']:.2f}" for x in r["runs"]) or "–"
        cores = r["plan_cpu_per_100rps"]
        probe = "–".join(f"{p['min']:.1f}" for p in r["host_probe_ms"])
        print(f"| {r['repeat']} | {r['name']} | {r['collection_wall_s']:.1f} | "
              f"{r['collection_backend_s']:.0f} | {'refused' if cores is None else f'{cores:.2f}'} "
              f"| {probe} | {viol} | {cpu} |")
    print(f"\nload average before {before[0]:.2f}, after {result['loadavg_after'][0]:.2f}; "
          f"wrote {path}")


def profile_and_plan(app, name: str, args: argparse.Namespace, repeat: int) -> dict[str, Any]:
    """Collect one profile with the named settings, plan it (convolved and summed composition)
    and, on the simulator, run the plan under a diurnal load; the row of the result file."""
    probe_before, load_before = host_probe_ms(), os.getloadavg()[0]
    settings = SETTINGS[name](args.rps)
    backend = make_backend(args.backend, seed=1) if args.backend == "sim" else \
        make_backend("local")
    with HostProbeSampler() as sampler:
        prof = profile_app(app, backend, settings, progress=sys.stderr.isatty())
    plans: dict[str, Any] = {}
    for compose in ("convolve", "sum"):
        try:
            plans[compose] = make_plan(app, prof, compose=compose)
        except LeanstackError as e:  # an SLA refused: recorded, not fatal
            plans[compose] = str(e)
    plan = plans["convolve"]
    if args.save_profiles:
        prof.save(RESULTS / f"ursa_profile_speed_{args.backend}{args.suffix}_{name}_{repeat}"
                            "_profile.json")
    row: dict[str, Any] = {
        "name": name, "repeat": repeat,
        "host_probe_ms": [probe_before, host_probe_ms()],
        "host_probe_during": sampler.record(),
        "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "settings": prof.settings, "collection_wall_s": prof.collection_wall_s,
        "collection_backend_s": prof.collection_backend_s,
        "generous_measured_ms": prof.generous_ms,
        "not_backpressure_free": {t: tp.slowed_by for t, tp in prof.tiers.items()
                                  if not tp.backpressure_free},
        "plans": {k: p if isinstance(p, str) else {
            "cpu_per_100rps": p.cpu_per_rps * 100, "note": p.note,
            "classes": {c: {"sla_ms": cp.sla_ms, "predicted_ms": cp.planned_ms,
                            "budgets_added_ms": cp.summed_ms, "fastest_ms": cp.fastest_ms,
                            "anchor_ms": cp.anchor} for c, cp in p.classes.items()}}
            for k, p in plans.items()},
        "plan_cpu_per_100rps": None if isinstance(plan, str) else plan.cpu_per_rps * 100,
        "runs": []}
    print(f"  {name}: {prof.collection_wall_s:.1f} s wall, {prof.collection_backend_s:.0f} s "
          f"of load; plan: {plan if isinstance(plan, str) else plan.cpu_per_rps * 100}",
          file=sys.stderr)
    if args.backend == "sim" and not isinstance(plan, str):
        with tempfile.TemporaryDirectory() as tmp:
            for seed in (int(s) for s in args.seeds.split(",")):
                res = run_experiment(app, make_backend("sim", seed=seed + 10),
                                     UrsaController(plan),
                                     LoadSpec("diurnal", args.rps, 600.0, seed=seed),
                                     Path(tmp) / "r.json", progress=False)
                s = res["summary"]
                row["runs"].append({k: s[k] for k in (
                    "violation_rate", "violation_rate_after_warmup", "mean_cpu")})
    return row


if __name__ == "__main__":
    main()
