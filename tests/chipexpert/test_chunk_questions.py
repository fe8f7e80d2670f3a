"""The chunk-level question set: size, a split with no document in both halves, labels that
point to chunks holding the evidence, and the metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from leanstack.chipexpert import chunk_eval
from leanstack.chipexpert.chunk_eval import (
    document_key,
    first_hit,
    lexical_overlap,
    load_questions,
    metrics,
    normalise,
)
from leanstack.chipexpert.corpus import load_corpus
from leanstack.errors import LeanstackError


def test_set_is_large_and_split_in_two() -> None:
    items = load_questions()
    assert len(items) >= 200
    assert len({it.id for it in items}) == len(items)
    tuning, test = load_questions(split="tuning"), load_questions(split="test")
    assert len(tuning) + len(test) == len(items)
    assert min(len(tuning), len(test)) >= 80


def test_no_document_is_in_both_halves() -> None:
    items = load_questions()
    for it in items:  # the stored document is the one the rule gives (nobody moved an item)
        assert it.document == document_key(it.source, it.section), it.id
    tuning = {it.document for it in items if it.split == "tuning"}
    test = {it.document for it in items if it.split == "test"}
    assert not tuning & test


def test_document_key_groups_a_manual_chapter_and_keeps_commands_apart() -> None:
    assert document_key("ngspice-manual", "15.3.5 .OP: Operating Point Analysis") == \
        document_key("ngspice-manual", "Chapter 15 Analyses and Output Control (batch mode)")
    assert document_key("yosys-help", "abc -- use ABC") != \
        document_key("yosys-help", "abc9 -- use ABC9")
    assert document_key("man-vvp", "Options") == document_key("man-vvp", "Environment")


def test_labels_point_to_chunks_that_hold_the_evidence(small_kb: Path) -> None:
    """Every question about a document in the small test corpus names chunks of that corpus
    whose text contains the question's evidence span."""
    chunks = {c.id: c for c in load_corpus(small_kb)}
    places = {(c.source, c.section) for c in chunks.values()}
    checked = 0
    for it in load_questions():
        if (it.source, it.section) not in places:
            continue
        present = [cid for cid in it.chunk_ids if cid in chunks]
        assert present, f"{it.id}: none of {it.chunk_ids} is in the corpus"
        assert all(normalise(it.evidence) in normalise(chunks[c].text) for c in present), it.id
        checked += 1
    assert checked >= 10


def test_bad_items_and_splits_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(LeanstackError, match="unknown split"):
        load_questions(split="train")
    bad = tmp_path / "q.jsonl"
    bad.write_text(json.dumps({"id": "x", "question": "q?"}) + "\n")
    with pytest.raises(LeanstackError, match="lacks"):
        load_questions(bad)
    rec = {"id": "x", "question": "q?", "evidence": "e", "source": "s", "section": "t",
           "chunk_ids": [], "document": "s", "split": "test"}
    bad.write_text(json.dumps(rec) + "\n")
    with pytest.raises(LeanstackError, match="chunk id"):
        load_questions(bad)


def test_metrics_on_a_hand_made_case() -> None:
    m = metrics([1, 3, None, 11])
    assert m["recall_at_1"] == 0.25
    assert m["recall_at_3"] == 0.5
    assert m["recall_at_10"] == 0.5
    assert m["mrr_at_10"] == pytest.approx((1 + 1 / 3) / 4)
    assert first_hit(["a", "b", "c"], ["c", "z"]) == 3
    assert first_hit(["a"], ["z"]) is None
    with pytest.raises(LeanstackError):
        metrics([])


def test_evaluate_scores_a_ranking_function() -> None:
    items = load_questions(split="test")[:4]
    perfect = chunk_eval.evaluate(lambda q: [next(it.chunk_ids[0] for it in items
                                                  if it.question == q)], items)
    assert perfect["recall_at_1"] == 1.0
    assert chunk_eval.evaluate(lambda q: ["nothing"], items)["recall_at_10"] == 0.0


def test_lexical_overlap_counts_stemmed_content_words() -> None:
    assert lexical_overlap("remove unused wires", "Removes the unused wire.") == 1.0
    assert lexical_overlap("flatten the hierarchy", "counts cells") == 0.0
    assert 0 < lexical_overlap("remove flip-flops", "remove cells") < 1
