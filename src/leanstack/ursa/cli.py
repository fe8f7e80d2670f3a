"""``leanstack ursa``: profile an app's tiers, decompose its SLAs, find the oracle allocation."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from leanstack.errors import LeanstackError

ursa_app = typer.Typer(help="Ursa: per-tier profiles, SLA decomposition, online control "
                            "(run it with 'leanstack micro run --controller ursa').",
                       no_args_is_help=True)
out = Console()


@ursa_app.command("profile")
def profile(
    app_name: str = typer.Option(..., "--app", help="app name or path to an app .toml"),
    backend: str = typer.Option("sim", help="sim | local"),
    rps: float = typer.Option(100.0, help="steady load while exploring (requests/s)"),
    out_path: Path = typer.Option(..., "--out", help="where to write the profile JSON"),
    step_intervals: int = typer.Option(3, help="control intervals measured per CPU step"),
    interval: float = typer.Option(1.0, help="control interval in seconds"),
    tiers: str | None = typer.Option(None, help="comma-separated tiers (default: all)"),
    parallel: int = typer.Option(1, help="tiers squeezed at once (only tiers that do not call "
                                 "one another); e.g. 24 for the fast profile"),
    early_stop: bool = typer.Option(True, help="end a step once every squeezed tier's tail is "
                                    "clearly inside or outside its bound"),
    start_utilization: float = typer.Option(0.1, help="first step's CPU = used / this"),
    fast: bool = typer.Option(False, "--fast", help="the fast profile: non-interacting tiers "
                              "at once from 20% utilisation (overrides --parallel and "
                              "--start-utilization)"),
    shape: bool = typer.Option(False, "--shape", help="on a real backend: take each tier's curve "
                               "shape from the simulator and measure only around its knee"),
    seed: int = typer.Option(0, help="seed of the load (and the simulator)"),
    backend_opt: list[str] = typer.Option([], "--backend-opt", help="backend option KEY=VALUE "
                                          "(repeatable), e.g. local: cfs_period_ms=20"),
) -> None:
    """Explore each tier: its own tail latency as its load per core rises."""
    from leanstack.microservices.app import load_app
    from leanstack.microservices.runner import make_backend
    from leanstack.ursa.profile import ProfileSettings, profile_app

    spec = load_app(app_name)
    settings = ProfileSettings(rps=rps, step_intervals=step_intervals,
                               tiers=tiers.split(",") if tiers else None, parallel=parallel,
                               early_stop=early_stop, start_utilization=start_utilization,
                               shape=shape)
    if fast:
        settings = ProfileSettings.fast(rps, step_intervals=step_intervals, tiers=settings.tiers,
                                        early_stop=early_stop, shape=shape)
    if step_intervals < 1:
        raise LeanstackError(f"--step-intervals must be at least 1, got {step_intervals}")
    from leanstack.cli import parse_options

    opts = {"seed": seed} if backend == "sim" else {}
    backend_opts = parse_options(backend_opt, "--backend-opt", "cfs_period_ms=20")
    backend_obj = make_backend(backend, interval, **{**opts, **backend_opts})
    prof = profile_app(spec, backend_obj, settings, seed=seed)
    prof.save(out_path)
    table = Table("tier", "points", "max load/core", "own latency there", "stopped",
                  "backpressure-free", title=f"{spec.name} profile ({prof.percentile})")
    for name, t in prof.tiers.items():
        x, y = t.points[-1]
        table.add_row(name, str(len(t.points)), f"{x:.0f}", f"{y:.2f} ms", t.stopped,
                      "yes" if t.backpressure_free else f"no (slowed by {', '.join(t.slowed_by)})")
    out.print(table)
    print(f"collection took {prof.collection_wall_s:.1f} s wall ({prof.collection_backend_s:.0f} s "
          f"of {backend} load); profile: {out_path}")


@ursa_app.command("plan")
def plan(
    app_name: str = typer.Option(..., "--app", help="app name or path to an app .toml"),
    profile_path: Path = typer.Option(..., "--profile", help="a profile from 'ursa profile'"),
    out_path: Path = typer.Option(..., "--out", help="where to write the plan JSON"),
    margin: float = typer.Option(0.2, help="share of each SLA kept as safety margin"),
    capacity: float | None = typer.Option(None, help="cores available (with --rps): lower-"
                                          "priority classes are given up first if short"),
    rps: float | None = typer.Option(None, help="the load the capacity must carry"),
    compose: str = typer.Option("convolve", help="how tier latencies compose along a path: "
                                "convolve (their distributions) | sum (add the budgets)"),
) -> None:
    """Per-tier latency budgets meeting every SLA at the least CPU (a MILP)."""
    from leanstack.microservices.app import load_app
    from leanstack.ursa.plan import make_plan
    from leanstack.ursa.profile import AppProfile

    spec = load_app(app_name)
    result = make_plan(spec, AppProfile.load(profile_path), margin=margin, capacity=capacity,
                       rps=rps, compose=compose)
    result.save(out_path)
    tiers = Table("tier", "budget", "threshold (req/s per core)", "cores per 100 req/s",
                  title=f"{spec.name}: per-tier budgets")
    for name, t in result.tiers.items():
        tiers.add_row(name, f"{t.budget_ms:.2f} ms", f"{t.threshold:.0f}",
                      f"{t.cpu_per_rps * 100:.3f}")
    out.print(tiers)
    classes = Table("class", "priority", "SLA", "predicted path", "budgets added",
                    "fastest path", "met")
    for name, c in result.classes.items():
        classes.add_row(name, str(c.priority), f"{c.sla_ms:g} ms", f"{c.planned_ms:.1f} ms",
                        f"{c.summed_ms:.1f} ms", f"{c.fastest_ms:.1f} ms",
                        "yes" if c.met else "NO")
    out.print(classes)
    if result.note:
        print(f"note: {result.note}")
    print(f"{result.cpu_per_rps * 100:.3f} cores per 100 req/s before headroom; solved in "
          f"{result.solve_ms:.0f} ms; plan: {out_path}")


@ursa_app.command("oracle")
def oracle(
    app_name: str = typer.Option(..., "--app", help="app name or path to an app .toml"),
    rps: float = typer.Option(..., help="steady load (requests/s)"),
    duration: float = typer.Option(120.0, help="simulated seconds per trial run"),
    target: float = typer.Option(0.01, help="violation rate that still counts as met"),
    seed: int = typer.Option(0, help="seed of the load and the simulator"),
) -> None:
    """Search the simulator for the smallest static allocation that meets every SLA."""
    from leanstack.microservices.app import load_app
    from leanstack.microservices.load import LoadSpec
    from leanstack.ursa.oracle import search_oracle

    spec = load_app(app_name)
    res = search_oracle(spec, LoadSpec("poisson", rps, duration, seed=seed), target=target,
                        seed=seed)
    print(f"oracle for {spec.name} at {rps:g} req/s: {res.total_cpu:.2f} cores, violation rate "
          f"{res.violation_rate:.1%} ({res.runs} simulated runs, {res.wall_s:.0f} s)")
    for name, t in res.allocation.tiers.items():
        print(f"  {name}: {t.cpu:g}")
