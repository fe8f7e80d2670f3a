"""Kubernetes HPA vs static max allocation: social network under a diurnal open-loop load.

Runs both controllers side by side (alternating, same seeds) on the simulator (a long run with
the real HPA time constants) and, when cgroups are writable, on the local backend (real
processes, short runs with the HPA time constants scaled down). Records the SLA violation rate
and the mean allocated CPU of every run, their medians per controller and the HPA/static ratios.

    python benchmarks/hpa_vs_static.py [--quick] [--skip-local]

Writes benchmarks/results/hpa_vs_static.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
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
from leanstack.microservices.runner import local_unavailable, make_backend, run_experiment

RESULT = Path(__file__).parent / "results" / "hpa_vs_static.json"
APP = "social-network"


def settings(quick: bool) -> dict[str, dict[str, Any]]:
    """Per backend: load, duration, HPA time scale and seeds."""
    return {
        "sim": {"rps": 600.0, "duration_s": 300.0 if quick else 1800.0,
                "time_scale": 1.0, "seeds": [0] if quick else [0, 1, 2]},
        "local": {"rps": 100.0, "duration_s": 40.0 if quick else 180.0,
                  "time_scale": 0.1, "seeds": [0]},
    }


def run_pair(backend: str, cfg: dict[str, Any], seed: int, workdir: Path) -> list[dict]:
    """One static and one HPA run with the same arrivals; one row per run."""
    app = load_app(APP)
    load = LoadSpec("diurnal", cfg["rps"], cfg["duration_s"], seed=seed, amplitude=0.5)
    rows = []
    for ctrl in (StaticController(), HPAController(time_scale=cfg["time_scale"])):
        opts = {"seed": seed} if backend == "sim" else {}
        be = make_backend(backend, 1.0, **opts)
        t0 = time.monotonic()
        out = workdir / f"{backend}-{ctrl.name}-{seed}.json"
        r = run_experiment(app, be, ctrl, load, out, progress=sys.stderr.isatty())
        s = r["summary"]
        rows.append({
            "backend": backend, "controller": ctrl.name, "seed": seed,
            "rps": cfg["rps"], "duration_s": cfg["duration_s"],
            "hpa_time_scale": cfg["time_scale"] if ctrl.name == "hpa" else None,
            "violation_rate": s["violation_rate"], "mean_cpu": s["mean_cpu"],
            "mean_cpu_used": s["mean_cpu_used"], "requests": s["requests"],
            "errors": s["errors"], "p99_ms": s["p99_ms"],
            "wall_s": round(time.monotonic() - t0, 2),
        })
        print(f"  {backend} {ctrl.name} seed {seed}: violations {s['violation_rate']:.1%}, "
              f"mean CPU {s['mean_cpu']:.2f} cores", file=sys.stderr)
    return rows


def medians(rows: list[dict]) -> list[dict]:
    """Median violation rate and mean CPU per (backend, controller), with HPA/static ratios."""
    out = []
    for backend in dict.fromkeys(r["backend"] for r in rows):
        per = {}
        for ctrl in ("static", "hpa"):
            sel = [r for r in rows if r["backend"] == backend and r["controller"] == ctrl]
            per[ctrl] = {"violation_rate": statistics.median(r["violation_rate"] for r in sel),
                         "mean_cpu": statistics.median(r["mean_cpu"] for r in sel),
                         "runs": len(sel)}
        ratio = per["hpa"]["mean_cpu"] / per["static"]["mean_cpu"]
        out.append({"backend": backend, "static": per["static"], "hpa": per["hpa"],
                    "hpa_cpu_over_static": ratio, "runs_per_controller": per["hpa"]["runs"]})
    return out


def table(summary: list[dict], cfgs: dict[str, dict]) -> str:
    """The Markdown table of the medians."""
    lines = ["| backend | load | static: violations | static: mean CPU | HPA: violations "
             "| HPA: mean CPU | HPA CPU / static | HPA time scale | runs |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m in summary:
        c = cfgs[m["backend"]]
        lines.append(
            f"| {m['backend']} | diurnal {c['rps']:g} req/s, {c['duration_s']:g} s "
            f"| {m['static']['violation_rate']:.1%} | {m['static']['mean_cpu']:.2f} "
            f"| {m['hpa']['violation_rate']:.1%} | {m['hpa']['mean_cpu']:.2f} "
            f"| {m['hpa_cpu_over_static']:.2f} | {c['time_scale']:g} "
            f"| {m['runs_per_controller']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one short sim run and a 40 s local run")
    ap.add_argument("--skip-local", action="store_true", help="simulator only")
    args = ap.parse_args()
    cfgs = settings(args.quick)
    t0 = time.monotonic()
    backends = ["sim"]
    skipped = None
    if not args.skip_local:
        skipped = local_unavailable()
        if skipped is None:
            backends.append("local")
        else:
            print(f"local backend skipped: {skipped}", file=sys.stderr)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            for seed in cfgs[backend]["seeds"]:
                rows += run_pair(backend, cfgs[backend], seed, Path(tmp))
    summary = medians(rows)
    result = {
        "benchmark": "hpa_vs_static", "app": APP, "quick": args.quick,
        "settings": {b: cfgs[b] for b in backends},
        "local_skipped": skipped if not args.skip_local else "--skip-local",
        "summary": summary, "runs": rows,
        "environment": environment(time.monotonic() - t0),
    }
    write_json(RESULT, result)
    print(table(summary, cfgs))
    print(f"\nwritten: {RESULT.relative_to(Path(__file__).parent.parent)}")


if __name__ == "__main__":
    main()
