"""What the local-backend benchmarks share: their command-line options, each controller run on
the same diurnal arrivals per seed with the machine's load average and a host-speed probe
recorded around every run,
the result file rewritten after each run, and the per-seed and across-seeds tables.

Runs go seed by seed (every controller on seed 0, then on seed 1, ...), so an interrupted
benchmark keeps complete comparisons for the seeds it finished. ``--hpa-from`` takes the HPA runs
from an earlier local benchmark's result with the same app, load, seeds and options instead of
running HPA again (their load averages show how quiet the machine was then).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leanstack.atomic import read_json, write_json
from leanstack.cli import parse_options
from leanstack.errors import LeanstackError
from leanstack.microservices.app import AppSpec, load_app
from leanstack.microservices.controller import Controller
from leanstack.microservices.controllers import make_controller
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.result import environment
from leanstack.microservices.runner import local_unavailable, make_backend, run_experiment
from leanstack.provenance import HostProbeSampler, host_probe_ms

RESULTS = Path(__file__).parent / "results"
SUMMARY_KEYS = ("violation_rate", "violation_rate_after_warmup", "mean_cpu", "mean_cpu_used",
                "errors", "requests", "p99_ms", "decision_ms_median")
SEED_METRICS = ("violation_rate", "violation_rate_after_warmup", "mean_cpu")
AMPLITUDE = 0.5
"""The diurnal swing around the mean rate (100 req/s -> 50..150 req/s)."""
BASELINE = "hpa"
HPA_DEFAULTS = {"time_scale": "0.1"}
"""HPA's time constants x0.1: a 1.5 s sync and a 30 s scale-down window fit a 5-minute run."""


@dataclass(frozen=True)
class LocalSettings:
    """What one local benchmark runs, checked before anything starts."""

    app: AppSpec
    seeds: list[int]
    duration_s: float
    rps: float
    controllers: list[str]
    backend_options: dict[str, str]
    hpa_options: dict[str, str]
    out: Path
    runs_dir: Path | None
    hpa_runs: dict[int, dict[str, Any]]  # seed -> a reused HPA row (--hpa-from), else empty

    def load(self, seed: int) -> LoadSpec:
        """The diurnal arrivals of ``seed`` (one compressed day per run)."""
        return LoadSpec("diurnal", self.rps, self.duration_s, seed=seed, amplitude=AMPLITUDE)


def add_arguments(ap: argparse.ArgumentParser, controllers: tuple[str, ...],
                  default_controllers: str) -> None:
    """The options every local benchmark takes."""
    ap.add_argument("--app", default="social-network",
                    help="app name or path to an app .toml (default social-network)")
    ap.add_argument("--seeds", default="0,1,2",
                    help="comma-separated arrival seeds, one diurnal sequence each (default 0,1,2)")
    ap.add_argument("--duration", type=float, default=300.0, help="seconds per run (default 300)")
    ap.add_argument("--rps", type=float, default=100.0,
                    help="mean request rate; the diurnal load swings ±50%% around it")
    ap.add_argument("--controllers", default=default_controllers,
                    help=f"comma-separated subset of {','.join(controllers)} "
                         f"(default {default_controllers})")
    ap.add_argument("--hpa-opt", action="append", default=[], metavar="KEY=VALUE",
                    help="HPA option (repeatable), e.g. initial_replicas=2; "
                         "default time_scale=0.1")
    ap.add_argument("--backend-opt", action="append", default=[], metavar="KEY=VALUE",
                    help="local backend option (repeatable), e.g. cfs_period_ms=20, cfs_burst=1")
    ap.add_argument("--out", type=Path, default=None,
                    help="result JSON (default benchmarks/results/<benchmark>_<app>.json)")
    ap.add_argument("--keep-runs", type=Path, default=None, metavar="DIR",
                    help="also keep every run's full result (timeline) in DIR")
    ap.add_argument("--hpa-from", type=Path, default=None, metavar="JSON",
                    help="reuse the HPA runs of this earlier local benchmark result (same app, "
                         "load, seeds and options) instead of running HPA again")


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; anything else is a one-line error."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not (part.isascii() and part.isdigit()):
            raise LeanstackError(f"--seeds '{text}': '{part}' is not a whole number >= 0 — "
                                 "write e.g. --seeds 0,1,2")
        if int(part) in seeds:
            raise LeanstackError(f"--seeds '{text}' repeats seed {int(part)} — list each once")
        seeds.append(int(part))
    return seeds


def parse_controllers(text: str, available: tuple[str, ...]) -> list[str]:
    """A comma-separated subset of ``available``, in the order given."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in available]
    if not names or unknown or len(set(names)) != len(names):
        raise LeanstackError(f"--controllers '{text}': give each of {', '.join(available)} at "
                             "most once, comma-separated")
    return names


def settings_from(args: argparse.Namespace, benchmark: str,
                  available: tuple[str, ...]) -> LocalSettings:
    """Check every shared option (and build each seed's load once) before any run starts."""
    app = load_app(args.app)
    backend_options = parse_options(args.backend_opt, "--backend-opt", "cfs_period_ms=20")
    make_backend("local", 1.0, **backend_options)  # unknown option or bad value: one line now
    hpa_options = {**HPA_DEFAULTS, **parse_options(args.hpa_opt, "--hpa-opt", "time_scale=0.1")}
    make_controller(BASELINE, **hpa_options)
    settings = LocalSettings(
        app=app, seeds=parse_seeds(args.seeds), duration_s=args.duration, rps=args.rps,
        controllers=parse_controllers(args.controllers, available),
        backend_options=backend_options, hpa_options=hpa_options,
        out=args.out or RESULTS / f"{benchmark}_{app.name}.json", runs_dir=args.keep_runs,
        hpa_runs={})
    for seed in settings.seeds:
        settings.load(seed)
    if args.hpa_from is not None:
        if BASELINE not in settings.controllers:
            raise LeanstackError("--hpa-from reuses HPA runs, but --controllers leaves hpa out — "
                                 "add hpa or drop --hpa-from")
        settings.hpa_runs.update(hpa_runs_from(args.hpa_from, settings))
    return settings


def hpa_runs_from(path: Path, settings: LocalSettings) -> dict[int, dict[str, Any]]:
    """Seed -> HPA row of the local benchmark result in ``path``; a one-line error unless it ran
    the same app, load, HPA and backend options and has an HPA run for every seed asked for."""
    how = "a local benchmark (benchmarks/ursa_local.py or sinan_local.py) with hpa in --controllers"
    old = read_json(path, dict, "local benchmark result", how)
    ours = {"app": settings.app.name, "rps": settings.rps, "duration_s": settings.duration_s,
            "amplitude": AMPLITUDE, "hpa_options": settings.hpa_options,
            "backend_options": settings.backend_options}
    theirs = {"app": old.get("app"), **{k: old.get("load", {}).get(k)
                                        for k in ("rps", "duration_s", "amplitude")},
              "hpa_options": old.get("hpa_options"),
              "backend_options": old.get("backend_options")}
    differ = [k for k in ours if ours[k] != theirs[k]]
    if differ:
        raise LeanstackError(f"{path} ran {', '.join(f'{k}={theirs[k]}' for k in differ)}; this "
                             f"run asks {', '.join(f'{k}={ours[k]}' for k in differ)} — run HPA "
                             "here (drop --hpa-from)")
    rows = {r["seed"]: r for r in old.get("runs", []) if r.get("controller") == BASELINE}
    missing = [s for s in settings.seeds if s not in rows]
    if missing:
        raise LeanstackError(f"{path} has no HPA run for seed(s) "
                             f"{', '.join(map(str, missing))} — run HPA here (drop --hpa-from)")
    return {s: {**rows[s], "reused_from": path.name} for s in settings.seeds}


def require_local() -> None:
    """Raise the reason when real processes under cgroup limits cannot run here."""
    why_not = local_unavailable()
    if why_not:
        raise LeanstackError(f"local backend unavailable: {why_not}")


def run_one(settings: LocalSettings, controller: Controller, seed: int,
            label: str) -> dict[str, Any]:
    """One run on a fresh local deployment: the summary row, its wall time, and the 1/5/15-minute
    load averages and a host-speed probe (:func:`host_probe_ms`) just before and just after it,
    and the probe sampled every second all through it (:class:`HostProbeSampler`)."""
    before, probe_before = os.getloadavg(), host_probe_ms()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, HostProbeSampler() as sampler:
        runs_dir = settings.runs_dir or Path(tmp)
        res = run_experiment(settings.app, make_backend("local", 1.0, **settings.backend_options),
                             controller, settings.load(seed), runs_dir / f"{label}_seed{seed}.json",
                             progress=sys.stderr.isatty())
    s = res["summary"]
    return {"seed": seed, "controller": label, **{k: s.get(k) for k in SUMMARY_KEYS},
            "class_violation_rate": {n: c["violation_rate"] for n, c in s["classes"].items()},
            "wall_s": round(time.monotonic() - t0, 1),
            "loadavg_before": [round(x, 2) for x in before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "host_probe_ms": [probe_before, host_probe_ms()],
            "host_probe_during": sampler.record()}


def run_benchmark(benchmark: str, settings: LocalSettings,
                  factories: dict[str, Callable[[], Controller]],
                  extra: dict[str, Any]) -> dict[str, Any]:
    """Every chosen controller on every seed; the result (``extra`` included) is rewritten after
    each run, ``"completed": true`` once all ran."""
    t0 = time.monotonic()
    rows: list[dict[str, Any]] = []

    def save(completed: bool) -> dict[str, Any]:
        result = {"benchmark": benchmark, "app": settings.app.name, "completed": completed,
                  "load": {"pattern": "diurnal", "rps": settings.rps,
                           "duration_s": settings.duration_s, "amplitude": AMPLITUDE,
                           "seeds": settings.seeds},
                  "controllers": settings.controllers, "backend_options": settings.backend_options,
                  "hpa_options": settings.hpa_options, **extra,
                  "runs": rows, "summary": summarize(rows),
                  "environment": environment(time.monotonic() - t0, sys.argv)}
        write_json(settings.out, result)
        return result

    for seed in settings.seeds:
        for name in settings.controllers:
            reused = settings.hpa_runs.get(seed) if name == BASELINE else None
            row = reused or run_one(settings, factories[name](), seed, name)
            rows.append(row)
            source = f" (from {row['reused_from']})" if "reused_from" in row else ""
            print(f"  seed {seed} {name}{source}: {row['violation_rate']:.1%} violations, "
                  f"{row['mean_cpu']:.2f} cores (load average {row['loadavg_before'][0]:.2f} "
                  f"-> {row['loadavg_after'][0]:.2f})", file=sys.stderr)
            save(completed=False)
    return save(completed=True)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per controller, across seeds: the mean and the per-seed values of the violation rate
    (also after the first minute) and mean CPU, and of CPU over HPA's on the same seed."""
    hpa_cpu = {r["seed"]: r["mean_cpu"] for r in rows if r["controller"] == BASELINE}
    out: dict[str, Any] = {}
    for name in dict.fromkeys(r["controller"] for r in rows):
        mine = [r for r in rows if r["controller"] == name]
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in mine]}
        for key in SEED_METRICS:
            entry[key] = _across_seeds({r["seed"]: r[key] for r in mine})
        if name != BASELINE:
            entry["cpu_vs_hpa"] = _across_seeds({r["seed"]: r["mean_cpu"] / hpa_cpu[r["seed"]]
                                                 for r in mine if hpa_cpu.get(r["seed"])})
        out[name] = entry
    return out


def _across_seeds(per_seed: dict[int, float | None]) -> dict[str, Any]:
    values = [v for v in per_seed.values() if v is not None]
    return {"mean": statistics.fmean(values) if values else None,
            "per_seed": {str(s): v for s, v in per_seed.items()}}


def print_tables(result: dict[str, Any]) -> None:
    """The Markdown tables: one row per run, then the across-seeds summary."""
    hpa_cpu = {r["seed"]: r["mean_cpu"] for r in result["runs"] if r["controller"] == BASELINE}
    print("| seed | controller | violation rate | after the first minute | mean CPU (cores) | "
          "CPU / HPA | decision ms (median) | load average before -> after |")
    print("|---|---|---|---|---|---|---|---|")
    for r in result["runs"]:
        base = hpa_cpu.get(r["seed"])
        ratio = f"{r['mean_cpu'] / base:.2f}" if base and r["controller"] != BASELINE else "–"
        decision = r["decision_ms_median"]
        print(f"| {r['seed']} | {r['controller']} | {_pct(r['violation_rate'])} | "
              f"{_pct(r['violation_rate_after_warmup'])} | {r['mean_cpu']:.2f} | {ratio} | "
              f"{'–' if decision is None else f'{decision:.2f}'} | "
              f"{r['loadavg_before'][0]:.2f} -> {r['loadavg_after'][0]:.2f} |")
    print()
    print("| controller | violation rate, mean (per seed) | after the first minute | "
          "mean CPU (cores) | CPU / HPA |")
    print("|---|---|---|---|---|")
    for name, s in result["summary"].items():
        ratio = _spread(s["cpu_vs_hpa"], "{:.2f}") if "cpu_vs_hpa" in s else "–"
        print(f"| {name} | {_spread(s['violation_rate'], '{:.1%}')} | "
              f"{_spread(s['violation_rate_after_warmup'], '{:.1%}')} | "
              f"{_spread(s['mean_cpu'], '{:.2f}')} | {ratio} |")


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _spread(entry: dict[str, Any], fmt: str) -> str:
    if entry["mean"] is None:
        return "–"
    per_seed = " / ".join("–" if v is None else fmt.format(v) for v in entry["per_seed"].values())
    return f"{fmt.format(entry['mean'])} ({per_seed})"


Prepare = Callable[[LocalSettings], tuple[dict[str, Callable[[], Controller]], dict[str, Any]]]
"""A benchmark's set-up: from the checked settings to its controller factories and the extra
entries of its result."""


def run_main(benchmark: str, args: argparse.Namespace, controllers: tuple[str, ...],
             prepare: Prepare) -> int:
    """Check the settings, set up (``prepare``), run every controller on every seed and print
    the tables; a one-line error (exit 2) for bad input, and Ctrl-C keeps the finished runs
    (exit 130)."""
    settings = None
    try:
        settings = settings_from(args, benchmark, controllers)
        factories, extra = prepare(settings)
        result = run_benchmark(benchmark, settings, factories, extra)
    except LeanstackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        kept = f" are in {settings.out}" if settings else ""
        print(f"interrupted — runs finished so far, if any{kept}", file=sys.stderr)
        return 130
    print_tables(result)
    print(f"result: {settings.out}", file=sys.stderr)
    return 0
