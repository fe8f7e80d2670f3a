"""Ways to pick a multiple-choice answer from a model's log-likelihoods, and a no-model baseline.

For the choices of one item, the model gives the summed log-probability of each choice's text
after the question (``scores``) and after a content-free prompt (``prior``):

* ``raw``: the highest summed log-probability (favours short choices);
* ``per-char`` / ``per-token``: divided by the choice's length (length-normalised);
* ``pmi``: score minus prior, i.e. how much the question raises the choice (pointwise mutual
  information), which removes the model's taste for some surface forms;
* ``longest``: the longest choice, without any model: the baseline every rule must beat.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from leanstack.errors import LeanstackError

RULES = ("raw", "per-char", "per-token", "pmi", "longest")
HALVES = ("tuning", "test")


def split_half(item_id: str) -> str:
    """The MCQ items' fixed tuning/test split, by a hash of the id: the scoring rule is chosen
    on the tuning half (benchmarks/chip_mcq_baselines.py), accuracies are quoted on the test
    half."""
    return HALVES[int(hashlib.sha256(item_id.encode()).hexdigest(), 16) % 2]


@dataclass(frozen=True)
class ChoiceScores:
    """What the rules need about one item's choices (one entry per choice)."""

    choices: Sequence[str]
    scores: Sequence[float]
    prior: Sequence[float]
    tokens: Sequence[int]


def rule_values(rule: str, s: ChoiceScores) -> list[float]:
    """The value each choice gets under ``rule`` (higher is better)."""
    n = len(s.choices)
    if n == 0 or not (len(s.scores) == len(s.prior) == len(s.tokens) == n):
        raise LeanstackError("one score, prior and token count per choice, and >= 1 choice")
    if rule == "raw":
        return list(s.scores)
    if rule == "per-char":
        return [v / max(1, len(c)) for v, c in zip(s.scores, s.choices, strict=True)]
    if rule == "per-token":
        return [v / max(1, t) for v, t in zip(s.scores, s.tokens, strict=True)]
    if rule == "pmi":
        return [v - p for v, p in zip(s.scores, s.prior, strict=True)]
    if rule == "longest":
        return [float(len(c)) for c in s.choices]
    raise LeanstackError(f"unknown MCQ rule {rule!r}; use one of {', '.join(RULES)}")


def pick(rule: str, s: ChoiceScores) -> int:
    """Index of the choice ``rule`` picks (the first one on a tie)."""
    values = rule_values(rule, s)
    return max(range(len(values)), key=values.__getitem__)
