"""Does the calibrated simulator predict the real local backend?

Same app (social-network), same open-loop load, same allocation on both backends, at three
allocation levels: the static maximum, every tier at twice its measured use, and every tier at
its measured use / 0.85 (near saturation). Spans and observations of the local run at the
maximum are calibrated (``calibrate``) and drive the simulator. Compared per class: p50 and p99
(goal: within 20%); per tier: CPU used (goal: within 10%). Per-interval values are medians over
the run after a warm-up, the same estimator on both sides.

Needs the local backend (root, cgroup v1 cpu/cpuacct, redis-server, memcached). Run:
``.venv/bin/python benchmarks/sim_fidelity.py [--quick] [--rps 100]``; writes
``benchmarks/results/sim_fidelity.json`` and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from leanstack.microservices.app import AppSpec, load_app
from leanstack.microservices.calibrate import calibrate
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.observation import Allocation, Observation, Span, TierAllocation
from leanstack.microservices.sim import SimBackend

RESULTS = Path(__file__).parent / "results" / "sim_fidelity.json"
APP = "social-network"
WARMUP = 3  # intervals dropped at the start of every run
LATENCY_GOAL, CPU_GOAL = 0.20, 0.10
MIN_CPU = 0.05


def run(backend, app: AppSpec, allocation: Allocation,
        load: LoadSpec) -> tuple[list[Observation], list[Span]]:
    """Deploy, load, observe every interval of ``load``, close: observations after warm-up and
    every span recorded."""
    try:
        backend.deploy(app, allocation)
        backend.start(load)
        obs = [backend.observe() for _ in range(int(load.duration_s / backend.interval_s))]
        spans = backend.spans()
    finally:
        backend.close()
    return obs[WARMUP:], spans


def summarise(obs: list[Observation]) -> dict:
    """Median over intervals of each class's p50 / p99; mean CPU used and requests/s per tier."""
    classes = {}
    for name in obs[0].classes:
        done = [o.classes[name] for o in obs if o.classes[name].completed]
        classes[name] = {k: statistics.median(c.latency_ms[k] for c in done) if done else None
                         for k in ("p50", "p99")}
    tiers = {name: statistics.fmean(o.tiers[name].cpu_used for o in obs) for name in obs[0].tiers}
    rps = {name: statistics.fmean(o.tiers[name].rps for o in obs) for name in obs[0].tiers}
    return {"classes": classes, "tiers": tiers, "rps": rps}


def scaled(app: AppSpec, used: dict[str, float], utilisation: float) -> Allocation:
    """Every tier at ``used / utilisation`` cores, within [MIN_CPU, max_cpu]."""
    return Allocation({
        n: TierAllocation(min(s.max_cpu, max(MIN_CPU, round(used[n] / utilisation, 3))),
                          s.replicas)
        for n, s in app.services.items()})


def rel_err(sim: float | None, local: float | None) -> float | None:
    if sim is None or local is None or local == 0:
        return None
    return (sim - local) / local


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="20 s per run instead of 60 s")
    p.add_argument("--rps", type=float, default=100.0, help="offered load (requests/s)")
    args = p.parse_args()
    try:
        from leanstack.microservices.local import LocalBackend
    except ImportError:
        sys.exit("the local backend (leanstack.microservices.local) is not available")
    app = load_app(APP)
    duration = 20.0 if args.quick else 60.0
    load = LoadSpec("poisson", rps=args.rps, duration_s=duration, seed=0)

    levels = [("max", Allocation.static_max(app))]
    obs, spans = run(LocalBackend(interval_s=1.0), app, levels[0][1], load)
    local = {"max": summarise(obs)}
    model = calibrate(app, spans, obs)
    used = local["max"]["tiers"]
    levels += [("2x-used", scaled(app, used, 0.5)), ("near-saturation", scaled(app, used, 0.85))]
    for name, alloc in levels[1:]:
        local[name] = summarise(run(LocalBackend(interval_s=1.0), app, alloc, load)[0])
    sim = {name: summarise(run(SimBackend(interval_s=1.0, seed=0, calibration=model), app,
                               alloc, load)[0])
           for name, alloc in levels}

    rows_lat, rows_cpu = [], []
    for name, alloc in levels:
        for cls in app.classes:
            lo, si = local[name]["classes"][cls], sim[name]["classes"][cls]
            rows_lat.append({"level": name, "class": cls, **{
                f"{side}_{k}": v[k] for side, v in (("local", lo), ("sim", si))
                for k in ("p50", "p99")},
                "err_p50": rel_err(si["p50"], lo["p50"]), "err_p99": rel_err(si["p99"], lo["p99"])})
        for tier in app.services:
            lo, si = local[name]["tiers"][tier], sim[name]["tiers"][tier]
            rows_cpu.append({"level": name, "tier": tier, "cpu_limit": alloc.tiers[tier].cpu,
                             "local_cpu": lo, "sim_cpu": si, "err": rel_err(si, lo),
                             "local_rps": local[name]["rps"][tier],
                             "sim_rps": sim[name]["rps"][tier]})

    def share_within(errs: list[float | None], goal: float) -> float:
        vals = [abs(e) for e in errs if e is not None]
        return sum(v <= goal for v in vals) / len(vals) if vals else 0.0

    result = {
        "benchmark": "sim_fidelity", "app": APP, "rps": args.rps, "duration_s": duration,
        "warmup_intervals": WARMUP, "goals": {"latency": LATENCY_GOAL, "cpu": CPU_GOAL},
        "calibration": model,
        "allocations": {name: alloc.to_dict() for name, alloc in levels},
        "latency": rows_lat, "cpu": rows_cpu,
        "summary": {
            "p50_within_goal": share_within([r["err_p50"] for r in rows_lat], LATENCY_GOAL),
            "p99_within_goal": share_within([r["err_p99"] for r in rows_lat], LATENCY_GOAL),
            "cpu_within_goal": share_within([r["err"] for r in rows_cpu], CPU_GOAL),
            "total_cpu_local": {n: sum(local[n]["tiers"].values()) for n, _ in levels},
            "total_cpu_sim": {n: sum(sim[n]["tiers"].values()) for n, _ in levels},
        },
        "environment": {"python": platform.python_version(), "numpy": version("numpy"),
                        "leanstack": version("leanstack"), "cpu_count": os.cpu_count()},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _write_atomic(RESULTS, json.dumps(result, indent=1))

    print("| level | class | local p50 | sim p50 | err | local p99 | sim p99 | err |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows_lat:
        print(f"| {r['level']} | {r['class']} | {_ms(r['local_p50'])} | {_ms(r['sim_p50'])} | "
              f"{_pct(r['err_p50'])} | {_ms(r['local_p99'])} | {_ms(r['sim_p99'])} | "
              f"{_pct(r['err_p99'])} |")
    print("\n| level | tier | limit | local cpu | sim cpu | err | local rps | sim rps |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows_cpu:
        print(f"| {r['level']} | {r['tier']} | {r['cpu_limit']:.2f} | {r['local_cpu']:.3f} | "
              f"{r['sim_cpu']:.3f} | {_pct(r['err'])} | {r['local_rps']:.1f} | "
              f"{r['sim_rps']:.1f} |")
    s = result["summary"]
    print(f"\nwithin goal: p50 {s['p50_within_goal']:.0%}, p99 {s['p99_within_goal']:.0%} "
          f"(±{LATENCY_GOAL:.0%}); tier CPU {s['cpu_within_goal']:.0%} (±{CPU_GOAL:.0%})")
    print(f"wrote {RESULTS.relative_to(Path(__file__).parent.parent)}")


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:+.0%}"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.fchmod(fd, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
