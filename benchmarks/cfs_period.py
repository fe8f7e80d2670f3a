"""Small CPU limits and the CFS period: tail latency at 0.1-0.5 cores for 10/20/100 ms periods.

A CFS quota of ``c`` cores over a period ``P`` lets a tier run ``c * P`` per period; a burst that
uses it up waits for the rest of the period, so at 0.1 cores and the default 100 ms period a
request can be held 90 ms whatever its own work. A shorter period shortens that wait (and
``cpu.cfs_burst_us``, where the kernel has it, lets a tier bank unused quota for bursts).

One logic tier (``front``: JSON work calling a redis tier) runs on the local backend (real
processes, real cgroup quotas) under a fixed Poisson load. For each period (and burst setting,
where the kernel has ``cpu.cfs_burst_us``), one deployment steps ``front``'s quota through
0.5, 0.3, 0.2 and 0.1 cores and records per step the end-to-end p99 (median of 1 s intervals,
and over every request from spans), the tier's CPU use and its throttling.

    python benchmarks/cfs_period.py [--quick] [--rps 25] [--step-s 10] [--periods 10,20,100]

Writes benchmarks/results/cfs_period.json and cfs_period.png and prints a Markdown table; the
JSON records the load average before and after (the machine's other work skews tails). Needs
root (writable cgroup v1); without it, it says so on one line and exits.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from cpu_limits import SETTLE_INTERVALS, server_versions, step_row
from leanstack.atomic import write_json
from leanstack.errors import LeanstackError
from leanstack.microservices.app import parse_app
from leanstack.microservices.cgroups import CGROUP_ROOT
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.local import LocalBackend
from leanstack.microservices.observation import Allocation
from leanstack.microservices.result import environment
from stats_format import cell

RESULTS = Path(__file__).parent / "results"
NAME = "cfs_period"
CORES = (0.5, 0.3, 0.2, 0.1)
APP = {
    "name": "cfs-probe",
    "description": "One JSON tier that reads a redis key: the tier whose quota is studied.",
    "services": {
        "front": {"max_cpu": 1.0, "endpoints": {"get": {
            "work": "json", "cpu_ms": 1.0, "calls": [["store.get"]]}}},
        "store": {"kind": "redis", "max_cpu": 1.0},
    },
    "classes": {"get": {"entry": "front.get", "weight": 1.0,
                        "sla": {"percentile": 99, "ms": 50}}},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short steps (5 s)")
    p.add_argument("--rps", type=float, default=25.0, help="offered load (req/s)")
    p.add_argument("--step-s", type=float, default=None, help="seconds per step (12; quick 5)")
    p.add_argument("--periods", default="10,20,100", help="CFS periods in ms, comma-separated")
    p.add_argument("--bursts", default=None,
                   help="burst fractions of the quota (default 0,1 where the kernel has "
                        "cpu.cfs_burst_us, else 0)")
    a = p.parse_args(argv)
    a.step_s = a.step_s or (5.0 if a.quick else 12.0)
    a.periods = [float(x) for x in a.periods.split(",")]
    has_burst = (CGROUP_ROOT / "cpu" / "cpu.cfs_burst_us").exists()
    a.bursts = [float(x) for x in (a.bursts or ("0,1" if has_burst else "0")).split(",")]
    return a


def run(a: argparse.Namespace) -> dict[str, Any]:
    """One deployment per (period, burst); one row per quota step."""
    app = parse_app(APP)
    per_step = max(SETTLE_INTERVALS + 2, round(a.step_s))
    base = Allocation.static_max(app)
    configs = []
    for period in a.periods:
        for burst in a.bursts:
            backend = LocalBackend(interval_s=1.0, cfs_period_ms=period, cfs_burst=burst)
            rows = []
            try:
                backend.deploy(app, base.with_tier("front", cpu=CORES[0]))
                backend.start(LoadSpec("poisson", a.rps, (len(CORES) * per_step + 5), seed=0))
                for cores in CORES:
                    backend.set_allocation(base.with_tier("front", cpu=cores))
                    since = time.time_ns()
                    obs = [backend.observe() for _ in range(per_step)]
                    rows.append(step_row(app, backend, "front", cores, obs[SETTLE_INTERVALS:],
                                         since))
                    got = rows[-1]["classes"]["get"]
                    print(f"  period {period:g} ms, burst {burst:g}, {cores:g} cores: p99 "
                          f"{cell(got['p99_ms_median'])} ms (all requests "
                          f"{cell(got['entry_span_p99_ms'])} ms)", file=sys.stderr)
            finally:
                backend.close()
            configs.append({"period_ms": period, "burst": burst, "steps": rows})
    return {"app": APP, "rps": a.rps, "step_s": per_step, "settle_intervals": SETTLE_INTERVALS,
            "cores": list(CORES), "configs": configs}


def markdown(result: dict[str, Any]) -> str:
    head = ["period ms", "burst", *(f"p99 @{c:g} cores (all req.)" for c in result["cores"]),
            "throttled s/s @0.1"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cfg in result["configs"]:
        cells = [f"{cfg['period_ms']:g}", f"{cfg['burst']:g}"]
        for r in cfg["steps"]:
            g = r["classes"]["get"]
            cells.append(f"{cell(g['p99_ms_median'])} ({cell(g['entry_span_p99_ms'])})")
        cells.append(cell(cfg["steps"][-1]["tier_throttled_s_per_s"], 3))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for cfg in result["configs"]:
        x = [r["cores"] for r in cfg["steps"]]
        y = [r["classes"]["get"]["entry_span_p99_ms"] or np.nan for r in cfg["steps"]]
        style = "o-" if cfg["burst"] == 0 else "s--"
        ax.plot(x, y, style, label=f"period {cfg['period_ms']:g} ms, burst {cfg['burst']:g}")
    ax.set_yscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("front's CPU quota (cores)")
    ax.set_ylabel("end-to-end p99 over every request (ms)")
    ax.set_title(f"CFS period vs tail latency at {result['rps']:g} req/s "
                 f"(load avg {result['loadavg_before'][0]:.1f} at start)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.rename(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    t0 = time.monotonic()
    before = os.getloadavg()
    try:
        result = run(a)
    except LeanstackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result["loadavg_before"], result["loadavg_after"] = list(before), list(os.getloadavg())
    result["environment"] = {**environment(time.monotonic() - t0), "servers": server_versions()}
    RESULTS.mkdir(exist_ok=True)
    write_json(RESULTS / f"{NAME}.json", result)
    plot(result, RESULTS / f"{NAME}.png")
    print(markdown(result))
    print(f"\nload average before {before[0]:.2f}, after {result['loadavg_after'][0]:.2f}; "
          f"wrote {RESULTS / (NAME + '.json')} and {NAME}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
