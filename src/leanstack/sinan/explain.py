"""Which tiers and feature channels drive Sinan's predicted violations.

Occlusion attribution through the whole pipeline (CNN feature -> booster): for held-out samples,
replace one tier's inputs (all its channels and its proposal) with that tier's mean over the
samples, and measure how much the predicted violation probability moves (mean absolute change).
The same per channel (across all tiers) and for the latency history. The booster's own gain on
its proposal inputs is reported per tier too, since those map to tiers directly.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from leanstack.atomic import write_bytes
from leanstack.errors import LeanstackError
from leanstack.sinan.features import CHANNELS
from leanstack.sinan.model import SinanModel, xgb_feature_names


def explanation(model: SinanModel, samples: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per-tier, per-channel and tier x channel occlusion importance, plus booster gain."""
    sys_x, lat_x, prop = samples["sys"], samples["lat"], samples["proposal"]
    if len(sys_x) == 0:
        raise LeanstackError("no samples to explain — pass a dataset with held-out samples")
    _, base = model.predict(sys_x, lat_x, prop)
    tiers = model.tiers

    def shift(sx: np.ndarray, lx: np.ndarray, px: np.ndarray) -> float:
        _, p = model.predict(sx, lx, px)
        return float(np.mean(np.abs(p - base)))

    mean_sys, mean_prop = sys_x.mean(axis=0), prop.mean(axis=0)
    per_tier, grid = {}, np.zeros((len(tiers), len(CHANNELS)))
    for j, tier in enumerate(tiers):
        sx, px = sys_x.copy(), prop.copy()
        sx[:, :, j, :] = mean_sys[:, j, :]
        px[:, j] = mean_prop[j]
        per_tier[tier] = shift(sx, lat_x, px)
        for c in range(len(CHANNELS)):
            sx = sys_x.copy()
            sx[:, c, j, :] = mean_sys[c, j, :]
            grid[j, c] = shift(sx, lat_x, prop)
    per_channel = {}
    for c, name in enumerate(CHANNELS):
        sx = sys_x.copy()
        sx[:, c] = mean_sys[c]
        per_channel[name] = shift(sx, lat_x, prop)
    px = np.broadcast_to(mean_prop, prop.shape).copy()
    per_channel["proposal"] = shift(sys_x, lat_x, px)
    per_channel["latency_history"] = shift(sys_x, np.broadcast_to(lat_x.mean(axis=0),
                                                                  lat_x.shape).copy(), prop)
    gain = model.booster.get_score(importance_type="total_gain")
    names = xgb_feature_names(tiers)
    by_tier = dict.fromkeys(tiers, 0.0)
    cnn_gain = 0.0
    for key, g in gain.items():
        name = names[int(key[1:])] if key.startswith("f") and key[1:].isdigit() else key
        if name.startswith("proposal:"):
            by_tier[name.split(":")[1]] += g
        else:
            cnn_gain += g
    total = sum(by_tier.values()) + cnn_gain or 1.0
    return {"samples": int(len(sys_x)), "mean_violation_prob": float(base.mean()),
            "per_tier": per_tier, "per_channel": per_channel,
            "tier_channel": {t: dict(zip(CHANNELS, map(float, grid[j]), strict=True))
                             for j, t in enumerate(tiers)},
            "booster_gain_share": {"cnn_feature": cnn_gain / total,
                                   **{f"proposal:{t}": v / total for t, v in by_tier.items()}}}


def table(expl: dict[str, Any], top: int = 10) -> str:
    """A Markdown table of the most influential tiers, with each tier's strongest channel."""
    rows = sorted(expl["per_tier"].items(), key=lambda kv: -kv[1])[:top]
    lines = ["| tier | mean |Δ P(violation)| | strongest channel | booster gain share |",
             "|---|---|---|---|"]
    for tier, v in rows:
        ch = max(expl["tier_channel"][tier].items(), key=lambda kv: kv[1])
        gain = expl["booster_gain_share"].get(f"proposal:{tier}", 0.0)
        lines.append(f"| {tier} | {v:.3f} | {ch[0]} ({ch[1]:.3f}) | {gain:.1%} |")
    lines.append("")
    lines.append("| channel | mean |Δ P(violation)| |")
    lines.append("|---|---|")
    for name, v in sorted(expl["per_channel"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {v:.3f} |")
    return "\n".join(lines)


def plot(expl: dict[str, Any], out: str | Path) -> Path:
    """Bar chart of tiers and a tier x channel heat map, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tiers = sorted(expl["per_tier"], key=lambda t: -expl["per_tier"][t])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, max(4, 0.3 * len(tiers) + 1)))
    ax1.barh(tiers[::-1], [expl["per_tier"][t] for t in tiers[::-1]], color="tab:red")
    ax1.set_xlabel("mean |Δ P(violation)| when the tier is occluded")
    ax1.set_title("tiers driving predicted violations")
    grid = np.array([[expl["tier_channel"][t][c] for c in CHANNELS] for t in tiers])
    im = ax2.imshow(grid, aspect="auto", cmap="Reds")
    ax2.set_yticks(range(len(tiers)), tiers)
    ax2.set_xticks(range(len(CHANNELS)), CHANNELS, rotation=30, ha="right")
    ax2.set_title("tier x channel")
    fig.colorbar(im, ax=ax2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return write_bytes(out, buf.getvalue())


def explain_samples(model_dir: str | Path) -> dict[str, np.ndarray]:
    """The held-out samples stored beside a model by ``sinan train``."""
    p = Path(model_dir) / "explain.npz"
    if not p.is_file():
        raise LeanstackError(f"'{p}' not found — retrain with 'leanstack sinan train' (it "
                             "stores held-out samples) or pass --data DATASET")
    with np.load(p, allow_pickle=False) as z:
        return {k: z[k].astype(np.float32) for k in ("sys", "lat", "proposal")}
