"""Sinan's two models and their on-disk form.

- :class:`LatencyCNN` — the paper's CNN latency predictor (~32k parameters): a convolutional
  system branch over (channels x tiers x 5 s), a latency-history branch and a proposal branch,
  concatenated into a 64-d feature, then the next second's five latency percentiles.
  Our change: the proposal also enters the system branch as a seventh channel (each tier's
  proposed cores beside its measured ones). The system branch ends in a global average pool over
  tiers, so without it the network cannot tell *which* tier the proposal starves; with it the
  first 1x1 convolution can compare a tier's proposal with its own CPU use.
- the boosted-tree violation predictor (xgboost) on the CNN's 64-d feature plus the proposal
  repeated for the 4-second horizon.

:class:`SinanModel` bundles both with the app they were trained for. A model directory holds
``cnn.pt`` (weights), ``violation.ubj`` (the booster), ``meta.json`` (app, tiers, QoS, metrics)
and ``explain.npz`` (a few held-out samples for ``sinan explain``).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from leanstack.atomic import write_bytes, write_json
from leanstack.errors import LeanstackError
from leanstack.sinan.features import CHANNELS, HORIZON, PCT_KEYS, WINDOW

MODELS_DIR = Path(__file__).parent / "models"
"""Models shipped with leanstack, one directory per app."""

FEATURE_DIM = 64


def _conv(c_in: int, c_out: int, k: tuple[int, int], stride: tuple[int, int] = (1, 1)) -> list:
    pad = (k[0] // 2, k[1] // 2)
    return [nn.Conv2d(c_in, c_out, k, stride=stride, padding=pad, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU()]


class LatencyCNN(nn.Module):
    """The paper's CNN: system, latency and proposal branches -> 64-d feature -> 5 percentiles."""

    def __init__(self, n_tiers: int, n_channels: int = len(CHANNELS),
                 n_pct: int = len(PCT_KEYS), window: int = WINDOW) -> None:
        super().__init__()
        self.system = nn.Sequential(
            nn.BatchNorm2d(n_channels + 1),
            *_conv(n_channels + 1, 16, (1, 1)), *_conv(16, 16, (3, 3)),
            *_conv(16, 16, (4, 3), (2, 1)), *_conv(16, 16, (3, 3)),
            *_conv(16, 32, (3, 3), (2, 1)), *_conv(32, 32, (3, 3)),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 32), nn.ReLU())
        self.latency = nn.Sequential(nn.Flatten(), nn.Linear(n_pct * window, 32), nn.ReLU())
        self.proposal = nn.Sequential(nn.Linear(n_tiers, 32), nn.ReLU(), nn.Linear(32, 32),
                                      nn.ReLU())
        self.feature = nn.Sequential(nn.Linear(96, FEATURE_DIM), nn.ReLU())
        self.head = nn.Linear(FEATURE_DIM, n_pct)

    def forward(self, sys_x: torch.Tensor, lat_x: torch.Tensor,
                proposal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (predicted percentiles in QoS units, the 64-d feature)."""
        planned = proposal[:, None, :, None].expand(-1, 1, -1, sys_x.shape[-1])
        f = self.feature(torch.cat([self.system(torch.cat([sys_x, planned], dim=1)),
                                    self.latency(lat_x),
                                    self.proposal(proposal)], dim=1))
        return self.head(f), f


def xgb_inputs(feature: np.ndarray, proposal: np.ndarray) -> np.ndarray:
    """The violation predictor's input: CNN feature + the proposal repeated for the horizon."""
    return np.concatenate([feature, np.tile(proposal, (1, HORIZON))], axis=1)


def xgb_feature_names(tiers: list[str]) -> list[str]:
    """Names of :func:`xgb_inputs` columns, for importance tables."""
    return ([f"cnn{i}" for i in range(FEATURE_DIM)]
            + [f"proposal:{t}:+{h + 1}s" for h in range(HORIZON) for t in tiers])


@dataclass
class SinanModel:
    """A trained CNN + booster for one app; ``meta`` has ``app``, ``tiers``, ``qos_ms``."""

    cnn: LatencyCNN
    booster: Any  # xgboost.Booster
    meta: dict[str, Any]

    @property
    def tiers(self) -> list[str]:
        return list(self.meta["tiers"])

    def predict(self, sys_x: np.ndarray, lat_x: np.ndarray,
                proposal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predicted percentiles (QoS units) and violation probability, one row per sample."""
        import xgboost as xgb

        with torch.inference_mode():
            pred, feat = self.cnn(torch.from_numpy(np.ascontiguousarray(sys_x, np.float32)),
                                  torch.from_numpy(np.ascontiguousarray(lat_x, np.float32)),
                                  torch.from_numpy(np.ascontiguousarray(proposal, np.float32)))
        x = xgb_inputs(feat.numpy(), proposal)
        prob = self.booster.predict(xgb.DMatrix(x), validate_features=False)
        return pred.numpy(), np.asarray(prob)

    def save(self, out_dir: str | Path, explain: dict[str, np.ndarray] | None = None) -> Path:
        """Write the model directory (each file atomically)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(self.cnn.state_dict(), buf)
        write_bytes(out / "cnn.pt", buf.getvalue())
        write_bytes(out / "violation.ubj", bytes(self.booster.save_raw("ubj")))
        if explain is not None:
            ebuf = io.BytesIO()
            np.savez_compressed(ebuf, **explain)
            write_bytes(out / "explain.npz", ebuf.getvalue())
        write_json(out / "meta.json", self.meta)
        return out

    @classmethod
    def load(cls, model_dir: str | Path) -> SinanModel:
        """Read a model directory written by :meth:`save`."""
        import xgboost as xgb

        d = Path(model_dir)
        how = ("train one: leanstack sinan collect --app APP --out data.npz && "
               "leanstack sinan train --data data.npz --out DIR")
        if not (d / "meta.json").is_file():
            raise LeanstackError(f"no Sinan model in '{d}' (meta.json missing) — {how}")
        try:
            meta = json.loads((d / "meta.json").read_text())
            cnn = LatencyCNN(len(meta["tiers"]))
            cnn.load_state_dict(torch.load(d / "cnn.pt", weights_only=True))
            cnn.eval()
            booster = xgb.Booster()
            booster.load_model(bytearray((d / "violation.ubj").read_bytes()))
            booster.set_param({"nthread": 1})
        except (OSError, KeyError, RuntimeError, ValueError, xgb.core.XGBoostError) as e:
            raise LeanstackError(f"Sinan model in '{d}' cannot be read ({e}) — {how}") from None
        return cls(cnn, booster, meta)


def shipped_model_dir(app_name: str) -> Path:
    """Where the model shipped for ``app_name`` lives (it may not exist)."""
    return MODELS_DIR / app_name
