"""Training Seer's network, and scoring any model on whole episodes.

Episodes are split by run (never by window) into train / validation / test. The network learns
both heads at once: binary cross-entropy on "a violation within the horizon" for every window
not already in violation (by default: what is worth learning is the onset; windows inside a
violation only teach "it is still broken"), cross-entropy over tiers on the culprit for windows
while a fault is in force. The alert
threshold is the one that anticipates the most validation violations at a validation precision
of at least ``min_precision``; it is stored with the model.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from rich.progress import Progress
from torch import nn

from leanstack.errors import LeanstackError
from leanstack.seer.campaign import Dataset
from leanstack.seer.features import CHANNELS
from leanstack.seer.metrics import alert_metrics, hysteresis
from leanstack.seer.model import SeerModel, SeerNet


@dataclass
class TrainConfig:
    variant: str = "cnn_lstm"
    lookback: int = 10  # windows of history the model reads
    horizon_s: float = 5.0  # predict a violation within this many seconds
    lead_s: float = 2.0  # an alert must come this long before the violation to count
    epochs: int = 12
    batch: int = 128
    lr: float = 3e-3
    width: int = 24
    hidden: int = 32
    culprit_weight: float = 1.0
    deltas: bool = True  # also read each channel's change since the previous window
    violated_weight: float = 0.0  # loss weight of windows already in violation (0: onset only)
    min_precision: float = 0.8
    stride: int = 1  # train on every stride-th window (2 halves the cost)
    seed: int = 0


def split_episodes(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Episode indices for train (60%), validation (20%) and test (20%), by run."""
    order = np.random.default_rng([seed, 3]).permutation(n)
    a, b = int(round(n * 0.6)), int(round(n * 0.8))
    return {"train": np.sort(order[:a]), "val": np.sort(order[a:b]), "test": np.sort(order[b:])}


def start_window(ds: Dataset, lookback: int) -> int:
    """First window the model may alert on: after the warm-up and a full lookback."""
    return max(int(ds.meta["warmup_windows"]), lookback)


def steps(ds: Dataset, seconds: float) -> int:
    return max(1, round(seconds / float(ds.meta["interval_s"])))


def windows(ds: Dataset, lookback: int, horizon: int, last: bool = False, stride: int = 1
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every training window of ``ds``: inputs ``[S, lookback, tiers, channels]``, the
    violation label within ``horizon`` windows, the culprit label (-1: none), and
    ``(episode, window)`` of each (the window itself violated or not is
    ``ds.arrays["violated"][e, t]``). ``last`` keeps the final windows whose horizon runs past
    the episode's end; ``stride`` takes every stride-th window."""
    a = ds.arrays
    x, viol = a["x"], a["violated"]
    e_n, t_n = viol.shape
    if t_n < lookback:
        raise LeanstackError(f"episodes of {t_n} windows are shorter than the lookback "
                             f"{lookback} — collect longer episodes")
    label = np.zeros_like(viol)
    for h in range(1, horizon + 1):
        label[:, :-h] |= viol[:, h:]
    end = t_n if last else t_n - horizon
    ts = np.arange(lookback - 1, end, stride)
    idx = np.array([(e, t) for e in range(e_n) for t in ts], dtype=int).reshape(-1, 2)
    xs = np.stack([x[e, t - lookback + 1:t + 1] for e, t in idx]) if len(idx) else np.zeros(
        (0, lookback, x.shape[2], x.shape[3]), np.float32)
    return xs, label[idx[:, 0], idx[:, 1]], a["label_culprit"][idx[:, 0], idx[:, 1]], idx


def score(model: SeerModel, ds: Dataset, batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """P(violation) ``[episode, window]`` and culprit distributions ``[episode, window,
    tiers]`` for every window with a full lookback (zeros before)."""
    lb = model.lookback
    xs, _, _, idx = windows(ds, lb, 1, last=True)
    e_n, t_n = ds.arrays["violated"].shape
    p = np.zeros((e_n, t_n), np.float32)
    c = np.zeros((e_n, t_n, len(ds.tiers)), np.float32)
    for i in range(0, len(xs), batch):
        pv, pc = model.predict(xs[i:i + batch])
        sel = idx[i:i + batch]
        p[sel[:, 0], sel[:, 1]] = pv
        c[sel[:, 0], sel[:, 1]] = pc
    return p, c


def pick_threshold(p: np.ndarray, violated: np.ndarray, lead: int, horizon: int, start: int,
                   interval_s: float, min_precision: float) -> tuple[float, dict[str, Any]]:
    """The threshold with the highest anticipation at precision >= ``min_precision`` (else
    the highest anticipation x precision), searched over quantiles of ``p``."""
    cands = np.unique(np.quantile(p[:, start:], np.linspace(0.5, 0.995, 60)))
    best: tuple[tuple[float, float], float, dict[str, Any]] | None = None
    for thr in cands:
        m = alert_metrics(hysteresis(p, thr), violated, lead, horizon, start, interval_s)
        ant, prec = m["anticipation"] or 0.0, m["precision"] or 0.0
        key = (1.0, ant + 0.01 * prec) if prec >= min_precision else (0.0, ant * prec)
        if best is None or key > best[0]:
            best = (key, float(thr), m)
    assert best is not None
    return best[1], best[2]


def train(datasets: list[Dataset], cfg: TrainConfig, progress: bool = True,
          train_episodes: list[np.ndarray] | None = None,
          val_episodes: list[np.ndarray] | None = None) -> tuple[SeerModel, dict[str, Any]]:
    """Train on the train split of every dataset, pick the threshold on the validation split.

    Datasets may be of different apps (tier counts). ``train_episodes`` / ``val_episodes``
    override the default :func:`split_episodes` per dataset.
    """
    if not datasets:
        raise LeanstackError("no dataset to train on — pass --data FILE.npz")
    for ds in datasets:
        if list(ds.meta["channels"]) != list(CHANNELS):
            raise LeanstackError(f"dataset of '{ds.meta['app']}' has other feature channels — "
                                 "collect it again with this version")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    splits = [split_episodes(len(ds), cfg.seed) for ds in datasets]
    tr_idx = train_episodes or [s["train"] for s in splits]
    va_idx = val_episodes or [s["val"] for s in splits]
    sets = []
    for ds, idx in zip(datasets, tr_idx, strict=True):
        sub = ds.subset(idx)
        xs, yv, yc, where = windows(sub, cfg.lookback, steps(ds, cfg.horizon_s),
                                    stride=cfg.stride)
        now = sub.arrays["violated"][where[:, 0], where[:, 1]]
        weight = np.where(now, cfg.violated_weight, 1.0).astype(np.float32)
        sets.append((torch.from_numpy(xs), torch.from_numpy(yv.astype(np.float32)),
                     torch.from_numpy(yc), torch.from_numpy(weight)))
    n_pos = sum(float((s[1] * s[3]).sum()) for s in sets)  # weighted, like the loss
    n_weight = sum(float(s[3].sum()) for s in sets)
    n_all = sum(len(s[1]) for s in sets)
    if n_all == 0:
        raise LeanstackError("the training split holds no windows — collect more episodes")
    pos_weight = torch.tensor(min(10.0, (n_weight - n_pos) / max(n_pos, 1.0)))
    net = SeerNet(len(CHANNELS), cfg.variant, cfg.width, cfg.hidden, cfg.deltas)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs)
    bce = nn.BCEWithLogitsLoss(pos_weight=pos_weight, reduction="none")
    ce = nn.CrossEntropyLoss()
    t0 = time.monotonic()
    losses = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"training {cfg.variant}", total=cfg.epochs)
        for _ in range(cfg.epochs):
            net.train()
            batches = [(k, b) for k, s in enumerate(sets)
                       for b in torch.from_numpy(rng.permutation(len(s[1]))).split(cfg.batch)]
            rng.shuffle(batches)
            total = 0.0
            for k, b in batches:
                x, yv, yc, w = (t[b] for t in sets[k])
                v, c = net(x)
                loss = (bce(v, yv) * w).sum() / w.sum().clamp(min=1e-6)
                has = yc >= 0
                if has.any():
                    loss = loss + cfg.culprit_weight * ce(c[has], yc[has])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(b)
            sched.step()
            losses.append(total / n_all)
            bar.advance(task)
    train_s = time.monotonic() - t0
    meta: dict[str, Any] = {
        "apps": list(dict.fromkeys(ds.meta["app"] for ds in datasets)),
        "campaigns": [{"app": ds.meta["app"], "controller": ds.meta.get("controller", "static"),
                       "seed": ds.meta.get("seed"), "episodes": len(ds)} for ds in datasets],
        "channels": list(CHANNELS),
        "variant": cfg.variant, "width": cfg.width, "hidden": cfg.hidden,
        "deltas": cfg.deltas,
        "lookback": cfg.lookback, "horizon_s": cfg.horizon_s, "lead_s": cfg.lead_s,
        "interval_s": float(datasets[0].meta["interval_s"]), "threshold": 0.5,
        "train_config": asdict(cfg), "train_s": round(train_s, 2),
        "parameters": sum(p.numel() for p in net.parameters()), "loss": losses,
        "kinds": sorted({e["fault"]["kind"] for ds, idx in zip(datasets, tr_idx, strict=True)
                         for e in ds.subset(idx).meta["episodes"] if e["fault"]}),
    }
    model = SeerModel(net, meta)
    ps, viols = [], []
    for ds, idx in zip(datasets, va_idx, strict=True):
        p, _ = score(model, ds.subset(idx))
        ps.append(p)
        viols.append(ds.arrays["violated"][idx])
    ds0 = datasets[0]
    width = min(p.shape[1] for p in ps)
    thr, val = pick_threshold(np.concatenate([p[:, :width] for p in ps]),
                              np.concatenate([v[:, :width] for v in viols]),
                              steps(ds0, cfg.lead_s), steps(ds0, cfg.horizon_s),
                              start_window(ds0, cfg.lookback), float(ds0.meta["interval_s"]),
                              cfg.min_precision)
    meta["threshold"] = thr
    meta["validation"] = val
    return model, meta
