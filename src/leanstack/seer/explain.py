"""Why Seer raised an alert: which tiers and signals drove it.

Attribution is gradient x input on the window the alert was raised from, summed over time:
for P(violation) (which signals made the model expect a violation) and for the culprit's logit
(why that tier). The plot is a tiers x channels heat map of the first, beside the culprit
distribution.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from leanstack.seer.features import CHANNELS
from leanstack.seer.model import SeerModel


def attribution(model: SeerModel, window: np.ndarray, tiers: list[str]) -> dict[str, Any]:
    """Explain one window ``[lookback, tiers, channels]``."""
    x = torch.from_numpy(np.ascontiguousarray(window[None], np.float32)).requires_grad_(True)
    v, k = model.net(x)
    culprit = int(k[0].argmax())
    grads = []
    for out in (v[0], k[0, culprit]):
        (g,) = torch.autograd.grad(out, x, retain_graph=True)
        grads.append((g * x).detach()[0].sum(dim=0).numpy())  # [tiers, channels]
    viol, cul = grads
    probs = torch.softmax(k[0], dim=-1).detach().numpy()
    tier_score = np.abs(viol).sum(axis=1)
    order = np.argsort(-tier_score)
    return {
        "p_violation": float(torch.sigmoid(v[0].detach())),
        "culprit": tiers[culprit], "confidence": float(probs[culprit]),
        "culprit_distribution": {tiers[i]: float(probs[i]) for i in np.argsort(-probs)[:5]},
        "tiers": [{"tier": tiers[i], "weight": float(tier_score[i]),
                   "top_signals": [CHANNELS[j] for j in np.argsort(-np.abs(viol[i]))[:3]]}
                  for i in order[:5]],
        "culprit_signals": {CHANNELS[j]: float(cul[culprit, j])
                            for j in np.argsort(-np.abs(cul[culprit]))[:4]},
        "matrix": viol.tolist(), "channels": list(CHANNELS), "tier_names": tiers,
    }


def plot(expl: dict[str, Any], out: str | Path, top: int = 8) -> Path:
    """Heat map of the top tiers' attributions beside the culprit distribution (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from leanstack.atomic import write_bytes

    m = np.asarray(expl["matrix"])
    order = np.argsort(-np.abs(m).sum(axis=1))[:top]
    names = [expl["tier_names"][i] for i in order]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 0.45 * len(order) + 2),
                                 gridspec_kw={"width_ratios": [3, 1]})
    lim = float(np.abs(m[order]).max()) or 1.0
    im = a1.imshow(m[order], cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    a1.set_yticks(range(len(order)), names)
    a1.set_xticks(range(len(expl["channels"])), expl["channels"], rotation=45, ha="right")
    a1.set_title(f"what drove P(violation) = {expl['p_violation']:.2f}")
    fig.colorbar(im, ax=a1, shrink=0.8)
    dist = expl["culprit_distribution"]
    a2.barh(list(dist)[::-1], list(dist.values())[::-1], color="tab:red")
    a2.set_xlim(0, 1)
    a2.set_title("culprit")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return write_bytes(out, buf.getvalue())


def table(expl: dict[str, Any]) -> str:
    """A Markdown table of the tiers that drove the alert."""
    lines = ["| tier | weight | top signals |", "|---|---|---|"]
    lines += [f"| {r['tier']} | {r['weight']:.3f} | {', '.join(r['top_signals'])} |"
              for r in expl["tiers"]]
    return "\n".join(lines)
