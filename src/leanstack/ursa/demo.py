"""Ursa's demo section: profile, plan, then the same app and load as the HPA run, side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from leanstack.errors import LeanstackError
from leanstack.microservices.app import AppSpec, load_app
from leanstack.microservices.demo import demo_backend
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.runner import make_backend, run_experiment
from leanstack.ursa.controller import UrsaController
from leanstack.ursa.plan import make_plan
from leanstack.ursa.profile import AppProfile, ProfileSettings, profile_app

# Fast profiles measured on a quiet 2-core machine, named <app>-<backend>-<rps>rps.json: a first
# demo run at one of these loads plans from it instead of spending minutes profiling.
SHIPPED_PROFILES = Path(__file__).parent / "profiles"

# Controller options on real processes: the throttle guard and the CFS period floor, each chosen
# on a tuning seed that no reported run used (docs/ursa.md, "Local backend: real processes").
REAL_PROCESS_OPTIONS: dict[str, float] = {"throttle_guard": 0.5, "throttle_risk": 1e-4}


def run_demo(out_dir: Path, duration: float = 90.0, rps: float = 50.0,
             hpa_result: Path | None = None) -> dict[str, Any]:
    """Profile the social network (cached in ``out_dir``), plan, run Ursa; compare with HPA."""

    backend = demo_backend()
    spec = load_app("social-network")
    profile = demo_profile(out_dir, spec, backend, rps)
    plan = make_plan(spec, profile)
    plan.save(out_dir / "plan.json")
    print(f"plan: {plan.cpu_per_rps * 100:.2f} cores per 100 req/s before headroom "
          f"(MILP solved in {plan.solve_ms:.0f} ms)")
    options = REAL_PROCESS_OPTIONS if backend == "local" else {}
    if options:
        print("controller options for real processes: "
              + ", ".join(f"{k}={v:g}" for k, v in options.items()))
    load = LoadSpec("diurnal", rps, duration, seed=0)
    result = run_experiment(spec, make_backend(backend), UrsaController(plan, **options), load,
                            out_dir / "result.json", report_html=out_dir / "report.html")
    s = result["summary"]
    rows = [("ursa", s)]
    if hpa_result is not None and hpa_result.is_file():
        rows.insert(0, ("hpa", json.loads(hpa_result.read_text())["summary"]))
    print(f"{'controller':<11}{'violations':>11}{'after 1 min':>12}{'mean CPU':>10}"
          f"{'decision ms':>13}")
    for name, r in rows:
        late = r.get("violation_rate_after_warmup")
        print(f"{name:<11}{r['violation_rate']:>11.1%}"
              f"{'–' if late is None else f'{late:.1%}':>12}{r['mean_cpu']:>10.2f}"
              f"{r['decision_ms_median'] or 0:>13.2f}")
    print(f"report: {(out_dir / 'report.html').resolve()}")
    return result


def demo_profile(out_dir: Path, spec: AppSpec, backend: str, rps: float) -> AppProfile:
    """The profile an earlier demo run cached in ``out_dir``, else the shipped one, else new."""
    name = f"{backend}-{rps:g}rps.json"
    cached = out_dir / f"profile-{name}"
    shipped = SHIPPED_PROFILES / f"{spec.name}-{name}"
    redo = (f"leanstack ursa profile --app {spec.name} --backend {backend} --fast --rps {rps:g} "
            f"--out {cached}")
    for path, origin in ((cached, "cached by an earlier run"), (shipped, "shipped")):
        profile = _usable_profile(path, spec.name, backend, rps)
        if profile is not None:
            print(f"profile: {origin} ({path.name}), measured in {profile.collection_wall_s:.0f} s "
                  f"of data collection; to profile this machine instead: {redo}")
            return profile
    print(f"profiling {len(spec.services)} tiers of {spec.name} on the {backend} backend at "
          f"{rps:g} req/s (tiers that do not call one another at once; cached in {cached}) ...")
    profile = profile_app(spec, make_backend(backend), ProfileSettings.fast(rps))
    profile.save(cached)
    print(f"profile: {profile.collection_wall_s:.0f} s of data collection")
    return profile


def _usable_profile(path: Path, app: str, backend: str, rps: float) -> AppProfile | None:
    """The profile at ``path`` if it is for this app, backend and load; None otherwise."""
    if not path.is_file():
        return None
    try:
        prof = AppProfile.load(path)
    except LeanstackError:
        return None
    return prof if (prof.app, prof.backend, prof.rps) == (app, backend, rps) else None
