"""Retrieval evaluation: recall@k and MRR of a retriever on the shipped question set.

Each question names the chunk(s) that answer it by a stable locator (source + section), so the
set survives re-chunking: any chunk of an answering section counts as a hit.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from leanstack.chipexpert import store
from leanstack.chipexpert.retrieval import Retriever
from leanstack.errors import LeanstackError

MRR_DEPTH = 10


@dataclass(frozen=True)
class EvalItem:
    """A question and the (source, section) locators of the sections that answer it."""

    id: str
    question: str
    answers: frozenset[tuple[str, str]]


@dataclass(frozen=True)
class EvalScores:
    """Recall@k and MRR@10 over a question set, plus the per-question first-hit ranks."""

    method: str
    recall_at_k: float
    mrr: float
    k: int
    ranks: dict[str, int | None]


def default_eval_path() -> Path:
    """The question set shipped with the package."""
    return Path(str(resources.files("leanstack.chipexpert") / "data" / "retrieval_eval.jsonl"))


def load_eval_set(path: Path | None = None) -> list[EvalItem]:
    """Read a question set: JSONL of {id, question, answers: [{source, section}, ...]}."""
    path = path or default_eval_path()
    items = []
    for n, rec in enumerate(store.read_jsonl(path), 1):
        try:
            answers = frozenset((a["source"], a["section"]) for a in rec["answers"])
            items.append(EvalItem(rec["id"], rec["question"], answers))
        except (KeyError, TypeError) as e:
            raise LeanstackError(f"{path}: item {n} lacks id/question/answers[source, section] "
                                 f"({e}); fix the item") from e
    return items


def first_hit_rank(retriever: Retriever, item: EvalItem, method: str,
                   depth: int = MRR_DEPTH) -> int | None:
    """The 1-based rank of the first chunk from an answering section, or None if not in depth."""
    for rank, hit in enumerate(retriever.search(item.question, k=depth, method=method), 1):
        if (hit.source, hit.section) in item.answers:
            return rank
    return None


def evaluate(retriever: Retriever, items: list[EvalItem], method: str, k: int = 3) -> EvalScores:
    """Recall@k (share of questions answered in the top k) and MRR@10 of one method."""
    if not items:
        raise LeanstackError("the question set is empty; add questions to it")
    ranks = {it.id: first_hit_rank(retriever, it, method) for it in items}
    recall = sum(1 for r in ranks.values() if r is not None and r <= k) / len(items)
    mrr = sum(1.0 / r for r in ranks.values() if r is not None) / len(items)
    return EvalScores(method, recall, mrr, k, ranks)


def missing_locators(items: list[EvalItem], chunks_locators: set[tuple[str, str]]) -> list[str]:
    """Ids of questions none of whose answering sections is in the corpus (a broken item)."""
    return [it.id for it in items if not it.answers & chunks_locators]
