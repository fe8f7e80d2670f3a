"""Reciprocal rank fusion."""

from __future__ import annotations

import pytest

from leanstack.chipexpert.fusion import reciprocal_rank_fusion


def test_item_found_by_both_beats_items_found_by_one() -> None:
    fused = reciprocal_rank_fusion([[1, 2, 3], [4, 2, 5]])
    assert fused[0][0] == 2
    assert fused[0][1] == pytest.approx(1 / 62 + 1 / 62)
    assert {i for i, _ in fused} == {1, 2, 3, 4, 5}


def test_scores_follow_the_formula_and_weights() -> None:
    fused = dict(reciprocal_rank_fusion([[7], [8]], k=0, weights=[1.0, 3.0]))
    assert fused == {7: 1.0, 8: 3.0}


def test_ties_keep_first_seen_order_and_empty_lists_work() -> None:
    assert [i for i, _ in reciprocal_rank_fusion([[1, 2], [3, 4]])] == [1, 3, 2, 4]
    assert reciprocal_rank_fusion([[], []]) == []
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([[1]], weights=[1.0, 2.0])
