"""The retrieval question set and its metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests._require import require

from leanstack.chipexpert import sources
from leanstack.chipexpert.corpus import build_corpus, load_corpus
from leanstack.chipexpert.evaluate import EvalItem, evaluate, load_eval_set, missing_locators
from leanstack.chipexpert.retrieval import Retriever
from leanstack.errors import LeanstackError

from .conftest import require_docs


def test_shipped_set_is_large_and_well_formed() -> None:
    items = load_eval_set()
    assert len(items) >= 60
    assert len({i.id for i in items}) == len(items)
    assert all(i.question.endswith("?") and i.answers for i in items)


def test_every_question_points_at_a_section_of_the_full_corpus(tmp_path: Path) -> None:
    """Guards the set against re-chunking or extractor changes that rename sections."""
    require_docs()
    srcs = sources.default_sources()
    require([str(p) for s in srcs for p in s.inputs[:1] if not p.exists()],
            "run scripts/system-deps.sh")
    build_corpus(tmp_path, srcs)
    chunks = load_corpus(tmp_path)
    assert missing_locators(load_eval_set(), {(c.source, c.section) for c in chunks}) == []


def test_metrics_on_a_small_knowledge_base(small_kb: Path, embedding_model) -> None:
    retriever = Retriever.load(small_kb, model=embedding_model)
    items = [EvalItem("a", "Which command maps flip-flops to a liberty cell library?",
                      frozenset({("yosys-help", "dfflibmap -- technology mapping of flip-flops")})),
             EvalItem("b", "Which command has no section here?",
                      frozenset({("yosys-help", "no such section")}))]
    scores = evaluate(retriever, items, "bm25", k=3)
    assert scores.ranks["b"] is None
    assert scores.ranks["a"] == 1
    assert scores.recall_at_k == 0.5 and scores.mrr == 0.5


def test_bad_item_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "set.jsonl"
    path.write_text(json.dumps({"id": "x", "question": "q?"}) + "\n")
    with pytest.raises(LeanstackError, match="item 1 lacks"):
        load_eval_set(path)
