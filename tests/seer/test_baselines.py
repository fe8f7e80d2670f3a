"""Culprit finders from other projects, run on Seer's windows."""

from __future__ import annotations

import numpy as np

from leanstack.seer.baselines import metric_frame, nsigma_ranking, tier_order
from leanstack.seer.features import CHANNELS

C = {c: i for i, c in enumerate(CHANNELS)}


def test_nsigma_names_the_tier_whose_metrics_jump_after_the_fault():
    rng = np.random.default_rng(0)
    history = rng.normal(0, 0.05, (30, 4, len(CHANNELS))).astype(np.float32)
    history[20:, 2, C["own_p99"]] += 2.0  # tier 2's tail latency jumps at window 20
    history[:, 1, C["own_p50"]] += 1.0  # tier 1 is slow all along: not a change
    order = nsigma_ranking(history, ["a", "b", "c", "d"], fault_window=20)
    assert order[0] == 2 and sorted(order) == [0, 1, 2, 3]


def test_metric_table_and_tier_order():
    df = metric_frame(np.zeros((5, 2, len(CHANNELS)), np.float32), ["front-end", "db"])
    assert "front-end_latency-99" in df.columns and "db_cpu" in df.columns
    assert float(df["db_latency"].iloc[0]) == 1.0  # ratios, not log-ratios
    assert tier_order(["db_cpu", "time", "db_mem"], ["front-end", "db"]) == [1, 0]
