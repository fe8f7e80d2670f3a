"""Sinan end to end on the simulator: collection cost, held-out prediction quality, control.

Per app (social network, hotel reservation): collect with the bandit explorer (the same command
as the shipped model), train, report the held-out-run quality of the CNN (p99 RMSE) and of the
violation predictor (AUC, precision, recall), then run each controller (default: sinan, static,
hpa; pass ``--controllers sinan,static,hpa,ursa`` to add others registered in
``leanstack.microservices.controllers``) side by side, same seeds, under steady and diurnal load.

    python benchmarks/sinan_eval.py [--quick] [--apps social-network,hotel-reservation]
                                    [--controllers sinan,static,hpa] [--ship]

Writes benchmarks/results/sinan_eval.json (everything) and benchmarks/results/sinan_costs.json
(per app: collection wall/sim seconds and Sinan's median decision time), prints Markdown tables.
``--ship`` also writes the trained models to src/leanstack/sinan/models/<app>/.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from leanstack.atomic import write_json
from leanstack.microservices.app import load_app
from leanstack.microservices.controllers import make_controller
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.result import environment
from leanstack.microservices.runner import make_backend, run_experiment
from leanstack.sinan.dataset import collect, collection_loads
from leanstack.sinan.model import shipped_model_dir
from leanstack.sinan.train import TrainConfig, split_runs, train

RESULTS = Path(__file__).parent / "results"
COLLECT_RPS = 600.0  # reference load of the collection (runs at 25..125% of it + diurnal)
EVAL_RPS = 450.0


def settings(quick: bool) -> dict[str, Any]:
    """Collection, training and evaluation settings."""
    return {
        "collect": {"rps": COLLECT_RPS, "duration_s": 60.0 if quick else 120.0,
                    "repeats": 1 if quick else 2},
        "epochs": 40 if quick else 200,
        "eval": {"rps": EVAL_RPS, "duration_s": 180.0 if quick else 600.0,
                 "seeds": [11] if quick else [11, 12],
                 "hpa_time_scale": 0.3 if quick else 1.0},
    }


def build_model(app_name: str, cfg: dict[str, Any], model_dir: Path) -> dict[str, Any]:
    """Collect, train and save one app's model; return costs and held-out metrics."""
    app = load_app(app_name)
    c = cfg["collect"]
    loads = [ld for r in range(c["repeats"])
             for ld in collection_loads(c["rps"], c["duration_s"], seed=100 * r)]
    data = collect(app, loads, progress=sys.stderr.isatty())
    t0 = time.monotonic()
    model, metrics = train(data, TrainConfig(epochs=cfg["epochs"]), progress=sys.stderr.isatty())
    train_wall = time.monotonic() - t0
    test = data.subset(split_runs(data.arrays["run"])["test"])
    model.save(model_dir, explain={k: test.arrays[k][:128].astype("float16")
                                   for k in ("sys", "lat", "proposal")})
    print(f"  {app_name}: {len(data)} samples, collection {data.meta['collection_wall_s']:.0f} s "
          f"wall, p99 RMSE {metrics['p99_rmse_ms']:.1f} ms, AUC {metrics['auc']}",
          file=sys.stderr)
    return {"samples": len(data), "collection_wall_s": data.meta["collection_wall_s"],
            "collection_sim_s": data.meta["collection_sim_s"], "train_wall_s": train_wall,
            "violation_share": float(data.arrays["violation"].mean()),
            "held_out": metrics, "xgb_rounds": model.meta["xgb_best_round"],
            "parameters": model.meta["parameters"]}


def controller_for(name: str, model_dir: Path, hpa_time_scale: float) -> Any:
    """A controller by registry name, with the benchmark's options for sinan and hpa."""
    if name == "sinan":
        return make_controller(name, model=str(model_dir))
    if name == "hpa":
        return make_controller(name, time_scale=hpa_time_scale)
    return make_controller(name)


def run_controls(app_name: str, controllers: list[str], cfg: dict[str, Any],
                 model_dir: Path, workdir: Path) -> list[dict[str, Any]]:
    """Every controller under steady and diurnal load, same seeds; one row per run."""
    app = load_app(app_name)
    e = cfg["eval"]
    rows = []
    for seed in e["seeds"]:
        for pattern in ("poisson", "diurnal"):
            load = LoadSpec(pattern, e["rps"], e["duration_s"], seed=seed, amplitude=0.5)
            for name in controllers:
                ctrl = controller_for(name, model_dir, e["hpa_time_scale"])
                out = workdir / f"{app_name}-{pattern}-{name}-{seed}.json"
                r = run_experiment(app, make_backend("sim", 1.0, seed=seed), ctrl, load, out,
                                   progress=sys.stderr.isatty())
                s = r["summary"]
                rows.append({"app": app_name, "load": pattern, "controller": name, "seed": seed,
                             "violation_rate": s["violation_rate"], "mean_cpu": s["mean_cpu"],
                             "mean_cpu_used": s["mean_cpu_used"],
                             "decision_ms_median": s["decision_ms_median"],
                             "decision_ms_p90": s["decision_ms_p90"],
                             "wall_s": r["environment"]["wall_s"]})
                print(f"  {app_name} {pattern} {name} seed {seed}: violations "
                      f"{s['violation_rate']:.1%}, CPU {s['mean_cpu']:.2f}", file=sys.stderr)
    return rows


def medians(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median over seeds per (app, load, controller)."""
    out = []
    keys = dict.fromkeys((r["app"], r["load"], r["controller"]) for r in rows)
    for app, load, ctrl in keys:
        sel = [r for r in rows if (r["app"], r["load"], r["controller"]) == (app, load, ctrl)]
        ms = [r["decision_ms_median"] for r in sel if r["decision_ms_median"] is not None]
        out.append({"app": app, "load": load, "controller": ctrl, "runs": len(sel),
                    "violation_rate": statistics.median(r["violation_rate"] for r in sel),
                    "mean_cpu": statistics.median(r["mean_cpu"] for r in sel),
                    "decision_ms_median": statistics.median(ms) if ms else None})
    return out


def tables(models: dict[str, dict], summary: list[dict], cfg: dict[str, Any]) -> str:
    """Markdown: prediction quality and costs per app, then control results."""
    lines = ["| app | samples | collection wall (s) | load simulated (s) | CNN p99 RMSE (ms) "
             "| RMSE / QoS | violation AUC | precision | recall |",
             "|---|---|---|---|---|---|---|---|---|"]
    for app, m in models.items():
        h = m["held_out"]
        auc = "n/a" if h["auc"] is None else f"{h['auc']:.3f}"
        lines.append(f"| {app} | {m['samples']} | {m['collection_wall_s']:.0f} "
                     f"| {m['collection_sim_s']:.0f} | {h['p99_rmse_ms']:.1f} "
                     f"| {h['p99_rmse_qos']:.1%} of {h['qos_ms']:g} ms | {auc} "
                     f"| {h['precision']:.2f} | {h['recall']:.2f} |")
    e = cfg["eval"]
    lines += ["", f"Control, {e['rps']:g} req/s mean, {e['duration_s']:g} s per run, "
              f"median of {len(e['seeds'])} seed(s); HPA time scale {e['hpa_time_scale']:g}:",
              "", "| app | load | controller | violation rate | mean CPU (cores) "
              "| median decision (ms) |", "|---|---|---|---|---|---|"]
    for m in summary:
        ms = "–" if m["decision_ms_median"] is None else f"{m['decision_ms_median']:.2f}"
        lines.append(f"| {m['app']} | {m['load']} | {m['controller']} "
                     f"| {m['violation_rate']:.1%} | {m['mean_cpu']:.2f} | {ms} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short collection, training and runs")
    ap.add_argument("--apps", default="social-network,hotel-reservation")
    ap.add_argument("--controllers", default="sinan,static,hpa",
                    help="comma-separated registered controller names")
    ap.add_argument("--ship", action="store_true",
                    help="write the trained models to src/leanstack/sinan/models/<app>/")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = settings(args.quick)
    apps = [a for a in args.apps.split(",") if a]
    controllers = [c for c in args.controllers.split(",") if c]
    t0 = time.monotonic()
    models: dict[str, dict] = {}
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="sinan-eval-") as tmp:
        for app in apps:
            model_dir = shipped_model_dir(app) if args.ship else Path(tmp) / f"model-{app}"
            models[app] = build_model(app, cfg, model_dir)
            rows += run_controls(app, controllers, cfg, model_dir, Path(tmp))
    summary = medians(rows)
    result = {"benchmark": "sinan_eval", "quick": args.quick, "settings": cfg,
              "controllers": controllers, "models": models, "summary": summary, "runs": rows,
              "environment": environment(time.monotonic() - t0)}
    write_json(RESULTS / "sinan_eval.json", result)
    write_json(RESULTS / "sinan_costs.json", costs(result))
    print(tables(models, summary, cfg))


def costs(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per app (the only top-level keys): collection cost and Sinan's median decision time."""
    out = {}
    for app, m in result["models"].items():
        sinan = [s for s in result["summary"]
                 if s["app"] == app and s["controller"] == "sinan"]
        dms = [s["decision_ms_median"] for s in sinan if s["decision_ms_median"] is not None]
        env = result["environment"]
        out[app] = {"collection_wall_s": m["collection_wall_s"],
                    "collection_sim_s": m["collection_sim_s"],
                    "train_wall_s": m["train_wall_s"],
                    "decision_ms_median": statistics.median(dms) if dms else None,
                    "samples": m["samples"], "backend": "sim",
                    "source": "benchmarks/sinan_eval.py", "cpu_count": env["cpu_count"],
                    "command": env["command"], "timestamp": env["timestamp"]}
    return out


if __name__ == "__main__":
    main()
