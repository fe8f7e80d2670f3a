"""The microservice substrate's demo section: the social network under Kubernetes HPA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

err = Console(stderr=True)


def demo_backend() -> str:
    """``local`` when real processes under cgroup limits can run here, else ``sim``."""
    from leanstack.microservices.runner import local_unavailable

    why_not = local_unavailable()
    if why_not is None:
        return "local"
    err.print(f"[yellow]note:[/yellow] the local backend cannot run here ({why_not}); "
              "running on the simulator instead", highlight=False, soft_wrap=True)
    return "sim"


def run_demo(out_dir: Path, duration: float = 90.0, rps: float = 50.0) -> dict[str, Any]:
    """Social network on the local backend under a diurnal load, managed by Kubernetes HPA."""
    from leanstack.microservices.app import load_app
    from leanstack.microservices.controllers import HPAController
    from leanstack.microservices.load import LoadSpec
    from leanstack.microservices.runner import make_backend, run_experiment

    backend = demo_backend()
    time_scale = min(1.0, duration / 900.0)
    spec = load_app("social-network")
    ctrl = HPAController(time_scale=time_scale)
    load = LoadSpec("diurnal", rps, duration, seed=0)
    print(f"{spec.name} ({len(spec.services)} tiers) on the {backend} backend, diurnal load "
          f"around {rps:g} req/s for {duration:g} s, Kubernetes HPA with time constants "
          f"x{time_scale:.3g} (sync {ctrl.sync_s:.3g} s, scale-down window "
          f"{ctrl.stabilization_s:.3g} s)")
    out_json, out_html = out_dir / "result.json", out_dir / "report.html"
    result = run_experiment(spec, make_backend(backend), ctrl, load, out_json,
                            report_html=out_html)
    s = result["summary"]
    print(f"violation rate {s['violation_rate']:.1%}, mean CPU {s['mean_cpu']:.2f} cores "
          f"(static max: {sum(t.max_cpu for t in spec.services.values()):g}), "
          f"{s['requests']} requests")
    print(f"report: {out_html.resolve()}")
    return result
