"""The answers benchmark's bookkeeping without a model: citation parsing, the per-mode summary
(citation validity, pass rate, evidence shown) from graded answer records, and hand grades
merged from a JSONL (good and bad files, and a summary-only rerun)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmarks.chip_answers import (
    answer_record,
    cited_in_text,
    main,
    merge_hand_grades,
    read_hand_grades,
    summarize,
)

from leanstack.chipexpert.assistant import Answer, Citation
from leanstack.chipexpert.chunk_eval import ChunkQuestion
from leanstack.chipexpert.grading import Grader
from leanstack.errors import LeanstackError

EVIDENCE = "The -top option sets the top module of the design."
QUESTION = ChunkQuestion("q1", "How do I choose the top module?", EVIDENCE, "man-yosys",
                         "OPTIONS", ("c1",), "man-yosys", "test")


def _citations(texts: list[str]) -> list[Citation]:
    return [Citation(n, "man-yosys", f"section {n}", text, 1.0 / n)
            for n, text in enumerate(texts, 1)]


def _similarity(answer: str, reference: str) -> float:
    """A stand-in cosine: 1 for the evidence itself, else 0."""
    return 1.0 if EVIDENCE in answer else 0.0


def _record(answer: str, citations: list[Citation], mode: str = "generative",
            invalid: list[int] | None = None, latency: float = 1.0,
            question: ChunkQuestion = QUESTION) -> dict:
    for c in citations:
        c.cited = f"[{c.n}]" in answer
    result = Answer(answer, citations, latency, mode="generative",
                    invalid_citations=invalid or [])
    return answer_record(question, mode, result, Grader(), _similarity)


def test_cited_in_text_reads_lists_and_ranges_but_not_code() -> None:
    assert cited_in_text("Use -top [1]. See also [2, 4] and [5-6].") == {1, 2, 4, 5, 6}
    assert cited_in_text("wire [7:0] bus; assign y = a[3];") == set()


def test_summary_counts_citations_grades_and_evidence() -> None:
    shown = [EVIDENCE, "Another passage."]
    records = [
        _record(f"{EVIDENCE} [1]", _citations(shown), latency=1.0),          # right, valid
        _record("It sets the design. [2]", _citations(shown), latency=3.0,   # removed [7]
                invalid=[7]),
        _record("Use the flag. [1, 5]", _citations(shown), latency=2.0),     # still cites 5
        _record(EVIDENCE, [], mode="no-retrieval", latency=4.0),
    ]
    assert records[0]["grade"] == 1.0 and records[0]["cited"] == [1]
    assert records[2]["cited_not_shown"] == [5]
    assert records[1]["cited_not_shown"] == [] and records[1]["invalid_citations"] == [7]
    assert all(r["hand_grade"] is None for r in records)

    summary = summarize(records)
    gen = summary["generative"]
    assert gen["n"] == 3
    assert gen["citation_validity"] == pytest.approx(2 / 3, abs=1e-4)
    assert gen["cited_not_shown_answers"] == 1
    assert gen["post_check_removed_answers"] == 1
    assert gen["evidence_shown"] == 1.0  # passage [1] holds the evidence span every time
    assert gen["median_latency_s"] == 2.0
    grades = [r["grade"] for r in records[:3]]
    assert gen["mean_grade"] == pytest.approx(sum(grades) / 3, abs=1e-4)
    assert gen["pass_rate"] == pytest.approx(sum(g >= 0.5 for g in grades) / 3, abs=1e-4)
    assert records[2]["grade"] == 0.0  # an answer citing a passage not shown fails
    norag = summary["no-retrieval"]
    assert norag["evidence_shown"] is None and norag["citation_validity"] == 1.0
    assert "extractive" not in summary and gen["mean_hand_grade"] is None


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _two_modes() -> list[dict]:
    other = ChunkQuestion("q2", "What does -top do?", EVIDENCE, "man-yosys", "OPTIONS",
                          ("c1",), "man-yosys", "test")
    return [_record(EVIDENCE, [], mode="no-retrieval"),
            _record("No idea.", [], mode="no-retrieval", question=other),
            _record(f"{EVIDENCE} [1]", _citations([EVIDENCE]), mode="generative")]


def test_hand_grades_merge_into_records_and_summary(tmp_path: Path) -> None:
    records = _two_modes()
    grades = read_hand_grades(_write(tmp_path / "hand.jsonl", [
        {"id": "q1", "mode": "no-retrieval", "hand_grade": 1},
        {"id": "q2", "mode": "no-retrieval", "hand_grade": 0.5}]), records)
    merge_hand_grades(records, grades)
    summary = summarize(records)
    assert summary["no-retrieval"]["hand_graded"] == 2
    assert summary["no-retrieval"]["mean_hand_grade"] == 0.75
    assert summary["generative"]["hand_graded"] == 0
    assert summary["generative"]["mean_hand_grade"] is None


@pytest.mark.parametrize(("row", "problem"), [
    ({"id": "q1", "mode": "rag", "hand_grade": 1}, "unknown mode"),
    ({"id": "q1", "mode": "generative", "hand_grade": 0.7}, "not 0, 0.5 or 1"),
    ({"id": "q1", "mode": "generative", "hand_grade": "1"}, "not 0, 0.5 or 1"),
    ({"id": "q9", "mode": "generative", "hand_grade": 1}, "no generative answer"),
    ({"id": "q1", "mode": "generative"}, "needs id, mode and hand_grade"),
])
def test_bad_hand_grades_are_one_line_errors(tmp_path: Path, row: dict, problem: str) -> None:
    path = _write(tmp_path / "hand.jsonl", [row])
    with pytest.raises(LeanstackError, match=problem) as e:
        read_hand_grades(path, _two_modes())
    assert "\n" not in str(e.value) and "record 1" in str(e.value)


def test_a_second_grade_for_one_answer_is_refused(tmp_path: Path) -> None:
    row = {"id": "q1", "mode": "generative", "hand_grade": 1}
    with pytest.raises(LeanstackError, match="second grade"):
        read_hand_grades(_write(tmp_path / "hand.jsonl", [row, row]), _two_modes())


def test_reuse_recomputes_the_summary_with_hand_grades(tmp_path: Path, capsys) -> None:
    out = tmp_path / "answers.json"
    out.write_text(json.dumps({"records": _two_modes(), "settings": {"questions": ["q1", "q2"]},
                               "summary": {}}))
    hand = _write(tmp_path / "hand.jsonl",
                  [{"id": "q1", "mode": "generative", "hand_grade": 0.5}])
    assert main(["--reuse", "--out", str(out), "--hand-grades", str(hand)]) == 0
    result = json.loads(out.read_text())
    assert result["summary"]["generative"]["mean_hand_grade"] == 0.5
    assert result["records"][2]["hand_grade"] == 0.5
    assert "| generative | 1 |" in capsys.readouterr().out

    bad = _write(tmp_path / "bad.jsonl", [{"id": "q1", "mode": "generative", "hand_grade": 2}])
    assert main(["--reuse", "--out", str(out), "--hand-grades", str(bad)]) == 2
    assert json.loads(out.read_text())["records"][2]["hand_grade"] == 0.5  # left as it was
    assert main(["--reuse", "--out", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "python benchmarks/chip_answers.py" in err
