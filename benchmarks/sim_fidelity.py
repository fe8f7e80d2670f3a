"""Does the calibrated simulator predict the real local backend?

Same app (``--app``, by default the social network), same open-loop load, same allocation on
both backends, at three allocation levels: the static maximum, every tier at twice its measured
use, and every tier at its measured use / 0.85 (near saturation). Spans and observations of the
local run at the maximum are calibrated (``calibrate``) and drive the simulator. Compared per
class: p50 and p99 (goal: within 20%); per tier: CPU used (goal: within 10%). Per-interval
values are medians over the run after a warm-up, the same estimator on both sides.

The simulator runs three times per level: with the host CPU model (all tiers share the
calibration's ``host_cores``, the machine's core count), without it (each tier limited only by
its quota), to show what the host model buys, and with the host model and per-core CFS run
queues (``SimBackend(run_queues=True)``: slices, runtime stranded on a core the process left);
the throttled periods of all tiers are compared too, and how long a throttle lasted on average
(a tier that runs out of quota early in its period waits long). A fourth simulation per level
runs at the speed the machine had during the real run: the calibration rescaled
(``calibration.rescaled``) so that the simulated tiers burn the CPU the real tiers burned. It
takes one number from the held-out run (its total CPU, not its latency) and separates the
model's error from the machine's speed moving between the calibration run and that one. Recorded
around every local run: the 1-minute load average, a host-speed probe (``host_probe_ms``: a
fixed Python loop, before and after) and the machine's busy cores while the load ran
(``host_busy``) next to the tiers' own CPU (``tiers``); their difference is everything else (the
load generator, this process, the kernel, and other jobs: above ~0.5 core, other work pollutes
the local numbers). The probe is also sampled every second through each local run
(``HostProbeSampler``), to show whether the machine's speed held still while it ran.
``--repeats 2`` runs the three local levels a second time, same order, same allocations, same
arrivals: how far the real system's own percentiles move between two runs is the ceiling for
any simulator on that machine.

Needs the local backend (root, cgroup v1 cpu/cpuacct, redis-server, memcached). Run:
``.venv/bin/python benchmarks/sim_fidelity.py [--app NAME] [--quick] [--rps 80] [--duration 60]
[--repeats N] [--local-data DIR] [--calibration FILE|shipped] [--out FILE]
[--save-calibration FILE]``; writes ``benchmarks/results/sim_fidelity.json`` (or ``--out``)
and prints Markdown tables.
``--local-data DIR`` keeps the local runs' observations and spans in DIR and reuses them when
they are already there (to iterate on the simulator without re-measuring). ``--calibration``
uses a calibration fitted elsewhere (``shipped``: the app's shipped one) instead of fitting one
on this session's static-maximum run, so that no compared run is the one it was fitted on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import time
from pathlib import Path

from leanstack.atomic import write_json
from leanstack.microservices.app import AppSpec, app_names, load_app
from leanstack.microservices.calibrate import calibrate
from leanstack.microservices.calibration import (
    SHIPPED,
    load_calibration,
    rescaled,
    save_calibration,
    shipped_path,
)
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.observation import Allocation, Observation, Span, TierAllocation
from leanstack.microservices.sim import SimBackend
from leanstack.provenance import HostProbeSampler, benchmark_record, host_probe_ms

RESULTS = Path(__file__).parent / "results" / "sim_fidelity.json"
WARMUP = 3  # intervals dropped at the start of every run
LATENCY_GOAL, CPU_GOAL = 0.20, 0.10
MIN_CPU = 0.05
SPREAD_SEEDS = (1, 2)  # extra simulator seeds: how much one run's percentiles move by chance


def run(backend, app: AppSpec, allocation: Allocation, load: LoadSpec,
        host_busy: list[float] | None = None,
        probe: HostProbeSampler | None = None) -> tuple[list[Observation], list[Span]]:
    """Deploy, load, observe every interval of ``load``, close: observations after warm-up and
    every span recorded. ``host_busy`` gets the machine's busy cores while the load ran;
    ``probe`` samples the host's speed from the load's start (second 0 of its samples)."""
    try:
        backend.deploy(app, allocation)
        backend.start(load)
        t0, busy0 = time.monotonic(), host_busy_s()
        with probe or contextlib.nullcontext():
            obs = [backend.observe() for _ in range(int(load.duration_s / backend.interval_s))]
        if host_busy is not None:
            host_busy.append((host_busy_s() - busy0) / (time.monotonic() - t0))
        spans = backend.spans()
    finally:
        backend.close()
    return obs[WARMUP:], spans


def host_busy_s() -> float:
    """CPU-seconds the whole machine has been busy (all cores, from /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def summarise(obs: list[Observation]) -> dict:
    """Median over intervals of each class's p50 / p99; mean CPU used and requests/s per tier."""
    classes = {}
    for name in obs[0].classes:
        done = [o.classes[name] for o in obs if o.classes[name].completed]
        classes[name] = {k: statistics.median(c.latency_ms[k] for c in done) if done else None
                         for k in ("p50", "p99")}
    tiers = {name: statistics.fmean(o.tiers[name].cpu_used for o in obs) for name in obs[0].tiers}
    rps = {name: statistics.fmean(o.tiers[name].rps for o in obs) for name in obs[0].tiers}
    throttled = sum(t.throttled_periods for o in obs for t in o.tiers.values())
    throttled_s = sum(t.throttled_s for o in obs for t in o.tiers.values())
    return {"classes": classes, "tiers": tiers, "rps": rps, "throttled_periods": throttled,
            "throttled_s": throttled_s}


def throttle_length_ms(summary: dict) -> float | None:
    """Mean time a tier stayed throttled per throttled period, all tiers together: how early in
    a period the tiers ran out of quota (a tier with a backlog runs out early and waits long)."""
    periods = summary["throttled_periods"]
    return round(1000 * summary["throttled_s"] / periods, 1) if periods else None


def scaled(app: AppSpec, used: dict[str, float], utilisation: float) -> Allocation:
    """Every tier at ``used / utilisation`` cores, within [MIN_CPU, max_cpu]."""
    return Allocation({
        n: TierAllocation(min(s.max_cpu, max(MIN_CPU, round(used[n] / utilisation, 3))),
                          s.replicas)
        for n, s in app.services.items()})


def allocation_of(level: dict) -> Allocation:
    """The allocation a kept local run was made with."""
    return Allocation({t: TierAllocation(a["cpu"], int(a["replicas"]))
                       for t, a in level["allocation"].items()})


def cpu_spread(totals: list[float]) -> float:
    """How far the tiers' total CPU moved across the local runs, (max - min) / min. They serve
    the same arrivals, so a large spread means the machine's speed moved between them and no
    single calibration can fit them all."""
    return (max(totals) - min(totals)) / min(totals)


def rel_err(sim: float | None, local: float | None) -> float | None:
    if sim is None or local is None or local == 0:
        return None
    return (sim - local) / local


def local_runs(app: AppSpec, load: LoadSpec, data: Path | None, repeats: int = 1) -> dict:
    """The three local runs (observations after warm-up, spans of the run at max, load average
    around each run); each level is read from ``data`` when it holds it, else measured (and kept
    there, with the run's logs). With ``repeats`` > 1 the three levels are run again, in the
    same order and at the same allocations, ``repeats - 1`` more times (``repeats``: level name
    to the list of those later runs): how well the real system predicts itself."""
    from leanstack.microservices.runner import read_spans, write_spans

    def measured(name: str, alloc: Allocation) -> tuple[dict, list[Span]]:
        saved = data / f"{name}.json" if data else None
        if saved and saved.is_file():
            level = json.loads(saved.read_text())
            level["obs"] = [Observation.from_dict(o) for o in level["obs"]]
            return level, read_spans(data / "spans.jsonl") if name == "max" else []
        from leanstack.microservices.local import LocalBackend

        before, probe_before = os.getloadavg()[0], host_probe_ms()
        backend = LocalBackend(interval_s=1.0, run_dir=data / f"run-{name}" if data else None)
        busy: list[float] = []
        sampler = HostProbeSampler()
        obs, spans = run(backend, app, alloc, load, busy, sampler)
        level = {"allocation": alloc.to_dict(), "obs": obs,
                 "loadavg_1m": [round(before, 2), round(os.getloadavg()[0], 2)],
                 "host_probe_ms": [probe_before, host_probe_ms()],
                 "host_probe_during": sampler.record(),
                 "host_cores_busy": round(busy[0], 3)}
        if saved:
            if name == "max":
                write_spans(spans, data / "spans.jsonl")
            write_json(saved, {**level, "obs": [o.to_dict() for o in obs]})
        return level, spans

    levels = {}
    levels["max"], spans = measured("max", Allocation.static_max(app))
    used = summarise(levels["max"]["obs"])["tiers"]
    for name, utilisation in (("2x-used", 0.5), ("near-saturation", 0.85)):
        levels[name] = measured(name, scaled(app, used, utilisation))[0]
    again: dict[str, list[dict]] = {name: [] for name in levels}
    for r in range(2, repeats + 1):
        for name, level in levels.items():
            again[name].append(measured(f"{name}-repeat{r}", allocation_of(level))[0])
    return {"levels": levels, "repeats": again, "spans": spans}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--app", default="social-network", choices=app_names(),
                   help="a shipped app (default: social-network)")
    p.add_argument("--quick", action="store_true", help="20 s per run instead of --duration")
    p.add_argument("--rps", type=float, default=80.0, help="offered load (requests/s)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds per run")
    p.add_argument("--local-data", type=Path, default=None,
                   help="keep (or reuse) the local runs' observations and spans here")
    p.add_argument("--calibration", default=None,
                   help="a calibration file, or 'shipped' for the app's shipped one, instead of "
                        "fitting one on this session's static-maximum run")
    p.add_argument("--repeats", type=int, default=1,
                   help="run the three local levels this many times (2: how well the real "
                        "system predicts itself, the ceiling for any simulator)")
    p.add_argument("--out", type=Path, default=RESULTS, help="result JSON")
    p.add_argument("--save-calibration", type=Path, default=None,
                   help="also write the calibration used to this file")
    args = p.parse_args()
    if args.repeats < 1:
        p.error(f"--repeats must be at least 1, got {args.repeats}")
    app = load_app(args.app)
    duration = 20.0 if args.quick else args.duration
    load = LoadSpec("poisson", rps=args.rps, duration_s=duration, seed=0)
    runs = local_runs(app, load, args.local_data, args.repeats)
    levels = [(name, allocation_of(r)) for name, r in runs["levels"].items()]
    local = {name: summarise(r["obs"]) for name, r in runs["levels"].items()}
    again = {name: [summarise(r["obs"]) for r in rs] for name, rs in runs["repeats"].items()}
    if args.calibration is None:
        model = calibrate(app, runs["spans"], runs["levels"]["max"]["obs"])
    else:
        model = load_calibration(shipped_path(app.name) if args.calibration == SHIPPED
                                 else args.calibration)
    def simulated(alloc: Allocation, calibration: dict = model, seed: int = 0,
                  **backend: object) -> dict:
        """Summary of one simulated run of ``alloc`` under the local runs' load."""
        return summarise(run(SimBackend(interval_s=1.0, seed=seed, calibration=calibration,
                                        **backend), app, alloc, load)[0])

    sim = {name: simulated(alloc) for name, alloc in levels}
    sim_no_host = {name: simulated(alloc, host_cores=math.inf) for name, alloc in levels}
    sim_rq = {name: simulated(alloc, run_queues=True) for name, alloc in levels}

    def at_speed_of(real: dict, name: str, alloc: Allocation) -> dict:
        """The simulation of a level with the calibration rescaled so that its tiers burn what
        the real run's tiers burned: the model's latency at the speed the machine had then."""
        factor = sum(real["tiers"].values()) / sum(sim[name]["tiers"].values())
        return {"factor": factor, **simulated(alloc, rescaled(model, factor))}

    sim_at = {name: at_speed_of(local[name], name, alloc) for name, alloc in levels}
    sim_at_again = {name: [at_speed_of(a, name, alloc) for a in again[name]]
                    for name, alloc in levels}
    # run-to-run noise of one 60 s run: the same simulation with other seeds
    other_seeds = {name: [simulated(alloc, seed=seed) for seed in SPREAD_SEEDS]
                   for name, alloc in levels}

    rows_lat, rows_cpu = [], []
    for name, alloc in levels:
        for cls in app.classes:
            lo, si = local[name]["classes"][cls], sim[name]["classes"][cls]
            nh, rq = sim_no_host[name]["classes"][cls], sim_rq[name]["classes"][cls]
            row = {"level": name, "class": cls, **{
                f"{side}_{k}": v[k] for side, v in (("local", lo), ("sim", si))
                for k in ("p50", "p99")},
                "err_p50": rel_err(si["p50"], lo["p50"]), "err_p99": rel_err(si["p99"], lo["p99"]),
                "no_host_err_p50": rel_err(nh["p50"], lo["p50"]),
                "no_host_err_p99": rel_err(nh["p99"], lo["p99"]),
                "run_queues_err_p50": rel_err(rq["p50"], lo["p50"]),
                "run_queues_err_p99": rel_err(rq["p99"], lo["p99"]),
                "at_run_speed_factor": sim_at[name]["factor"],
                "at_run_speed_err_p50": rel_err(sim_at[name]["classes"][cls]["p50"], lo["p50"]),
                "at_run_speed_err_p99": rel_err(sim_at[name]["classes"][cls]["p99"], lo["p99"])}
            for k in ("p50", "p99"):
                row[f"seeds_err_{k}"] = sorted(rel_err(o["classes"][cls][k], lo[k])
                                               for o in [sim[name], *other_seeds[name]])
                repeated = [a["classes"][cls][k] for a in again[name]]
                row[f"local_repeats_{k}"] = repeated
                row[f"repeat_err_{k}"] = [rel_err(v, lo[k]) for v in repeated]
                row[f"sim_vs_repeat_err_{k}"] = [rel_err(si[k], v) for v in repeated]
                row[f"at_repeat_speed_err_{k}"] = [
                    rel_err(at["classes"][cls][k], v)
                    for at, v in zip(sim_at_again[name], repeated, strict=True)]
            rows_lat.append(row)
        for tier in app.services:
            lo, si = local[name]["tiers"][tier], sim[name]["tiers"][tier]
            rows_cpu.append({"level": name, "tier": tier, "cpu_limit": alloc.tiers[tier].cpu,
                             "local_cpu": lo, "sim_cpu": si, "err": rel_err(si, lo),
                             "no_host_err": rel_err(sim_no_host[name]["tiers"][tier], lo),
                             "run_queues_err": rel_err(sim_rq[name]["tiers"][tier], lo),
                             "at_run_speed_err": rel_err(sim_at[name]["tiers"][tier], lo),
                             "local_rps": local[name]["rps"][tier],
                             "sim_rps": sim[name]["rps"][tier]})

    def share_within(errs: list[float | None], goal: float) -> float:
        vals = [abs(e) for e in errs if e is not None]
        return sum(v <= goal for v in vals) / len(vals) if vals else 0.0

    def shares(prefix: str) -> dict[str, float]:
        return {
            "p50_within_goal": share_within([r[f"{prefix}err_p50"] for r in rows_lat],
                                            LATENCY_GOAL),
            "p99_within_goal": share_within([r[f"{prefix}err_p99"] for r in rows_lat],
                                            LATENCY_GOAL),
            "cpu_within_goal": share_within([r[f"{prefix}err"] for r in rows_cpu], CPU_GOAL)}

    def repeat_shares(key: str) -> dict[str, float]:
        return {f"{k}_within_goal": share_within([e for r in rows_lat for e in r[f"{key}_{k}"]],
                                                 LATENCY_GOAL) for k in ("p50", "p99")}

    result = {
        "benchmark": "sim_fidelity", "app": app.name, "local_repeats": args.repeats,
        "load": {"kind": "poisson", "rps": args.rps, "duration_s": duration, "seed": 0},
        "interval_s": 1.0, "warmup_intervals": WARMUP,
        "estimator": "per level: median over intervals of each class's per-interval p50/p99; "
                     "mean over intervals of each tier's CPU used",
        "goals": {"latency": LATENCY_GOAL, "cpu": CPU_GOAL},
        "loadavg_1m_around_local_runs": {n: r["loadavg_1m"] for n, r in runs["levels"].items()},
        "host_probe_ms_around_local_runs": {n: r.get("host_probe_ms")
                                            for n, r in runs["levels"].items()},
        "host_probe_ms_during_local_runs": {n: r.get("host_probe_during")
                                            for n, r in runs["levels"].items()},
        "host_vs_tier_cores_in_local_runs": {
            n: {"host_busy": r.get("host_cores_busy"),
                "tiers": round(sum(local[n]["tiers"].values()), 3)}
            for n, r in runs["levels"].items()},
        "calibrated_from": ("this session's static-maximum run" if args.calibration is None
                            else "the shipped calibration" if args.calibration == SHIPPED
                            else Path(args.calibration).name),
        "calibration": model,
        "allocations": {name: alloc.to_dict() for name, alloc in levels},
        "latency": rows_lat, "cpu": rows_cpu,
        "summary": {
            **shares(""),
            "without_host_model": shares("no_host_"),
            "with_run_queues": shares("run_queues_"),
            "at_run_speed": shares("at_run_speed_"),
            "throttled_periods": {n: {"local": local[n]["throttled_periods"],
                                      "sim": sim[n]["throttled_periods"],
                                      "sim_run_queues": sim_rq[n]["throttled_periods"],
                                      "sim_at_run_speed": sim_at[n]["throttled_periods"]}
                                  for n, _ in levels},
            "throttle_length_ms": {n: {"local": throttle_length_ms(local[n]),
                                       "sim": throttle_length_ms(sim[n]),
                                       "sim_at_run_speed": throttle_length_ms(sim_at[n])}
                                   for n, _ in levels},
            "total_cpu_local": {n: sum(local[n]["tiers"].values()) for n, _ in levels},
            "local_cpu_spread": cpu_spread([sum(local[n]["tiers"].values()) for n, _ in levels]),
            "total_cpu_sim": {n: sum(sim[n]["tiers"].values()) for n, _ in levels},
            **({"local_repeats_vs_first_run": repeat_shares("repeat_err"),
                "sim_vs_local_repeats": repeat_shares("sim_vs_repeat_err"),
                "sim_at_repeat_speed_vs_local_repeats": repeat_shares("at_repeat_speed_err"),
                "total_cpu_local_repeats": {n: [sum(a["tiers"].values()) for a in again[n]]
                                            for n, _ in levels}}
               if args.repeats > 1 else {}),
        },
        **benchmark_record(("leanstack", "numpy", "scipy")),
    }
    write_json(args.out, result)
    if args.save_calibration:
        save_calibration(model, args.save_calibration)

    print(f"{app.name}, Poisson {args.rps:g} req/s, {duration:g} s per run "
          f"(first {WARMUP} s dropped); load average around the local runs: "
          f"{result['loadavg_1m_around_local_runs']}\n")
    print("| level | class | local p50 | sim p50 | err (seeds 0-2) | local p99 | sim p99 | "
          "err (seeds 0-2) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows_lat:
        spread = {k: "..".join(_pct(e) for e in r[f"seeds_err_{k}"][::2]) for k in ("p50", "p99")}
        print(f"| {r['level']} | {r['class']} | {_ms(r['local_p50'])} | {_ms(r['sim_p50'])} | "
              f"{_pct(r['err_p50'])} ({spread['p50']}) | {_ms(r['local_p99'])} | "
              f"{_ms(r['sim_p99'])} | {_pct(r['err_p99'])} ({spread['p99']}) |")
    print("\n| level | tier | limit | local cpu | sim cpu | err | local rps | sim rps |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows_cpu:
        print(f"| {r['level']} | {r['tier']} | {r['cpu_limit']:.2f} | {r['local_cpu']:.3f} | "
              f"{r['sim_cpu']:.3f} | {_pct(r['err'])} | {r['local_rps']:.1f} | "
              f"{r['sim_rps']:.1f} |")
    s = result["summary"]
    print("\n| level | throttled periods, all tiers: local | sim | sim with run queues | "
          "sim at the run's speed | ms throttled per throttled period: local | sim | "
          "sim at the run's speed |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for n, v in s["throttled_periods"].items():
        length = s["throttle_length_ms"][n]
        print(f"| {n} | {v['local']} | {v['sim']} | {v['sim_run_queues']} | "
              f"{v['sim_at_run_speed']} | {_ms(length['local'])} | {_ms(length['sim'])} | "
              f"{_ms(length['sim_at_run_speed'])} |")
    for label, v in (("with host model", s), ("without host model", s["without_host_model"]),
                     ("with host model and run queues", s["with_run_queues"]),
                     ("at each run's speed (calibration rescaled to the run's CPU)",
                      s["at_run_speed"])):
        print(f"\nwithin goal, {label}: p50 {v['p50_within_goal']:.0%}, p99 "
              f"{v['p99_within_goal']:.0%} (±{LATENCY_GOAL:.0%}); tier CPU "
              f"{v['cpu_within_goal']:.0%} (±{CPU_GOAL:.0%})", end="")
    if args.repeats > 1:
        print("\n\n| level | class | local p50: run 1, repeats | err | "
              "local p99: run 1, repeats | err |")
        print("|---|---|---|---|---|---|")
        for r in rows_lat:
            cells = [f"{_ms(r[f'local_{k}'])}, {', '.join(_ms(v) for v in r[f'local_repeats_{k}'])}"
                     f" | {', '.join(_pct(e) for e in r[f'repeat_err_{k}'])}"
                     for k in ("p50", "p99")]
            print(f"| {r['level']} | {r['class']} | {cells[0]} | {cells[1]} |")
        for label, key in (("the real system's repeats against its first run",
                            "local_repeats_vs_first_run"),
                           ("the simulator against the repeats", "sim_vs_local_repeats"),
                           ("the simulator at each repeat's speed against it",
                            "sim_at_repeat_speed_vs_local_repeats")):
            v = s[key]
            print(f"within goal, {label}: p50 {v['p50_within_goal']:.0%}, "
                  f"p99 {v['p99_within_goal']:.0%}")
    factors = ", ".join(f"{n} {sim_at[n]['factor']:.2f}" for n, _ in levels)
    print(f"\nspeed factors (the real run's tiers' CPU over the simulation's): {factors}")
    totals = ", ".join(f"{v:.2f}" for v in s["total_cpu_local"].values())
    print(f"\nthe tiers' total CPU across the local runs (the same arrivals) moved by "
          f"{s['local_cpu_spread']:.0%}: {totals} cores")
    print(f"wrote {args.out}")


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:+.0%}"


if __name__ == "__main__":
    main()
