"""The answer grader: its signals, agreement measures on hand-made cases, calibration, and the
shipped hand grades."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from leanstack.chipexpert.bench.items import load_items
from leanstack.chipexpert.grading import (
    Grader,
    Signals,
    agreement,
    calibrate,
    cohen_kappa,
    invented_citations,
    load_hand_grades,
    repetition,
)
from leanstack.errors import LeanstackError


def test_kappa_and_agreement_on_a_hand_made_case() -> None:
    hand = [0, 0, 0, 0, 0.5, 1]
    pred = [0, 0, 0, 0.5, 0.5, 0.5]
    # observed 4/6; expected = (4/6)(3/6) + (1/6)(3/6) + (1/6)(0) = 15/36
    assert cohen_kappa(pred, hand) == pytest.approx((4 / 6 - 15 / 36) / (1 - 15 / 36))
    a = agreement(pred, hand, scores=[0, 0.1, 0.2, 0.4, 0.5, 0.6])
    assert a["accuracy"] == pytest.approx(4 / 6)
    assert a["pass_accuracy"] == pytest.approx(5 / 6)  # only the 0-graded 0.5 disagrees
    # ranks 1..6 against (2.5, 2.5, 2.5, 2.5, 5, 6): 12.5 / sqrt(17.5 * 12.5)
    assert a["spearman"] == pytest.approx(12.5 / (17.5 * 12.5) ** 0.5)
    assert cohen_kappa(hand, hand) == 1.0
    assert agreement([0.0] * 6, hand)["kappa"] == 0.0  # always-0 is chance level
    with pytest.raises(LeanstackError):
        cohen_kappa([0], [0, 1])


def test_loops_and_invented_citations_are_caught() -> None:
    loop = "the flip-flop is a flip-flop. " * 6
    assert repetition(loop) > 0.6
    assert repetition("A latch is level-sensitive; a flip-flop is edge-triggered.") == 0.0
    assert invented_citations("see [1] and [4], also [12]", passages=3) == 2
    assert invented_citations("no passages, yet [1]", passages=0) == 1
    g = Grader(weight=0.5, low=0.3, high=0.6, max_repetition=0.3)
    good = Signals(coverage=1.0, similarity=0.8, repetition=0.0, invented_citations=0)
    assert g.grade(good) == 1.0
    assert g.grade(Signals(1.0, 0.8, 0.0, 1)) == 0.0
    assert g.grade(Signals(1.0, 0.8, 0.5, 0)) == 0.0
    assert g.grade(Signals(0.25, 0.5, 0.0, 0)) == 0.5


def test_calibration_recovers_a_planted_rule() -> None:
    sigs = [Signals(c, c, 0.0, 0) for c in (0.0, 0.1, 0.2, 0.45, 0.5, 0.55, 0.8, 0.9, 1.0)]
    hand = [0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0]
    g = calibrate(sigs, hand)
    assert [g.grade(s) for s in sigs] == hand


def test_shipped_hand_grades_are_complete_and_split_by_item() -> None:
    grades = load_hand_grades()
    assert len(grades) >= 60
    items = {it.id: it for it in load_items()}
    assert all(g.item in items and items[g.item].type == "open" for g in grades)
    assert all(g.why.strip() for g in grades)
    halves: dict[str, set[str]] = {}
    for g in grades:
        halves.setdefault(g.item, set()).add(g.half)
    assert all(len(h) == 1 for h in halves.values())  # an item's answers share one half
    assert {g.half for g in grades} == {"calibration", "held-out"}


def test_bad_hand_grade_files_are_one_line_errors(tmp_path: Path) -> None:
    bad = tmp_path / "g.jsonl"
    bad.write_text(json.dumps({"item": "x"}) + "\n")
    with pytest.raises(LeanstackError, match="lacks"):
        load_hand_grades(bad)
    rec = {"item": "x", "mode": "extractive", "answer": "a", "passages": 3, "grade": 0.7,
           "why": "w", "half": "held-out"}
    bad.write_text(json.dumps(rec) + "\n")
    with pytest.raises(LeanstackError, match="0/0.5/1"):
        load_hand_grades(bad)
