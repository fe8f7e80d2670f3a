"""Baselines scored in the same harness as Seer's network.

- :class:`ThresholdRule`: alert when some tier's own p99 latency exceeds ``k`` x its baseline
  median; the culprit ranking is by that ratio. ``k`` is picked on the validation split.
- :class:`BoostedTree`: Sinan's boosted-tree violation predictor (xgboost, Sinan's settings),
  retrained on Seer's windows. Sinan's model is per app, so its input is made tier-count
  agnostic: per window of the lookback, the end-to-end channels and the max and mean over
  tiers of every per-tier channel. It predicts violations; it names no culprit.
- :func:`baro_ranking`: BARO (``fse-baro``): multivariate Bayesian online change-point
  detection on the latency series finds when the anomaly began, then its RobustScorer ranks
  every metric by how far it moved from before that point; a tier ranks at its best metric.
- :func:`nsigma_ranking`: RCAEval's metric-based N-Sigma (``RCAEval``): every metric's largest
  z-score after the fault's start against before it; as in RCAEval's benchmark it is given
  the true start, which no online detector knows.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from leanstack.seer.campaign import Dataset
from leanstack.seer.features import CHANNELS

_C = {name: i for i, name in enumerate(CHANNELS)}
_TIER_CHANNELS = [i for i, n in enumerate(CHANNELS) if not n.startswith("e2e")]


class ThresholdRule:
    """A tier's own p99 latency above ``k`` x its median raises an alert naming that tier
    (``k`` is the alert threshold on :meth:`scores`, picked like Seer's)."""

    name = "threshold"

    @staticmethod
    def scores(ds: Dataset) -> np.ndarray:
        """Per window, the largest own-p99 ratio over tiers ``[episode, window]`` (a ratio)."""
        return np.exp(ds.arrays["x"][..., _C["own_p99"]].max(axis=-1))

    @staticmethod
    def ranking(x_window: np.ndarray) -> list[int]:
        """Tiers by own-p99 ratio in one window ``[tiers, channels]``, highest first."""
        return [int(i) for i in np.argsort(-x_window[:, _C["own_p99"]], kind="stable")]


def tree_inputs(x: np.ndarray) -> np.ndarray:
    """``[S, lookback, tiers, channels]`` -> ``[S, features]``: end-to-end channels plus the
    max and mean over tiers of each per-tier channel, for every window of the lookback."""
    per = x[..., _TIER_CHANNELS]
    parts = [x[:, :, 0, _C["e2e_sla"]][..., None], x[:, :, 0, _C["e2e_change"]][..., None],
             per.max(axis=2), per.mean(axis=2)]
    return np.concatenate(parts, axis=-1).reshape(len(x), -1)


class BoostedTree:
    """Sinan's xgboost violation predictor, on :func:`tree_inputs`."""

    name = "boosted_tree"

    def __init__(self, rounds: int = 2000, early_stop: int = 50, eta: float = 0.01,
                 depth: int = 6, seed: int = 0) -> None:
        self.params = {"objective": "binary:logistic", "eta": eta, "max_depth": depth,
                       "eval_metric": "logloss", "nthread": 1, "seed": seed}
        self.rounds, self.early_stop = rounds, early_stop
        self.booster: Any = None

    def fit(self, in_tr: np.ndarray, y_tr: np.ndarray, in_va: np.ndarray,
            y_va: np.ndarray) -> BoostedTree:
        """Train on :func:`tree_inputs` rows, stopping early on the validation rows."""
        import xgboost as xgb

        dtr = xgb.DMatrix(in_tr, label=y_tr.astype(np.float32))
        dva = xgb.DMatrix(in_va, label=y_va.astype(np.float32))
        self.booster = xgb.train(self.params, dtr, num_boost_round=self.rounds,
                                 evals=[(dva, "val")], early_stopping_rounds=self.early_stop,
                                 verbose_eval=False)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        import xgboost as xgb

        return np.asarray(self.booster.predict(
            xgb.DMatrix(tree_inputs(x)), iteration_range=(0, self.booster.best_iteration + 1)))


BARO_COLUMNS = {"own_p50": "latency", "own_p99": "latency-99", "queue_wait": "wait",
                "cpu_util": "cpu", "memory": "mem", "inflight": "inflight"}
"""Seer channels handed to BARO, with BARO's column-name suffixes (it picks latency series for
change-point detection by the name ``latency``)."""


def metric_frame(history: np.ndarray, tiers: list[str]) -> Any:
    """One episode's history ``[windows, tiers, channels]`` as the table BARO and RCAEval
    read: a ``time`` column and one ``<tier>_<metric>`` column per tier and
    :data:`BARO_COLUMNS` channel. The features are log-ratios to the baseline; the table gets
    the ratios (the scorers are invariant to each metric's own scale)."""
    import pandas as pd

    cols = {"time": np.arange(len(history), dtype=float)}
    for i, tier in enumerate(tiers):
        for ch, suffix in BARO_COLUMNS.items():
            v = history[:, i, _C[ch]]
            cols[f"{tier}_{suffix}"] = v if ch == "cpu_util" else np.exp(v)
    return pd.DataFrame(cols)


def tier_order(ranked_columns: list[str], tiers: list[str]) -> list[int]:
    """Tier indices in the order their best-ranked metric column appears."""
    order: list[int] = []
    index = {t: i for i, t in enumerate(tiers)}
    for col in ranked_columns:
        i = index.get(col.rsplit("_", 1)[0])
        if i is not None and i not in order:
            order.append(i)
    return order + [i for i in range(len(tiers)) if i not in order]


def baro_ranking(history: np.ndarray, tiers: list[str]) -> list[int]:
    """BARO's tier ranking from one episode's history ``[windows, tiers, channels]`` up to the
    diagnosis window."""
    from baro.anomaly_detection import bocpd
    from baro.root_cause_analysis import robust_scorer

    df = metric_frame(history, tiers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cps = [int(c) for c in bocpd(df) if 0 < int(c) < len(df) - 1]
        # the last change point before the diagnosis window splits normal from anomalous
        cut = cps[-1] if cps else max(1, len(df) // 2)
        ranks = robust_scorer(df, anomalies=[cut])["ranks"]
    return tier_order(list(ranks), tiers)


def nsigma_ranking(history: np.ndarray, tiers: list[str], fault_window: int) -> list[int]:
    """RCAEval's N-Sigma tier ranking from one episode's history up to the diagnosis window,
    given the window the fault began in."""
    from RCAEval.e2e import nsigma

    df = metric_frame(history, tiers)
    cut = int(np.clip(fault_window, 1, len(df) - 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ranks = nsigma(df, anomalies=[cut])["ranks"]
    return tier_order(list(ranks), tiers)
