"""Fusion of dense and sparse retrieval: reciprocal rank fusion of ranked lists, and a convex
combination of normalised scores."""

from __future__ import annotations

import numpy as np

RRF_K = 60  # the constant of Cormack et al. (2009); damps the weight of the very top ranks


def reciprocal_rank_fusion(rankings: list[list[int]], k: int = RRF_K,
                           weights: list[float] | None = None) -> list[tuple[int, float]]:
    """Fuse ranked lists of item ids: score(d) = sum_i w_i / (k + rank_i(d)), ranks from 1.
    Returns (id, score) best first; ties keep the order in which items were first seen."""
    if k < 0:
        raise ValueError("k must be >= 0")
    weights = weights or [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError("one weight per ranking")
    scores: dict[int, float] = {}
    for ranking, w in zip(rankings, weights, strict=True):
        for rank, item in enumerate(ranking, 1):
            scores[item] = scores.get(item, 0.0) + w / (k + rank)
    return sorted(scores.items(), key=lambda kv: -kv[1])


def min_max(scores: np.ndarray) -> np.ndarray:
    """Scale scores to [0, 1] (all zeros when they are all equal)."""
    lo, hi = float(scores.min()), float(scores.max())
    return (scores - lo) / (hi - lo) if hi > lo else np.zeros_like(scores)


def convex_fusion(dense: np.ndarray, sparse: np.ndarray, dense_weight: float) -> np.ndarray:
    """Convex combination of min-max normalised scores over the same rows:
    ``w * mm(dense) + (1 - w) * mm(sparse)`` (Bruch et al., 2023: it beats RRF once ``w`` is
    set on a few labelled queries)."""
    if not 0.0 <= dense_weight <= 1.0:
        raise ValueError("dense_weight must be in [0, 1]")
    if dense.shape != sparse.shape:
        raise ValueError("one score per row in both lists")
    return dense_weight * min_max(dense) + (1.0 - dense_weight) * min_max(sparse)
