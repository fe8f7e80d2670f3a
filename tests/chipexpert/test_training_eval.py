"""ChipExpert per-stage evaluation without a model: which bench items and held-out questions are
asked (per domain and type, deterministic, never a tuning half), how held-out answers are
graded, MCQ accuracy next to the always-longest baseline, and bad [eval] settings."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from leanstack.chipexpert.assistant import Assistant
from leanstack.chipexpert.bench.checkers import fact_coverage
from leanstack.chipexpert.bench.items import DOMAINS, Item, load_items
from leanstack.chipexpert.bench.mcq import split_half
from leanstack.chipexpert.chunk_eval import load_questions
from leanstack.chipexpert.grading import Grader
from leanstack.chipexpert.training.card import _evaluation_lines
from leanstack.chipexpert.training.config import EvalSection, parse_config
from leanstack.chipexpert.training.evaluate import (
    answer_heldout,
    bench_items,
    evidence_facts,
    heldout_questions,
    heldout_summary,
    mcq_stats,
)
from leanstack.errors import LeanstackError

# ---------- the bench subset ----------


def test_subset_takes_each_type_per_domain_first_by_id() -> None:
    items = load_items()
    chosen, verilog = bench_items(EvalSection(bench_per_domain=2), items)
    counts = Counter((it.domain, it.type) for it in chosen)
    for domain in DOMAINS:
        for kind in ("open", "mcq", "numeric"):
            pool = sorted(it.id for it in items if it.domain == domain and it.type == kind
                          and (kind != "mcq" or split_half(it.id) == "test"))
            assert counts[(domain, kind)] == 2
            assert sorted(it.id for it in chosen if (it.domain, it.type) == (domain, kind)) \
                == pool[:2]
    assert {it.type for it in verilog} == {"verilog"} and len(verilog) == 8
    assert not {it.type for it in chosen} & {"verilog", "spice"}


def test_subset_is_the_same_whatever_the_file_order() -> None:
    items = load_items()
    shuffled = items[:]
    random.Random(7).shuffle(shuffled)
    ev = EvalSection(bench_per_domain=1, mcq_per_domain=3)
    assert [it.id for it in bench_items(ev, shuffled)[0]] == \
        [it.id for it in bench_items(ev, items)[0]]


def test_mcqs_come_only_from_the_test_half_and_their_own_limit() -> None:
    items = load_items()
    chosen, _ = bench_items(EvalSection(bench_per_domain=1, mcq_per_domain=1000), items)
    mcq = {it.id for it in chosen if it.type == "mcq"}
    test_half = {it.id for it in items if it.type == "mcq" and split_half(it.id) == "test"}
    assert mcq == test_half and len(test_half) < sum(it.type == "mcq" for it in items)
    assert Counter(it.type for it in chosen)["open"] == len(DOMAINS)
    only_open, _ = bench_items(EvalSection(bench_types=["open"], bench_per_domain=1), items)
    assert {it.type for it in only_open} == {"open"}


@pytest.mark.parametrize(("section", "words"), [
    ({"bench_types": ["open", "open"]}, ["eval.bench_types", "twice"]),
    ({"bench_types": ["essay"]}, ["eval.bench_types"]),
    ({"bench_types": ["verilog"]}, ["eval.bench_types"]),
    ({"bench_per_domain": -1}, ["eval.bench_per_domain"]),
    ({"mcq_per_domain": -2}, ["eval.mcq_per_domain"]),
    ({"heldout_questions": -1}, ["eval.heldout_questions"]),
])
def test_bad_eval_settings_are_one_line(section: dict, words: list[str]) -> None:
    with pytest.raises(LeanstackError) as err:
        parse_config({"name": "x", "eval": section}, "test.toml")
    assert "\n" not in str(err.value)
    for word in words:
        assert word in str(err.value)


# ---------- held-out questions ----------


def test_heldout_questions_come_from_the_test_half_only() -> None:
    tuning = {q.id for q in load_questions(split="tuning")}
    test = sorted(q.id for q in load_questions(split="test"))
    picked = heldout_questions(12)
    ids = [q.id for q in picked]
    assert len(set(ids)) == 12 and not set(ids) & tuning and set(ids) <= set(test)
    assert ids == [q.id for q in heldout_questions(12)] == sorted(ids)
    assert len({q.source for q in picked}) >= 3  # spread over the set, not its first source
    assert [q.id for q in heldout_questions(len(test))] == test
    assert heldout_questions(0) == []


def test_heldout_selection_skips_tuning_questions_in_any_file(tmp_path: Path) -> None:
    rows = [{"id": f"q{i:02d}", "question": f"question {i}?", "evidence": "e", "source": "s",
             "section": "x", "chunk_ids": ["c"], "document": "d",
             "split": "tuning" if i % 3 else "test"} for i in range(30)]
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    picked = heldout_questions(10, path)
    assert [q.id for q in picked] == [f"q{i:02d}" for i in range(0, 30, 3)]
    with pytest.raises(LeanstackError, match="at most 10") as err:
        heldout_questions(11, path)
    assert "\n" not in str(err.value)


class _Echo:
    """A generator that replies with a fixed text and records the prompt."""

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.prompts: list[list[dict[str, str]]] = []

    def generate(self, messages: list[dict[str, str]], max_new_tokens: int = 256) -> str:
        self.prompts.append(messages)
        return self.reply


def _word_overlap(a: str, b: str) -> float:
    x, y = set(a.lower().split()), set(b.lower().split())
    return len(x & y) / len(x | y) if x | y else 0.0


def test_heldout_answers_are_graded_against_the_evidence() -> None:
    q = heldout_questions(1)[0]
    grader = Grader(weight=0.5, low=0.3, high=0.6, max_repetition=0.3)
    good = answer_heldout(Assistant(_Echo(q.evidence), None), [q], _word_overlap, grader)[0]
    off = answer_heldout(Assistant(_Echo("Resistors dissipate heat."), None), [q],
                         _word_overlap, grader)[0]
    loop = answer_heldout(Assistant(_Echo("the the the the " * 10), None), [q],
                          _word_overlap, grader)[0]
    cited = answer_heldout(Assistant(_Echo(q.evidence + " [4]"), None), [q],
                           _word_overlap, grader)[0]
    assert good["grade"] == 1.0 and good["coverage"] == 1.0
    assert off["grade"] == 0.0 and off["score"] < good["score"]
    assert loop["grade"] == 0.0 and loop["repetition"] > 0.3
    assert cited["grade"] == 0.0 and cited["invented_citations"] == 1
    summary = heldout_summary([good, off, loop])
    assert summary["n"] == 3 and summary["mean_grade"] == pytest.approx(1 / 3, abs=1e-4)
    assert summary["pass_rate"] == pytest.approx(1 / 3, abs=1e-4)
    assert summary["format"]["loops"] == pytest.approx(1 / 3, abs=1e-4)
    assert heldout_summary([]) == {"n": 0}


def test_heldout_prompt_is_the_open_item_prompt() -> None:
    q = heldout_questions(1)[0]
    gen = _Echo("x")
    answer_heldout(Assistant(gen, None), [q], _word_overlap, Grader())
    user = gen.prompts[0][-1]["content"]
    assert user.startswith(q.question) and user.endswith("Answer in two or three sentences.")


def test_evidence_facts_are_its_content_words_once() -> None:
    evidence = "The pass removes unused wires and the unused cells of its design."
    facts = evidence_facts(evidence)
    assert not {"the", "and", "of"} & set(facts) and len(facts) == len(set(facts))
    assert any(f.startswith("unus") for f in facts) and "it" not in facts
    assert fact_coverage(facts, evidence) == 1.0
    assert 0 < fact_coverage(facts, "It removes unused wires.") < 1


# ---------- MCQ accuracy next to the always-longest baseline ----------


def _mcq(item_id: str, answer: str, choices: list[str]) -> Item:
    return Item(item_id, "digital", "foundational", "mcq", "q?", answer, [], {}, choices)


def test_mcq_stats_put_accuracy_next_to_always_longest() -> None:
    items = {"a": _mcq("a", "B", ["x", "the longest one", "yy", "zz"]),
             "b": _mcq("b", "A", ["right", "a much longer wrong one", "no", "nope"])}
    rows = [{"id": "a", "type": "mcq", "score": 0.0}, {"id": "b", "type": "mcq", "score": 1.0},
            {"id": "o", "type": "open", "score": 0.7}]
    stats = mcq_stats(rows, items)
    assert stats["n"] == 2 and stats["accuracy"] == 0.5 and stats["always_longest"] == 0.5
    assert stats["chance"] == 0.25 and stats["scoring"] == "per-token"
    assert mcq_stats([rows[2]], items) == {}


def test_card_shows_types_mcq_baseline_and_heldout_grades() -> None:
    summary = {"overall": {"mean": 0.4, "n": 4}, "by_level": {},
               "by_type": {"open": {"mean": 0.3, "n": 2}, "mcq": {"mean": 0.5, "n": 2}}}
    ev = {"bench": {"rag": {"summary": summary, "format": {},
                            "mcq": {"n": 2, "scoring": "per-token", "split": "test half",
                                    "accuracy": 0.5, "always_longest": 0.75, "chance": 0.25}}},
          "heldout_questions": {"rag": {"n": 12, "mean_grade": 0.125, "pass_rate": 0.25,
                                        "evidence_shown": 0.5}}}
    text = "\n".join(_evaluation_lines(ev))
    assert "mcq 0.500 (n=2)" in text and "0.750 for always picking the longest" in text
    assert "| rag | 0.125 | 0.250 | 0.500 | 12 |" in text
