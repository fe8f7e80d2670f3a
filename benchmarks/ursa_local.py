"""Ursa vs Kubernetes HPA (and static) on the local backend: an app on real processes.

Profiles every tier on real worker processes, redis-server and memcached under cgroup CPU limits
once per app (the profile is kept in a file and reused by later runs and seeds; its collection
wall time is recorded when it is measured), plans, then runs the chosen controllers on the same
diurnal arrivals (mean ±50%, one compressed day per run), seed after seed. HPA's time constants
are x0.1 for 5-minute runs.

    python benchmarks/ursa_local.py --app social-network --seeds 0,1,2 --fast-profile
    python benchmarks/ursa_local.py --app hotel-reservation --seeds 0,1,2 --fast-profile

Tuning one knob on one app and seed, then reporting all:

    python benchmarks/ursa_local.py --seeds 0 --fast-profile --opt headroom=0.6 --out x.json
    python benchmarks/ursa_local.py --seeds 0 --fast-profile --backend-opt cfs_period_ms=20 \
        --profile sn_cfs20_profile.json --out y.json

``--opt`` takes the ursa controller's options as ``leanstack micro run --controller ursa --opt``
does; a different ``--backend-opt`` (or ``--rps``, ``--fast-profile``, ``--profile-steps``) needs
its own profile, so a cached profile measured otherwise is refused with a one-line error.
``--controllers static,hpa,ursa`` adds the static baseline.

Writes benchmarks/results/ursa_local_<app>.json after every run (``--out`` overrides; the
profile goes next to it as <name>_profile.json unless ``--profile`` says where) and prints
Markdown tables: one row per run with the load average before and after it, then the mean and
per-seed values across seeds. Needs writable cgroups (root); run it alone, on a quiet machine.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from leanstack.cli import parse_options
from leanstack.errors import LeanstackError
from leanstack.microservices.app import AppSpec
from leanstack.microservices.controllers import StaticController, make_controller, typed_options
from leanstack.microservices.runner import make_backend
from leanstack.registry import checked_options
from leanstack.ursa.controller import UrsaController
from leanstack.ursa.plan import Plan, make_plan
from leanstack.ursa.profile import AppProfile, ProfileSettings, profile_app
from local_runs import (
    BASELINE,
    LocalSettings,
    add_arguments,
    require_local,
    run_main,
)

CONTROLLERS = ("static", "hpa", "ursa")
COMPARED_SETTINGS = ("rps", "parallel", "start_utilization", "step_intervals")
"""Profile settings a cached profile must share with the one this run asks for."""


def profile_settings(rps: float, fast: bool, steps: int | None) -> ProfileSettings:
    """The full profile (2 measured intervals per step) or the fast one (3)."""
    if steps is not None and steps < 1:
        raise LeanstackError(f"--profile-steps must be at least 1, got {steps}")
    if fast:
        return ProfileSettings.fast(rps, step_intervals=steps or 3)
    return ProfileSettings(rps=rps, step_intervals=steps or 2)


def check_cached_profile(profile: AppProfile, path: Path, app: AppSpec,
                         wanted: ProfileSettings, backend_options: dict[str, str]) -> None:
    """A one-line error unless ``profile`` was measured for this app on real processes with the
    profile settings and backend options this run asks for."""
    fix = f"pass another --profile to measure a new one (or delete {path})"
    if profile.app != app.name:
        raise LeanstackError(f"{path} is a profile of app '{profile.app}', not '{app.name}' — "
                             f"{fix}")
    if profile.backend != "local":
        raise LeanstackError(f"{path} was measured on the '{profile.backend}' backend, not on "
                             f"real processes — {fix}")
    if set(profile.tiers) != set(app.services):
        raise LeanstackError(f"{path} profiles other tiers than the app file of '{app.name}' "
                             f"has now — {fix}")
    want = asdict(wanted)
    differ = [k for k in COMPARED_SETTINGS if profile.settings.get(k) != want[k]]
    if differ:
        had = ", ".join(f"{k}={profile.settings.get(k)}" for k in differ)
        asked = ", ".join(f"{k}={want[k]}" for k in differ)
        raise LeanstackError(f"{path} was profiled with {had}; this run asks {asked} — {fix}")
    measured_with = profile.settings.get("backend_options", {})
    if measured_with != backend_options:
        raise LeanstackError(f"{path} was profiled with backend options {measured_with or 'none'}"
                             f", this run uses {backend_options or 'none'} — {fix}")


def cached_or_new_profile(app: AppSpec, path: Path, wanted: ProfileSettings,
                          backend_options: dict[str, str]) -> tuple[AppProfile, bool]:
    """The profile in ``path`` when it matches (and ``True``), else a new one measured on real
    processes and saved there (and ``False``)."""
    if path.is_file():
        profile = AppProfile.load(path)
        check_cached_profile(profile, path, app, wanted, backend_options)
        return profile, True
    profile = profile_app(app, make_backend("local", 1.0, **backend_options), wanted,
                          progress=sys.stderr.isatty())
    profile.settings["backend_options"] = dict(backend_options)
    profile.save(path)
    return profile, False


def profile_and_plan(app: AppSpec, path: Path, wanted: ProfileSettings,
                     backend_options: dict[str, str]) -> tuple[Plan, dict[str, Any]]:
    """The plan from the cached or a new profile, and the profile's record for the result."""
    profile, reused = cached_or_new_profile(app, path, wanted, backend_options)
    plan = make_plan(app, profile)
    print(f"profile {'reused from' if reused else 'measured into'} {path} "
          f"({profile.collection_wall_s:.0f} s wall when measured); plan "
          f"{plan.cpu_per_rps * 100:.2f} cores per 100 req/s", file=sys.stderr)
    return plan, {"file": path.name, "reused": reused, "wall_s": profile.collection_wall_s,
                  "backend_s": profile.collection_backend_s, "settings": profile.settings,
                  "backpressure_free": {t: p.backpressure_free
                                        for t, p in profile.tiers.items()}}


def ursa_options(pairs: list[str]) -> dict[str, Any]:
    """``--opt`` pairs converted to the ursa controller's option types (one-line errors); the
    plan is this benchmark's own."""
    opts = parse_options(pairs)
    if "plan" in opts:
        raise LeanstackError("--opt plan=... is not used here: the benchmark plans from its own "
                             "profile — drop it")
    return typed_options("ursa", UrsaController,
                         checked_options("controller 'ursa'", UrsaController, opts))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap, CONTROLLERS, default_controllers="hpa,ursa")
    ap.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                    help="ursa controller option (repeatable), e.g. headroom=0.6")
    ap.add_argument("--profile", type=Path, default=None,
                    help="profile file: reused when it matches, else measured and saved there "
                         "(default: next to --out, <name>_profile.json)")
    ap.add_argument("--fast-profile", action="store_true",
                    help="profile with ProfileSettings.fast (non-interacting tiers at once)")
    ap.add_argument("--profile-steps", type=int, default=None,
                    help="intervals measured per profile step (default 2; 3 when fast)")
    args = ap.parse_args(argv)

    def prepare(settings: LocalSettings) -> tuple[dict[str, Any], dict[str, Any]]:
        opts = ursa_options(args.opt)
        wanted = profile_settings(args.rps, args.fast_profile, args.profile_steps)
        path = args.profile or settings.out.with_name(f"{settings.out.stem}_profile.json")
        require_local()
        factories = {"static": StaticController,
                     BASELINE: lambda: make_controller(BASELINE, **settings.hpa_options)}
        extra: dict[str, Any] = {"ursa_options": opts}
        if "ursa" in settings.controllers:
            plan, extra["profile"] = profile_and_plan(settings.app, path, wanted,
                                                      settings.backend_options)
            UrsaController(plan, **opts)  # range errors (e.g. headroom) before the first run
            factories["ursa"] = lambda: UrsaController(plan, **opts)
            extra.update(plan_cpu_per_rps=plan.cpu_per_rps, plan_note=plan.note)
        return factories, extra

    return run_main("ursa_local", args, CONTROLLERS, prepare)

if __name__ == "__main__":
    sys.exit(main())
