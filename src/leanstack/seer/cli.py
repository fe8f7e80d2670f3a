"""``leanstack seer``: inject faults, collect datasets, train, evaluate, watch and explain."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import Progress

from leanstack.errors import LeanstackError

seer_app = typer.Typer(help="Seer: anticipate QoS violations and name the culprit tier",
                       no_args_is_help=True)
console = Console()


def _kinds(kinds: str | None, exclude: str | None = None) -> tuple[str, ...]:
    from leanstack.seer.faults import FAULT_KINDS

    chosen = tuple(k.strip() for k in kinds.split(",")) if kinds else FAULT_KINDS
    dropped = {k.strip() for k in exclude.split(",")} if exclude else set()
    for k in (*chosen, *dropped):
        if k not in FAULT_KINDS:
            raise LeanstackError(f"unknown fault kind '{k}' — use one of "
                                 f"{', '.join(FAULT_KINDS)}")
    out = tuple(k for k in chosen if k not in dropped)
    if not out:
        raise LeanstackError("no fault kind left — keep at least one")
    return out


def _ramp(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise LeanstackError(f"--ramp '{text}': use LOW,HIGH seconds, e.g. 4,40") from None
    return lo, hi


def _bar(quiet: bool, what: str, total: int) -> tuple[Progress, Any]:
    bar = Progress(disable=quiet)
    return bar, bar.add_task(what, total=total)


@seer_app.command("collect")
def collect_cmd(
    app_name: str = typer.Option(..., "--app", help="app name or path to an app .toml"),
    backend: str = typer.Option("sim", help="sim | local"),
    episodes: int = typer.Option(100, help="episodes (runs) in the campaign"),
    duration: float = typer.Option(90.0, help="seconds per episode"),
    interval: float = typer.Option(1.0, help="window length in seconds (0.1 .. 1)"),
    ramp: str = typer.Option("4,40", help="LOW,HIGH seconds a fault takes to reach full "
                             "strength (drawn per episode)"),
    fast_share: float = typer.Option(0.3, help="share of faults ramping in 1-4 s instead"),
    horizon: float = typer.Option(5.0, help="label: a violation within this many seconds"),
    kinds: str | None = typer.Option(None, help="comma-separated fault kinds (default: all)"),
    exclude_kind: str | None = typer.Option(None, help="fault kinds to leave out"),
    rps: float | None = typer.Option(None, help="nominal load (default: busiest tier at 45%)"),
    seed: int = typer.Option(0, help="seed of the fault draws, loads and simulator"),
    controller: str = typer.Option("static", help="static | hpa: who allocates CPU meanwhile"),
    out: Path = typer.Option(Path("seer-data.npz"), help="dataset file to write"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Run a fault-injection campaign and write a labelled dataset."""
    from leanstack.microservices.app import load_app
    from leanstack.seer.campaign import collect

    if not 0.05 <= interval <= 5:
        raise LeanstackError(f"--interval must be in [0.05, 5] seconds, got {interval}")
    spec = load_app(app_name)
    bar, task = _bar(quiet, f"{spec.name}: episodes", episodes)
    with bar:
        ds = collect(spec, episodes, seed, backend, interval, horizon,
                     _kinds(kinds, exclude_kind), duration, rps, controller,
                     on_episode=lambda i, n: bar.update(task, completed=i),
                     ramp_s=_ramp(ramp), fast_share=fast_share)
    ds.save(out)
    a = ds.arrays
    print(f"{spec.name}: {len(ds)} episodes x {a['x'].shape[1]} windows x {a['x'].shape[2]} "
          f"tiers; {int((a['culprit'] >= 0).sum())} with a fault, "
          f"{a['violated'].any(axis=1).mean():.0%} violated QoS")
    print(f"dataset: {out}")


@seer_app.command("train")
def train_cmd(
    data: list[Path] = typer.Option(..., help="dataset(s) from 'seer collect' (repeatable)"),
    out: Path = typer.Option(..., help="model directory to write"),
    variant: str = typer.Option("cnn_lstm", help="cnn_lstm | cnn | lstm"),
    epochs: int = typer.Option(12, help="training epochs"),
    lookback: int = typer.Option(10, help="windows of history the model reads"),
    horizon: float = typer.Option(5.0, help="predict violations this many seconds ahead"),
    lead: float = typer.Option(2.0, help="lead time an alert needs to count as anticipation"),
    seed: int = typer.Option(0, help="split and training seed"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Train Seer's network on episodes split by run; pick the alert threshold on validation."""
    import torch

    from leanstack.seer.campaign import Dataset
    from leanstack.seer.evaluate import evaluate_model
    from leanstack.seer.train import TrainConfig, split_episodes, train

    if epochs < 1:
        raise LeanstackError(f"--epochs must be at least 1, got {epochs}")
    torch.set_num_threads(1)
    sets = [Dataset.load(d) for d in data]
    cfg = TrainConfig(variant=variant, epochs=epochs, lookback=lookback, horizon_s=horizon,
                      lead_s=lead, seed=seed)
    model, meta = train(sets, cfg, progress=not quiet)
    tests = [(ds, split_episodes(len(ds), seed)["test"]) for ds in sets]
    res = evaluate_model(model, tests, cfg)
    meta["test"] = res
    model.meta = meta
    model.save(out)
    a, c = res["alerts"], res["culprit"]
    print(f"trained on {', '.join(meta['apps'])} in {meta['train_s']:.1f} s "
          f"({meta['parameters']} parameters, {model.size_bytes() / 1024:.0f} KiB)")
    print(f"test episodes: anticipation {_pct(a['anticipation'])} of {a['violations']} "
          f"violations (>= {lead:g} s ahead), precision {_pct(a['precision'])}, "
          f"culprit top-1 {_pct(c['top1'])} / top-3 {_pct(c['top3'])} (n={c['n']})")
    print(f"model: {out}")


@seer_app.command("eval")
def eval_cmd(
    app_name: str = typer.Option(..., "--app", help="app name or path to an app .toml"),
    backend: str = typer.Option("sim", help="sim | local"),
    model_dir: Path | None = typer.Option(None, "--model", help="model dir (default: shipped)"),
    episodes: int = typer.Option(20, help="episodes in the fresh fault campaign"),
    seed: int = typer.Option(1000, help="campaign seed (use one training never saw)"),
    interval: float = typer.Option(1.0, help="window length in seconds"),
    kinds: str | None = typer.Option(None, help="comma-separated fault kinds (default: all)"),
    rps: float | None = typer.Option(None, help="nominal load (default: busiest tier at 45% "
                                     "on the simulator; pass a lower one for --backend local)"),
    out: Path = typer.Option(..., help="where to write the results JSON"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Fresh fault campaign: anticipation, precision, culprit accuracy, violations avoided."""
    import torch

    from leanstack.atomic import write_json
    from leanstack.microservices.app import load_app
    from leanstack.microservices.result import environment
    from leanstack.seer.evaluate import online_eval
    from leanstack.seer.model import SeerModel

    torch.set_num_threads(1)
    spec = load_app(app_name)
    model = SeerModel.load(model_dir)
    t0, load_before = time.monotonic(), os.getloadavg()
    bar, task = _bar(quiet, f"{spec.name}: episodes (x2: watch, act)", episodes)
    with bar:
        res = online_eval(spec, model, episodes, seed, backend, interval, _kinds(kinds), rps,
                          on_episode=lambda i, n: bar.update(task, completed=i))
    res["model"] = str(model_dir) if model_dir else "shipped"
    res["command"] = " ".join(["leanstack", *sys.argv[1:]])
    res["loadavg_before"], res["loadavg_after"] = list(load_before), list(os.getloadavg())
    res["environment"] = environment(time.monotonic() - t0)
    write_json(out, res)
    print(f"{spec.name} on {backend}, {res['episodes']} episodes: anticipation "
          f"{_pct(res['anticipation'])} (>= {res['lead_s']:g} s ahead, median lead "
          f"{res['lead_time_s']} s), precision {_pct(res['precision'])}, culprit top-1 "
          f"{_pct(res['culprit_top1'])} / top-3 {_pct(res['culprit_top3'])}, violations "
          f"avoided {_pct(res['avoided'])} (mean CPU {res['mean_cpu_without']:.2f} -> "
          f"{res['mean_cpu_with']:.2f} cores)")
    print(f"results: {out}")


@seer_app.command("inject")
def inject_cmd(
    app_name: str = typer.Option(..., "--app", help="app name or path to an app .toml"),
    kind: str = typer.Option(..., help="cpu_hog | quota_squeeze | memory_pressure | "
                             "slow_downstream | noisy_neighbour | edge_delay"),
    tier: str = typer.Option(..., help="tier to inject into"),
    backend: str = typer.Option("sim", help="sim | local"),
    start: float = typer.Option(20.0, help="seconds into the run"),
    length: float = typer.Option(20.0, "--length", help="seconds the fault lasts"),
    severity: float = typer.Option(0.9, help="share of CPU taken / quota cut (0..1); "
                                   "slow_downstream, edge_delay: x100 ms"),
    ramp: float = typer.Option(3.0, help="seconds to reach full severity"),
    caller: str = typer.Option("", help="edge_delay: the calling tier (the edge is "
                               "caller -> tier)"),
    rps: float | None = typer.Option(None, help="load (default: the app's nominal load)"),
    duration: float = typer.Option(60.0, help="run length in seconds"),
    controller: str = typer.Option("static", help="static | hpa"),
    detector: bool = typer.Option(False, "--seer/--no-seer", help="let Seer act on alerts"),
    seed: int = typer.Option(0, help="seed of the arrivals and simulator"),
    out: Path = typer.Option(..., help="result JSON (with the fault's ground truth)"),
) -> None:
    """Run one experiment with one injected fault; the result records the ground truth."""
    from leanstack.microservices.app import load_app
    from leanstack.seer.campaign import EpisodePlan, nominal_rps, run_episode
    from leanstack.seer.faults import Fault

    spec = load_app(app_name)
    fault = Fault(kind, tier, start, length, severity, ramp, caller)
    plan = EpisodePlan(seed, rps or nominal_rps(spec, seed), controller, fault, duration)
    det = None
    if detector:
        from leanstack.seer.detector import SeerDetector

        det = SeerDetector()
    try:
        res = run_episode(spec, plan, backend, detector=det, out_json=out)
    except KeyboardInterrupt:
        console.print("interrupted — the fault was removed and every tier stopped")
        sys.exit(130)
    s = res["summary"]
    print(f"{spec.name}: {kind} on {tier} from {start:g} s for {length:g} s -> violation rate "
          f"{s['violation_rate']:.1%}, mean CPU {s['mean_cpu']:.2f}")
    print(f"result: {out}")


@seer_app.command("watch")
def watch_cmd(
    app_name: str = typer.Option(..., "--app", help="app name or path to an app .toml"),
    model_dir: Path | None = typer.Option(None, "--model", help="model dir (default: shipped)"),
    result: Path | None = typer.Option(None, help="replay a recorded result JSON instead"),
    backend: str = typer.Option("sim", help="sim | local"),
    fault: str | None = typer.Option(None, help="inject KIND:TIER[:START[:SEVERITY]]"),
    rps: float | None = typer.Option(None, help="load (default: the app's nominal load)"),
    duration: float = typer.Option(60.0, help="run length in seconds"),
    act: bool = typer.Option(False, "--act/--no-act", help="boost the culprit on alerts"),
    seed: int = typer.Option(0, help="seed of the arrivals and simulator"),
) -> None:
    """Stream windows from a running experiment (or a recorded one) and print alerts."""
    from leanstack.microservices.app import load_app
    from leanstack.seer.campaign import EpisodePlan, nominal_rps, observations, run_episode
    from leanstack.seer.detector import SeerDetector
    from leanstack.seer.faults import Fault
    from leanstack.seer.features import violated

    spec = load_app(app_name)
    det = _PrintingDetector(SeerDetector(model_dir, act=act))
    if result is not None:
        data = json.loads(result.read_text()) if result.is_file() else None
        if not data or "timeline" not in data:
            raise LeanstackError(f"{result}: not an experiment result — write one with "
                                 "'leanstack micro run ... --out R.json'")
        det.reset(spec, float(data["timeline"][0]["interval_s"]))
        for obs in observations(data):
            det.update(obs)
            det.note_violation(obs.t, violated(obs))
        return
    f = None
    if fault:
        parts = fault.split(":")
        if len(parts) < 2:
            raise LeanstackError(f"--fault '{fault}': use KIND:TIER[:START[:SEVERITY]]")
        f = Fault(parts[0], parts[1], float(parts[2]) if len(parts) > 2 else 20.0,
                  min(20.0, duration / 3), float(parts[3]) if len(parts) > 3 else 0.9, 3.0)
    plan = EpisodePlan(seed, rps or nominal_rps(spec, seed), "hpa", f, duration)
    try:
        run_episode(spec, plan, backend, detector=det)
    except KeyboardInterrupt:
        sys.exit(130)


class _PrintingDetector:
    """Wraps a detector and prints each window's alert (and each violation) as it happens."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self._alert_t: float | None = None
        self._was_violated = False

    def reset(self, app: Any, interval_s: float) -> None:
        self.inner.reset(app, interval_s)
        console.print(f"watching {app.name} every {interval_s:g} s — threshold "
                      f"{self.inner.threshold:.2f}, horizon {self.inner.model.meta['horizon_s']}"
                      " s")

    def update(self, obs: Any) -> list[Any]:
        from leanstack.seer.features import violated

        alerts = self.inner.update(obs)
        for a in alerts:
            if self._alert_t is None:
                self._alert_t = a.t
            console.print(f"t={a.t:5.1f}s  [bold red]ALERT[/] P(violation)={a.p_violation:.2f}"
                          f"  culprit [bold]{a.culprit}[/] ({a.confidence:.0%})  next: "
                          + ", ".join(f"{t} {p:.0%}" for t, p in list(a.ranking.items())[1:3]))
        if not alerts and self._alert_t is not None and not self.inner.boosted:
            console.print(f"t={obs.t:5.1f}s  alert cleared")
            self._alert_t = None
        self.note_violation(obs.t, violated(obs))
        return alerts

    def note_violation(self, t: float, bad: bool) -> None:
        if bad and not self._was_violated:
            lead = (f"alerted {t - self._alert_t:.0f} s ahead" if self._alert_t is not None
                    else "not anticipated")
            console.print(f"t={t:5.1f}s  [yellow]QoS violated[/] ({lead})")
        self._was_violated = bad

    def adjust(self, allocation: Any) -> Any:
        return self.inner.adjust(allocation)

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()


@seer_app.command("explain")
def explain_cmd(
    result: Path = typer.Option(..., help="result JSON of a run (e.g. from 'seer inject')"),
    app_name: str = typer.Option(..., "--app", help="the run's app (name or .toml)"),
    model_dir: Path | None = typer.Option(None, "--model", help="model dir (default: shipped)"),
    at: float | None = typer.Option(None, help="explain the window ending at this time (s); "
                                    "default: the first alert"),
    out: Path | None = typer.Option(None, help="write the plot here (PNG)"),
    json_out: Path | None = typer.Option(None, "--json", help="also write the numbers as JSON"),
) -> None:
    """Show which tiers and signals drove an alert (table and plot)."""
    import numpy as np

    from leanstack.atomic import write_json
    from leanstack.microservices.app import load_app
    from leanstack.seer.campaign import observations
    from leanstack.seer.detector import WARMUP
    from leanstack.seer.explain import attribution, plot, table
    from leanstack.seer.features import episode_features
    from leanstack.seer.model import SeerModel

    spec = load_app(app_name)
    model = SeerModel.load(model_dir)
    data = json.loads(result.read_text()) if result.is_file() else None
    if not data or "timeline" not in data:
        raise LeanstackError(f"{result}: not an experiment result — write one with "
                             "'leanstack seer inject ... --out R.json'")
    obs = observations(data)
    tiers = list(spec.services)
    if set(obs[0].tiers) != set(tiers):
        raise LeanstackError(f"{result} is not a run of app '{spec.name}' — pass its --app")
    x = episode_features(obs, tiers, WARMUP)
    lb = model.lookback
    first = max(WARMUP, lb) - 1
    if at is None:
        p = [float(model.predict(x[None, t - lb + 1:t + 1])[0][0]) for t in range(first, len(x))]
        hits = np.flatnonzero(np.array(p) >= model.threshold)
        if not hits.size:
            raise LeanstackError(f"the model raises no alert on {result} — pass --at SECONDS "
                                 "to explain a window anyway")
        t = first + int(hits[0])
    else:
        t = int(np.argmin([abs(o.t - at) for o in obs]))
        if t < first:
            raise LeanstackError(f"--at {at}: the first {first + 1} windows are warm-up — pick "
                                 "a later time")
    expl = attribution(model, x[t - lb + 1:t + 1], tiers)
    expl["t"] = obs[t].t
    print(f"t={obs[t].t:g}s: P(violation) {expl['p_violation']:.2f}, culprit {expl['culprit']} "
          f"({expl['confidence']:.0%})" + (f"; injected: {data['faults']}"
                                            if data.get("faults") else ""))
    print(table(expl))
    print("culprit's signals: " + ", ".join(f"{k} {v:+.3f}"
                                           for k, v in expl["culprit_signals"].items()))
    if out is not None:
        plot(expl, out)
        print(f"plot: {out}")
    if json_out is not None:
        write_json(json_out, expl)
        print(f"json: {json_out}")


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0%}"
