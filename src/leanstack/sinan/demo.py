"""The Sinan section of ``leanstack demo``: Sinan vs HPA vs static on the simulator."""

from __future__ import annotations

import pathlib

from leanstack.microservices.app import load_app
from leanstack.microservices.controllers import HPAController, StaticController
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.runner import make_backend, run_experiment
from leanstack.sinan.controller import SinanController

APP = "social-network"
LOAD = LoadSpec("diurnal", 450.0, 240.0, seed=3, amplitude=0.5)


def run_demo(out_dir: pathlib.Path) -> None:
    """Run the shipped social-network model against HPA and static for a short diurnal load."""
    import torch

    torch.set_num_threads(1)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    app = load_app(APP)
    print(f"Sinan: {APP} on the simulator, diurnal load {LOAD.rps:g} req/s mean for "
          f"{LOAD.duration_s:g} s, with the shipped model (src/leanstack/sinan/models/{APP})")
    rows = []
    for ctrl in (SinanController(), HPAController(time_scale=0.2), StaticController()):
        out = out_dir / f"sinan-demo-{ctrl.name}.json"
        r = run_experiment(app, make_backend("sim", 1.0, seed=LOAD.seed), ctrl, LOAD, out)
        s = r["summary"]
        rows.append((ctrl.name, s["violation_rate"], s["mean_cpu"], s["decision_ms_median"],
                     out))
    print("| controller | violation rate | mean CPU (cores) | median decision (ms) |")
    print("|---|---|---|---|")
    for name, vr, cpu, ms, _ in rows:
        print(f"| {name} | {vr:.1%} | {cpu:.2f} | {ms:.2f} |")
    print("HPA runs with its time constants x0.2 (sync every 3 s) to fit the short run.")
    print(f"results: {', '.join(str(r[-1]) for r in rows)}")
