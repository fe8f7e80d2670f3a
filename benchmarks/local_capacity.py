"""What request rate the social network sustains on the local backend at its static allocation.

Deploys the app once (every tier at ``max_cpu``, real processes under real cgroup quotas) and
offers Poisson load at increasing rates, a fresh load generator per rate. Per rate it records the
achieved throughput, errors, per-class p50/p99 (median of the 1 s intervals after a settling
period) and the CPU all tiers used. A rate is *sustained* when throughput stays within 5% of the
offered rate, under 1% of requests fail and every class's p99 stays below 1 s. The sweep stops
early once a rate is far past saturation.

    python benchmarks/local_capacity.py [--quick] [--rates 25,50,100] [--step-s 10]

Writes benchmarks/results/local_capacity.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from leanstack.atomic import write_json
from leanstack.errors import LeanstackError
from leanstack.microservices.app import load_app
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.local import LocalBackend
from leanstack.microservices.observation import Allocation
from leanstack.microservices.result import environment
from stats_format import cell, median_or_none

RESULTS = Path(__file__).parent / "results"
NAME = "local_capacity"
SETTLE_INTERVALS = 2
SUSTAINED_P99_MS = 1000.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="three short rates")
    p.add_argument("--app", default="social-network")
    p.add_argument("--rates", default=None, help="comma-separated rps (default "
                   "25,50,75,100,150,200,250; quick 25,75,150)")
    p.add_argument("--step-s", type=float, default=None, help="seconds per rate (10; quick 6)")
    a = p.parse_args(argv)
    a.rates = [float(x) for x in (a.rates or ("25,75,150" if a.quick else
                                              "25,50,75,100,150,200,250")).split(",")]
    a.step_s = a.step_s or (6.0 if a.quick else 10.0)
    return a


def run(a: argparse.Namespace) -> dict[str, Any]:
    app = load_app(a.app)
    per_step = max(SETTLE_INTERVALS + 2, round(a.step_s))
    backend = LocalBackend(interval_s=1.0)
    rows = []
    try:
        backend.deploy(app, Allocation.static_max(app))
        for rps in a.rates:
            backend.start(LoadSpec("poisson", rps, per_step + 2.0, seed=int(rps)))
            obs = [backend.observe() for _ in range(per_step)][SETTLE_INTERVALS:]
            seconds = sum(o.interval_s for o in obs)
            classes = {}
            for name in app.classes:
                cs = [o.classes[name] for o in obs]
                done = [c for c in cs if c.completed]
                classes[name] = {
                    "completed": sum(c.completed for c in cs),
                    "errors": sum(c.errors for c in cs),
                    "p50_ms_median": median_or_none([c.latency_ms.get("p50") for c in done]),
                    "p99_ms_median": median_or_none([c.latency_ms.get("p99") for c in done]),
                    "sla_ms": app.classes[name].sla.ms,
                }
            completed = sum(c["completed"] for c in classes.values())
            errors = sum(c["errors"] for c in classes.values())
            offered = statistics.fmean(o.offered_rps for o in obs)
            worst_p99 = max((c["p99_ms_median"] or 0.0) for c in classes.values())
            row = {
                "rps": rps, "offered_rps": offered, "throughput_rps": completed / seconds,
                "error_share": errors / max(1, completed + errors), "classes": classes,
                "cpu_used": statistics.fmean(sum(t.cpu_used for t in o.tiers.values())
                                             for o in obs),
                "worst_p99_ms": worst_p99,
            }
            row["sustained"] = (row["throughput_rps"] >= 0.95 * offered
                                and row["error_share"] < 0.01 and worst_p99 < SUSTAINED_P99_MS)
            rows.append(row)
            print(f"  {rps:g} rps: {row['throughput_rps']:.1f} done/s, worst p99 "
                  f"{worst_p99:.0f} ms, cpu {row['cpu_used']:.2f}", file=sys.stderr)
            if worst_p99 > 10 * SUSTAINED_P99_MS:
                break
    finally:
        backend.close()
    sustained = [r["rps"] for r in rows if r["sustained"]]
    return {"app": app.name, "step_s": per_step, "settle_intervals": SETTLE_INTERVALS,
            "allocation": Allocation.static_max(app).to_dict(), "rates": rows,
            "max_sustained_rps": max(sustained) if sustained else None}


def markdown(result: dict[str, Any]) -> str:
    classes = list(result["rates"][0]["classes"])
    head = ["offered rps", "throughput rps", *(f"{c} p50/p99 ms" for c in classes),
            "cpu used (cores)", "errors %", "sustained"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rates"]:
        cells = [f"{r['rps']:g}", cell(r["throughput_rps"])]
        cells += [f"{cell(r['classes'][c]['p50_ms_median'])} / "
                  f"{cell(r['classes'][c]['p99_ms_median'])}" for c in classes]
        cells += [cell(r["cpu_used"], 2), cell(100 * r["error_share"], 2),
                  "yes" if r["sustained"] else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    t0 = time.monotonic()
    try:
        result = run(a)
    except LeanstackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result["environment"] = environment(time.monotonic() - t0)
    RESULTS.mkdir(exist_ok=True)
    write_json(RESULTS / f"{NAME}.json", result)
    print(markdown(result))
    print(f"\nmax sustained: {result['max_sustained_rps']} rps; wrote "
          f"{RESULTS / (NAME + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
