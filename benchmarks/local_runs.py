"""Helpers the local-backend benchmarks share: check the backend can run, run controllers one
after the other on the same arrivals, print their table."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from leanstack.microservices.app import AppSpec
from leanstack.microservices.controller import Controller
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.runner import local_unavailable, make_backend, run_experiment

SUMMARY_KEYS = ("violation_rate", "violation_rate_after_warmup", "mean_cpu", "mean_cpu_used",
                "errors", "requests", "p99_ms", "decision_ms_median")


def require_local() -> None:
    """Exit with the reason when real processes under cgroup limits cannot run here."""
    why_not = local_unavailable()
    if why_not:
        sys.exit(f"local backend unavailable: {why_not}")


def run_local(app: AppSpec, controllers: list[Controller], load: LoadSpec) -> dict[str, Any]:
    """Each controller on the local backend under ``load``; controller name -> summary row."""
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for ctrl in controllers:
            res = run_experiment(app, make_backend("local"), ctrl, load,
                                 Path(tmp) / f"{ctrl.name}.json", progress=sys.stderr.isatty())
            s = res["summary"]
            runs[ctrl.name] = {k: s.get(k) for k in SUMMARY_KEYS}
            print(f"  {ctrl.name}: {s['violation_rate']:.1%} violations, {s['mean_cpu']:.2f} "
                  "cores", file=sys.stderr)
    return runs


def print_table(runs: dict[str, Any]) -> None:
    """The Markdown table of violation rate, mean CPU and decision time per controller."""
    print("| controller | violation rate | after the first minute | mean CPU (cores) | "
          "decision ms (median) |")
    print("|---|---|---|---|---|")
    for name, r in runs.items():
        late = r.get("violation_rate_after_warmup")
        print(f"| {name} | {r['violation_rate']:.1%} | "
              f"{'–' if late is None else f'{late:.1%}'} | {r['mean_cpu']:.2f} | "
              f"{r['decision_ms_median']:.2f} |")
