"""Sinan vs Kubernetes HPA on the local backend: an app on real processes.

The chosen controllers run on the same diurnal arrivals (mean ±50%, one compressed day per run),
seed after seed; HPA's time constants are x0.1 for 5-minute runs. ``sinan`` uses the model in
``--model`` (default: the one shipped with leanstack, trained on the simulator); ``sinan-sim``
is always the shipped model, so one invocation compares both against the same HPA runs.

Training Sinan on real processes first (per app; the same --backend-opt as the benchmark):

    leanstack sinan collect --app social-network --backend local --rps 100 --duration 120 \
        --repeats 2 --out sn-local.npz
    leanstack sinan train --data sn-local.npz --out sn-local-model
    python benchmarks/sinan_local.py --app social-network --seeds 0,1,2 \
        --model sn-local-model --controllers hpa,sinan,sinan-sim

``collect`` runs the bandit explorer at 25, 50, 75, 100 and 125% of --rps and once diurnally
around it (6 runs per repeat); each run of D seconds gives D - 8 samples.

Writes benchmarks/results/sinan_local_<app>.json after every run (``--out`` overrides), with the
model each Sinan controller used, and prints Markdown tables: one row per run with the load
average before and after it, then the mean and per-seed values across seeds. Needs writable
cgroups (root); run it alone, on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from leanstack.errors import LeanstackError
from leanstack.microservices.app import AppSpec
from leanstack.microservices.controllers import make_controller
from leanstack.sinan.controller import SinanController
from leanstack.sinan.model import shipped_model_dir
from local_runs import (
    BASELINE,
    LocalSettings,
    add_arguments,
    require_local,
    run_main,
)

CONTROLLERS = ("hpa", "sinan", "sinan-sim")


def model_record(app: AppSpec, model: Path | None) -> dict[str, Any]:
    """Check the model can control ``app`` (one-line error otherwise) and describe it: where it
    came from, what it was trained on, its held-out quality."""
    SinanController(model).reset(app, 1.0)
    meta = json.loads(((model or shipped_model_dir(app.name)) / "meta.json").read_text())
    metrics = meta.get("metrics", {})
    source = "shipped" if model is None else model.name if model.is_absolute() else str(model)
    return {"model": source,
            "trained_on": meta.get("collection_backend", "sim" if model is None else None),
            "collection_wall_s": meta.get("collection_wall_s"),
            "collection_load_s": meta.get("collection_sim_s"), "samples": meta.get("samples"),
            "auc": metrics.get("auc"), "p99_rmse_qos": metrics.get("p99_rmse_qos")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap, CONTROLLERS, default_controllers="hpa,sinan")
    ap.add_argument("--model", type=Path, default=None,
                    help="Sinan model directory from 'leanstack sinan train' for the 'sinan' "
                         "controller (default: the shipped simulator-trained model)")
    args = ap.parse_args(argv)

    def prepare(settings: LocalSettings) -> tuple[dict[str, Any], dict[str, Any]]:
        if args.model is None and {"sinan", "sinan-sim"} <= set(settings.controllers):
            raise LeanstackError("without --model, sinan and sinan-sim are the same shipped "
                                 "model — drop one or pass --model DIR")
        import torch

        torch.set_num_threads(1)
        models = {name: model_record(settings.app, args.model if name == "sinan" else None)
                  for name in settings.controllers if name != BASELINE}
        require_local()
        factories = {BASELINE: lambda: make_controller(BASELINE, **settings.hpa_options),
                     "sinan": lambda: SinanController(args.model),
                     "sinan-sim": lambda: SinanController(None)}
        return factories, {"sinan_models": models}

    return run_main("sinan_local", args, CONTROLLERS, prepare)

if __name__ == "__main__":
    sys.exit(main())
