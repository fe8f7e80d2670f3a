"""Real CPU limits bite: squeeze one tier's CFS quota step by step under a fixed open-loop load.

Deploys the social network on the local backend (real processes, real cgroup quotas, real redis
and memcached), sends a fixed Poisson load and lowers one tier's CPU allocation step by step
(by default 1.0, 0.5, 0.3, 0.2, 0.15, 0.1, 0.07, 0.05 cores for ``post-storage``). Per step it
records the end-to-end latency per class (the load generator's per-second p50/p99, median over
the step's intervals, plus the step's p99 over every request measured at the entry tier from
spans) and the squeezed tier's CPU use and throttling.

    python benchmarks/cpu_limits.py [--quick] [--tier post-storage] [--rps 60] [--step-s 15]

Writes benchmarks/results/cpu_limits.json and cpu_limits.png and prints a Markdown table.
Needs root (writable cgroup v1); without it, it says so on one line and exits.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from leanstack.atomic import write_json
from leanstack.errors import LeanstackError
from leanstack.microservices.app import load_app
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.local import LocalBackend
from leanstack.microservices.observation import Allocation, Observation
from leanstack.microservices.result import environment
from stats_format import cell, median_or_none

RESULTS = Path(__file__).parent / "results"
NAME = "cpu_limits"
# post-storage uses ~0.1 core at 60 rps here, so the squeeze goes below 0.1 core to bite.
DEFAULT_STEPS = "1.0,0.5,0.3,0.2,0.15,0.1,0.07,0.05"
SETTLE_INTERVALS = 2  # intervals after each quota change that are not measured


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="three short steps at a lower load")
    p.add_argument("--app", default="social-network")
    p.add_argument("--tier", default="post-storage", help="the tier whose quota is squeezed")
    p.add_argument("--rps", type=float, default=None, help="offered load (default 60; quick 40)")
    p.add_argument("--step-s", type=float, default=None, help="seconds per step (15; quick 6)")
    p.add_argument("--steps", default=None,
                   help=f"comma-separated cores (default {DEFAULT_STEPS})")
    a = p.parse_args(argv)
    a.rps = a.rps or (40.0 if a.quick else 60.0)
    a.step_s = a.step_s or (6.0 if a.quick else 15.0)
    a.steps = [float(x) for x in (a.steps or ("1.0,0.1,0.05" if a.quick else
                                              DEFAULT_STEPS)).split(",")]
    return a


def run(a: argparse.Namespace) -> dict[str, Any]:
    """Deploy, load, squeeze; one row per quota step."""
    app = load_app(a.app)
    if a.tier not in app.services:
        raise LeanstackError(f"--tier {a.tier!r} is not a tier of {app.name} — use one of "
                             f"{', '.join(app.services)}")
    per_step = max(1, round(a.step_s))
    duration = (len(a.steps) * per_step + 5) * 1.0
    base = Allocation.static_max(app)
    backend = LocalBackend(interval_s=1.0)
    rows = []
    try:
        backend.deploy(app, base)
        backend.start(LoadSpec("poisson", a.rps, duration, seed=0))
        for cores in a.steps:
            backend.set_allocation(base.with_tier(a.tier, cpu=cores))
            since = time.time_ns()
            obs = [backend.observe() for _ in range(per_step)]
            measured = obs[SETTLE_INTERVALS:] if len(obs) > SETTLE_INTERVALS + 1 else obs
            rows.append(step_row(app, backend, a.tier, cores, measured, since))
            print(f"  {a.tier} at {cores:g} cores: " + ", ".join(
                f"{c} p99 {r['p99_ms_median']:.0f} ms" for c, r in rows[-1]["classes"].items()),
                file=sys.stderr)
    finally:
        backend.close()
    return {"app": app.name, "tier": a.tier, "rps": a.rps, "step_s": per_step,
            "settle_intervals": SETTLE_INTERVALS, "steps": rows}


def step_row(app, backend: LocalBackend, tier: str, cores: float, obs: list[Observation],
             since_ns: int) -> dict[str, Any]:
    """Per-class latency and the squeezed tier's CPU and throttling over one step."""
    entry_spans: dict[str, list[float]] = {}
    for s in backend.spans(since_ns):
        cls = s.attributes.get("leanstack.class")
        rc = app.classes.get(cls)
        if rc is not None and (s.service, s.name) == (rc.entry.service, rc.entry.endpoint):
            entry_spans.setdefault(cls, []).append(s.duration_ms)
    classes = {}
    for name in app.classes:
        stats = [o.classes[name] for o in obs if o.classes[name].completed]
        spans = entry_spans.get(name, [])
        classes[name] = {
            "completed": sum(c.completed for c in stats),
            "errors": sum(o.classes[name].errors for o in obs),
            "p50_ms_median": median_or_none([c.latency_ms.get("p50") for c in stats]),
            "p99_ms_median": median_or_none([c.latency_ms.get("p99") for c in stats]),
            "p99_ms_max": max((c.latency_ms.get("p99", 0.0) for c in stats), default=None),
            "entry_span_p99_ms": float(np.percentile(spans, 99)) if spans else None,
        }
    t = [o.tiers[tier] for o in obs]
    seconds = sum(o.interval_s for o in obs)
    return {
        "cores": cores, "intervals": len(obs), "classes": classes,
        "tier_cpu_used": statistics.fmean(s.cpu_used for s in t),
        "tier_throttled_periods_per_s": sum(s.throttled_periods for s in t) / seconds,
        "tier_throttled_s_per_s": sum(s.throttled_s for s in t) / seconds,
        "tier_rps": statistics.fmean(s.rps for s in t),
        "tier_p99_ms_median": median_or_none([s.latency_ms.get("p99") for s in t]),
        "offered_rps": statistics.fmean(o.offered_rps for o in obs),
    }


def markdown(result: dict[str, Any]) -> str:
    classes = list(result["steps"][0]["classes"])
    head = ["cores", *(f"{c} p99 ms" for c in classes), f"{result['tier']} cpu used",
            "throttled periods/s", "throttled s/s", "tier p99 ms", "errors"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["steps"]:
        cells = [f"{r['cores']:g}"]
        cells += [cell(r["classes"][c]["p99_ms_median"]) for c in classes]
        cells += [cell(r["tier_cpu_used"], 2), cell(r["tier_throttled_periods_per_s"]),
                  cell(r["tier_throttled_s_per_s"], 3), cell(r["tier_p99_ms_median"]),
                  str(sum(c["errors"] for c in r["classes"].values()))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = result["steps"]
    x = [r["cores"] for r in steps]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for c in steps[0]["classes"]:
        ax.plot(x, [r["classes"][c]["p99_ms_median"] or np.nan for r in steps], "o-",
                label=f"{c} p99")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.invert_xaxis()
    ax.set_xlabel(f"{result['tier']} CPU quota (cores)")
    ax.set_ylabel("end-to-end p99 (ms, median of 1 s intervals)")
    ax2 = ax.twinx()
    ax2.bar(x, [r["tier_throttled_s_per_s"] for r in steps], width=[v * 0.15 for v in x],
            alpha=0.3, color="gray", label="throttled s/s")
    ax2.set_ylabel("tier throttled seconds per second")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"{result['app']} at {result['rps']:g} rps: squeezing {result['tier']}")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.rename(path)
    plt.close(fig)


def server_versions() -> dict[str, str | None]:
    out = {}
    for name, flag in (("redis-server", "--version"), ("memcached", "-V")):
        exe = shutil.which(name)
        out[name] = (subprocess.run([exe, flag], capture_output=True, text=True).stdout.strip()
                     if exe else None)
    return out


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    t0 = time.monotonic()
    try:
        result = run(a)
    except LeanstackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result["environment"] = {**environment(time.monotonic() - t0), "servers": server_versions()}
    RESULTS.mkdir(exist_ok=True)
    write_json(RESULTS / f"{NAME}.json", result)
    plot(result, RESULTS / f"{NAME}.png")
    print(markdown(result))
    print(f"\nwrote {RESULTS / (NAME + '.json')} and {NAME}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
