"""Training Sinan's CNN and violation predictor, validated on held-out collection runs.

Runs, not rows, are held out: samples one second apart are nearly identical, so a shuffled split
would grade the model on copies of its training data. Run ``i`` is a *test* run when
``i % 4 == 3`` (reported metrics) and an *early-stop* run when ``i % 4 == 1`` (the booster's
early stopping); the rest train both models.

The paper's settings: SGD with Nesterov momentum 0.9, lr 1e-3, weight decay 1e-3, batch 2048,
200 epochs with lr x0.1 at 120 and 150; the booster with eta 0.01, depth 6, lossguide, hist,
up to 2000 rounds, early stop 50. Our datasets are ~100x smaller than the paper's, so the CNN's
batch is capped at 1/16 of the training set and its learning rate raised to 1e-2 (at batch 2048
with a few thousand samples SGD would take ~2 steps per epoch and not learn); epochs and the two
lr drops keep the paper's proportions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from rich.progress import Progress
from torch import nn

from leanstack.errors import LeanstackError
from leanstack.sinan.dataset import Dataset
from leanstack.sinan.features import P99, SinanConstants, soft_clip
from leanstack.sinan.model import LatencyCNN, SinanModel, xgb_inputs


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (see the module docstring for where they differ from the paper)."""

    epochs: int = 200
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 1e-3
    max_batch: int = 2048
    xgb_rounds: int = 2000
    xgb_early_stop: int = 50
    xgb_eta: float = 0.01
    xgb_depth: int = 6
    seed: int = 0


def split_runs(run: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks ``train``, ``early_stop`` and ``test`` over samples, by collection run."""
    ids = np.unique(run)
    if len(ids) < 2:
        raise LeanstackError("the dataset has one collection run; validation holds out whole "
                             "runs — collect at least two load levels")
    if len(ids) < 4:  # tiny datasets: last run tests and early-stops, the rest train
        test_ids = ids[-1:]
        stop_ids = test_ids
    else:
        test_ids = ids[ids % 4 == 3]
        stop_ids = ids[ids % 4 == 1]
    test = np.isin(run, test_ids)
    stop = np.isin(run, stop_ids)
    return {"train": ~test & ~stop, "early_stop": stop, "test": test}


def train(data: Dataset, cfg: TrainConfig = TrainConfig(),
          progress: bool = True) -> tuple[SinanModel, dict[str, Any]]:
    """Train both models on ``data``; return the model and its held-out metrics."""
    masks = split_runs(data.arrays["run"])
    tr, st, te = (data.subset(masks[k]) for k in ("train", "early_stop", "test"))
    if len(tr) == 0:
        raise LeanstackError("no training samples after holding out test runs — collect more "
                             "runs or longer ones")
    torch.manual_seed(cfg.seed)
    cnn = _fit_cnn(tr, len(data.meta["tiers"]), cfg, progress)
    booster, best_round = _fit_booster(cnn, tr, st, cfg)
    meta = {k: data.meta[k] for k in ("app", "tiers", "channels", "percentiles", "qos_ms")}
    model = SinanModel(cnn, booster, meta)
    metrics = evaluate(model, te)
    meta.update({"metrics": metrics, "train_config": asdict(cfg), "xgb_best_round": best_round,
                 "samples": {"train": len(tr), "early_stop": len(st), "test": len(te)},
                 "runs": {"test": sorted({int(r) for r in te.arrays["run"]}),
                          "early_stop": sorted({int(r) for r in st.arrays["run"]})},
                 "parameters": sum(p.numel() for p in cnn.parameters()),
                 "collection_backend": data.meta.get("backend", "sim"),
                 "collection_wall_s": data.meta.get("collection_wall_s"),
                 "collection_sim_s": data.meta.get("collection_sim_s")})
    return model, metrics


def evaluate(model: SinanModel, data: Dataset) -> dict[str, Any]:
    """Held-out quality: CNN p99 RMSE (QoS units and ms) and the booster's AUC/precision/recall."""
    from sklearn.metrics import precision_score, recall_score, roc_auc_score

    a = data.arrays
    pred, prob = model.predict(a["sys"], a["lat"], a["proposal"])
    y = soft_clip(a["y"])
    qos = float(model.meta["qos_ms"])
    err = pred[:, P99] - y[:, P99]
    below = a["y"][:, P99] <= 1.0
    label = a["violation"].astype(int)
    one_class = label.min() == label.max()
    return {
        "samples": int(len(y)),
        "p99_rmse_qos": float(np.sqrt(np.mean(err ** 2))),
        "p99_rmse_ms": float(np.sqrt(np.mean(err ** 2)) * qos),
        "p99_rmse_ms_within_qos": float(np.sqrt(np.mean(err[below] ** 2)) * qos)
        if below.any() else None,
        "qos_ms": qos,
        "violation_share": float(label.mean()),
        "auc": None if one_class else float(roc_auc_score(label, prob)),
        "precision": float(precision_score(label, prob >= 0.5, zero_division=0)),
        "recall": float(recall_score(label, prob >= 0.5, zero_division=0)),
    }


def _fit_cnn(data: Dataset, n_tiers: int, cfg: TrainConfig, progress: bool) -> LatencyCNN:
    a = data.arrays
    xs = [torch.from_numpy(a[k]) for k in ("sys", "lat", "proposal")]
    y = torch.from_numpy(soft_clip(a["y"], SinanConstants()))
    n = len(y)
    batch = max(8, min(cfg.max_batch, n // 16))
    cnn = LatencyCNN(n_tiers)
    opt = torch.optim.SGD(cnn.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                          weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(
        opt, milestones=[int(cfg.epochs * 0.6), int(cfg.epochs * 0.75)], gamma=0.1)
    loss_fn = nn.MSELoss()
    gen = torch.Generator().manual_seed(cfg.seed)
    cnn.train()
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("training the latency CNN", total=cfg.epochs)
        for _ in range(cfg.epochs):
            order = torch.randperm(n, generator=gen)
            for i in range(0, n - batch + 1 if n >= batch else 1, batch):
                idx = order[i:i + batch]
                if len(idx) < 2:  # BatchNorm needs two samples
                    continue
                pred, _ = cnn(*(x[idx] for x in xs))
                loss = loss_fn(pred, y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            sched.step()
            bar.advance(task)
    cnn.eval()
    return cnn


def _fit_booster(cnn: LatencyCNN, train: Dataset, stop: Dataset,
                 cfg: TrainConfig) -> tuple[Any, int]:
    import xgboost as xgb

    def matrix(d: Dataset) -> xgb.DMatrix:
        a = d.arrays
        with torch.inference_mode():
            _, feat = cnn(*(torch.from_numpy(a[k]) for k in ("sys", "lat", "proposal")))
        return xgb.DMatrix(xgb_inputs(feat.numpy(), a["proposal"]),
                           label=a["violation"].astype(np.float32))

    params = {"objective": "binary:logistic", "eta": cfg.xgb_eta, "max_depth": cfg.xgb_depth,
              "grow_policy": "lossguide", "tree_method": "hist", "eval_metric": "logloss",
              "nthread": 2, "seed": cfg.seed}
    dtrain, dstop = matrix(train), matrix(stop)
    booster = xgb.train(params, dtrain, num_boost_round=cfg.xgb_rounds,
                        evals=[(dstop, "early_stop")],
                        early_stopping_rounds=cfg.xgb_early_stop, verbose_eval=False)
    best = int(booster.best_iteration) + 1
    booster = booster[:best]
    return booster, best
