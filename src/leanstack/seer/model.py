"""Seer's network and its on-disk form.

:class:`SeerNet` reads a window of history ``[batch, time, tiers, channels]`` and returns
P(end-to-end QoS violation within the horizon) (as a logit) and one culprit logit per tier.
It never fixes the number of tiers, so one model serves any app:

- **CNN over tiers x time**: two temporal convolutions shared by every tier; between them each
  tier sees the element-wise max over all tiers (what the rest of the app is doing), so the
  second layer compares a tier with its peers at every step;
- **LSTM over time**: one LSTM, shared by every tier, over its convolutional features;
- **heads**: violation from the max and mean over tiers of the LSTM states; culprit from each
  tier's state beside the max over tiers, normalised over the tiers (softmax).

With ``deltas`` every channel is read next to its change since the previous window (rates of
change: queue growth, latency climbing), so a ramping fault stands out before levels do.

Variants for the ablations: ``cnn`` (no LSTM: the last step's and the max over time's
convolutional features) and ``lstm`` (no convolutions: the LSTM reads the raw channels and
their max over tiers). A model directory holds ``model.pt`` and ``meta.json``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from leanstack.atomic import write_bytes, write_json
from leanstack.errors import LeanstackError

VARIANTS = ("cnn_lstm", "cnn", "lstm")
MODELS_DIR = Path(__file__).parent / "models"
"""Models shipped with leanstack."""


class SeerNet(nn.Module):
    """CNN over tiers x time, then LSTM over time; violation and per-tier culprit heads."""

    def __init__(self, n_channels: int, variant: str = "cnn_lstm", width: int = 24,
                 hidden: int = 32, deltas: bool = False) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise LeanstackError(f"unknown model variant '{variant}' — use one of "
                                 f"{', '.join(VARIANTS)}")
        self.variant = variant
        self.deltas = deltas
        self.width, self.hidden = width, hidden
        self.n_channels = n_channels * (2 if deltas else 1)
        n_channels = self.n_channels
        if variant != "lstm":
            self.conv1 = nn.Conv1d(n_channels, width, 3, padding=1)
            self.conv2 = nn.Conv1d(2 * width, width, 3, padding=1)
        if variant == "cnn":
            self.pool = nn.Linear(2 * width, hidden)
        else:
            lstm_in = width if variant == "cnn_lstm" else 2 * n_channels
            self.lstm = nn.LSTM(lstm_in, hidden, batch_first=True)
        self.violation = nn.Sequential(nn.Linear(2 * hidden, 32), nn.ReLU(), nn.Linear(32, 1))
        self.culprit = nn.Sequential(nn.Linear(2 * hidden, 32), nn.ReLU(), nn.Linear(32, 1))

    def tier_states(self, x: torch.Tensor) -> torch.Tensor:
        """Per-tier summary of the window: ``[batch, tiers, hidden]``."""
        if self.deltas:
            x = torch.cat([x, torch.diff(x, dim=1, prepend=x[:, :1])], dim=-1)
        b, t, n, c = x.shape
        if self.variant == "lstm":
            ctx = x.amax(dim=2, keepdim=True).expand(-1, -1, n, -1)
            seq = torch.cat([x, ctx], dim=-1).permute(0, 2, 1, 3).reshape(b * n, t, 2 * c)
        else:
            h = torch.relu(self.conv1(x.permute(0, 2, 3, 1).reshape(b * n, c, t)))
            h = h.reshape(b, n, self.width, t)
            ctx = h.amax(dim=1, keepdim=True).expand(-1, n, -1, -1)
            h = torch.relu(self.conv2(torch.cat([h, ctx], dim=2).reshape(b * n, 2 * self.width,
                                                                         t)))
            if self.variant == "cnn":
                pooled = torch.cat([h[..., -1], h.amax(dim=-1)], dim=-1)
                return torch.relu(self.pool(pooled)).reshape(b, n, self.hidden)
            seq = h.permute(0, 2, 1)
        _, (last, _) = self.lstm(seq)
        return last[-1].reshape(b, n, self.hidden)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [batch, time, tiers, channels]`` -> (violation logit ``[batch]``, culprit
        logits ``[batch, tiers]``)."""
        s = self.tier_states(x)
        top = s.amax(dim=1)
        v = self.violation(torch.cat([top, s.mean(dim=1)], dim=-1)).squeeze(-1)
        k = self.culprit(torch.cat([s, top[:, None].expand_as(s)], dim=-1)).squeeze(-1)
        return v, k


class SeerModel:
    """A trained :class:`SeerNet` with its settings (``meta``: channels, lookback, horizon,
    alert threshold, training metrics)."""

    def __init__(self, net: SeerNet, meta: dict[str, Any]) -> None:
        self.net = net.eval()
        self.meta = meta

    @property
    def lookback(self) -> int:
        return int(self.meta["lookback"])

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"])

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``x [batch, time, tiers, channels]`` -> (P(violation) ``[batch]``, culprit
        distribution ``[batch, tiers]``)."""
        with torch.inference_mode():
            v, k = self.net(torch.from_numpy(np.ascontiguousarray(x, np.float32)))
            return torch.sigmoid(v).numpy(), torch.softmax(k, dim=-1).numpy()

    def size_bytes(self) -> int:
        return len(self._weights())

    def _weights(self) -> bytes:
        buf = io.BytesIO()
        torch.save({k: v.half() if v.is_floating_point() else v
                    for k, v in self.net.state_dict().items()}, buf)
        return buf.getvalue()

    def save(self, out_dir: str | Path) -> Path:
        """Write ``model.pt`` (fp16 weights) and ``meta.json`` atomically."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_bytes(out / "model.pt", self._weights())
        write_json(out / "meta.json", self.meta)
        return out

    @classmethod
    def load(cls, model_dir: str | Path | None = None) -> SeerModel:
        """Read a model directory; ``None`` is the shipped model."""
        d = Path(model_dir) if model_dir is not None else MODELS_DIR / "default"
        how = ("train one: leanstack seer collect --app APP --out data.npz && "
               "leanstack seer train --data data.npz --out DIR")
        if not (d / "meta.json").is_file():
            raise LeanstackError(f"no Seer model in '{d}' (meta.json missing) — {how}")
        try:
            meta = json.loads((d / "meta.json").read_text())
            net = SeerNet(len(meta["channels"]), meta["variant"], meta["width"],
                          meta["hidden"], bool(meta.get("deltas", False)))
            state = torch.load(d / "model.pt", weights_only=True)
            net.load_state_dict({k: v.float() if v.is_floating_point() else v
                                 for k, v in state.items()})
        except (OSError, KeyError, RuntimeError, ValueError) as e:
            raise LeanstackError(f"Seer model in '{d}' cannot be read ({e}) — {how}") from None
        return cls(net, meta)
