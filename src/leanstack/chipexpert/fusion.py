"""Reciprocal rank fusion: combine ranked lists without calibrating their scores."""

from __future__ import annotations

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
