"""A grader for free-text answers, calibrated against hand grades (0, 0.5 or 1).

Hand grades live in ``data/hand_grades.jsonl``: answers of the local model to ChipICD-Bench open
items (without retrieval, generative with retrieval, extractive), each graded by reading it
against the reference answer and key facts, with a one-line reason. They are split once, by
item, into a calibration half and a held-out half.

The grader reads four signals (``Signals``): key-fact coverage (stemmed words, alternatives
``a|b``), cosine similarity to the reference, repetition (share of repeated word 4-grams) and
invented citations (``[n]`` beyond the passages shown). An answer that loops or cites a passage
it was not given gets 0, as the hand grades do; otherwise ``w * coverage + (1 - w) *
similarity`` is cut at two thresholds into 0 / 0.5 / 1. ``calibrate`` picks ``w``, the
thresholds and the repetition limit on the calibration half (highest Cohen's kappa); the
agreement is reported on the held-out half.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from leanstack.chipexpert import store
from leanstack.chipexpert.bench.checkers import fact_coverage
from leanstack.errors import LeanstackError

GRADES = (0.0, 0.5, 1.0)
HALVES = ("calibration", "held-out")
MODES = ("no-retrieval", "generative", "extractive")
PASS = 0.5


@dataclass(frozen=True)
class HandGrade:
    """One answer graded by hand."""

    item: str
    mode: str
    answer: str
    passages: int
    grade: float
    why: str
    half: str


@dataclass(frozen=True)
class Signals:
    """What the grader reads off one answer."""

    coverage: float
    similarity: float
    repetition: float
    invented_citations: int


@dataclass(frozen=True)
class Grader:
    """``weight`` of coverage against similarity, the 0.5 and 1 thresholds, and the
    repetition share above which an answer is a loop."""

    weight: float = 0.5
    low: float = 0.3
    high: float = 0.6
    max_repetition: float = 0.3

    def score(self, s: Signals) -> float:
        """The continuous score (0 for loops and invented citations)."""
        if s.invented_citations or s.repetition > self.max_repetition:
            return 0.0
        return self.weight * s.coverage + (1 - self.weight) * max(0.0, s.similarity)

    def grade(self, s: Signals) -> float:
        """0, 0.5 or 1."""
        value = self.score(s)
        return 1.0 if value >= self.high else 0.5 if value >= self.low else 0.0

    def to_json(self) -> dict[str, float]:
        """The calibrated numbers."""
        return asdict(self)


def default_path() -> Path:
    """The hand grades shipped with the package."""
    return Path(str(resources.files("leanstack.chipexpert") / "data" / "hand_grades.jsonl"))


def load_hand_grades(path: Path | None = None) -> list[HandGrade]:
    """Read hand grades; a malformed record is a one-line error naming it."""
    path = path or default_path()
    out = []
    for n, rec in enumerate(store.read_jsonl(path), 1):
        try:
            g = HandGrade(rec["item"], rec["mode"], rec["answer"], int(rec["passages"]),
                          float(rec["grade"]), rec["why"], rec["half"])
        except (KeyError, TypeError, ValueError) as e:
            raise LeanstackError(f"{path}: record {n} lacks or mangles {e}; each needs item, "
                                 "mode, answer, passages, grade, why, half") from e
        if g.grade not in GRADES or g.half not in HALVES or g.mode not in MODES:
            raise LeanstackError(f"{path}: record {n}: grade must be 0/0.5/1, half one of "
                                 f"{HALVES}, mode one of {MODES}")
        out.append(g)
    return out


def repetition(text: str) -> float:
    """Share of the answer's word 4-grams that already occurred in it (0: no repeats)."""
    words = re.findall(r"\w+", text.lower())
    grams = [tuple(words[i:i + 4]) for i in range(len(words) - 3)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def invented_citations(text: str, passages: int) -> int:
    """How many ``[n]`` in the answer name a passage that was not shown (n > passages)."""
    return sum(1 for n in re.findall(r"\[(\d+)\]", text) if not 1 <= int(n) <= passages)


def signals(answer: str, reference: str, key_facts: list[str], passages: int,
            similarity: Callable[[str, str], float]) -> Signals:
    """The grader's view of one answer; ``similarity(answer, reference)`` is a cosine."""
    if not answer.strip():
        return Signals(0.0, 0.0, 0.0, 0)
    return Signals(fact_coverage(key_facts, answer), similarity(answer, reference),
                   repetition(answer), invented_citations(answer, passages))


def cohen_kappa(a: Sequence[float], b: Sequence[float]) -> float:
    """Cohen's kappa of two graders over the same answers (1: perfect, 0: chance level)."""
    if len(a) != len(b) or not a:
        raise LeanstackError("kappa needs two equally long, non-empty lists of grades")
    labels = sorted(set(a) | set(b))
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    expected = sum((list(a).count(v) / n) * (list(b).count(v) / n) for v in labels)
    return 1.0 if expected == 1 else (observed - expected) / (1 - expected)


def agreement(predicted: Sequence[float], hand: Sequence[float],
              scores: Sequence[float] | None = None) -> dict[str, float | None]:
    """Exact accuracy, Cohen's kappa, accuracy at the pass mark (grade >= 0.5) and, given
    continuous ``scores``, their Spearman correlation with the hand grades."""
    from scipy.stats import spearmanr

    n = len(hand)
    out: dict[str, float | None] = {
        "answers": n,
        "accuracy": sum(p == h for p, h in zip(predicted, hand, strict=True)) / n,
        "kappa": cohen_kappa(predicted, hand),
        "pass_accuracy": sum((p >= PASS) == (h >= PASS)
                             for p, h in zip(predicted, hand, strict=True)) / n,
        "spearman": None}
    if scores is not None and len(set(scores)) > 1 and len(set(hand)) > 1:
        out["spearman"] = float(spearmanr(scores, hand).statistic)
    return out


def calibrate(sigs: Sequence[Signals], hand: Sequence[float]) -> Grader:
    """The ``Grader`` (weight, thresholds, repetition limit on small grids) with the highest
    kappa against ``hand`` (ties: higher accuracy, then the earlier grid point)."""
    if len(sigs) != len(hand) or not hand:
        raise LeanstackError("calibration needs one hand grade per answer")
    best, key = Grader(), (-2.0, -1.0)
    cuts = [i / 20 for i in range(1, 20)]
    for w, rep in itertools.product((0.0, 0.25, 0.5, 0.75, 1.0), (0.2, 0.3, 0.5, 1.0)):
        for low, high in itertools.combinations(cuts, 2):
            g = Grader(w, low, high, rep)
            pred = [g.grade(s) for s in sigs]
            k = (cohen_kappa(pred, hand),
                 sum(p == h for p, h in zip(pred, hand, strict=True)) / len(hand))
            if k > key:
                best, key = g, k
    return best


def calibrated_grader(similarity: Callable[[str, str], float],
                      path: Path | None = None) -> Grader:
    """The grader calibrated on the calibration half of the hand grades (the held-out half is
    left for reporting agreement), with ``similarity`` as the cosine (``OpenScorer``'s)."""
    from leanstack.chipexpert.bench.items import load_items

    items = {it.id: it for it in load_items()}
    cal = [h for h in load_hand_grades(path) if h.half == "calibration"]
    sigs = [signals(h.answer, items[h.item].answer, items[h.item].key_facts, h.passages,
                    similarity) for h in cal]
    return calibrate(sigs, [h.grade for h in cal])
