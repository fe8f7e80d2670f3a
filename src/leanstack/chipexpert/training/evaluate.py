"""Evaluate a model after each stage: perplexity on held-out IC-design and general text,
a ChipICD-Bench subset (per domain, level and type, with and without retrieval, through the
bench runner), held-out chunk-level questions (with and without retrieval, graded by the
calibrated grader), Verilog pass@1 with the bench's executable checker, and the measurable
effects of the answer format (citations in the reply, citations of passages that were shown,
loops).

Everything is small on purpose (``[eval]`` in the config sets the sizes) so every stage can be
evaluated on a CPU, and the same for every model:

* the bench subset takes, per domain and per type of ``bench_types``, the first items by id
  (``bench_per_domain`` of each type, ``mcq_per_domain`` MCQs when set); MCQs come only from
  the test half of their split, because their scoring rule (``per-token``) was chosen on the tuning
  half, and their accuracy is reported next to the always-longest baseline on the same items;
* the held-out questions are ``heldout_questions`` of the test half of the chunk-level question
  set (``data/chunk_questions.jsonl``), spread evenly in id order; never the tuning half, on
  which retrieval was tuned. Each answer is graded by the grader calibrated on the hand grades,
  with the question's evidence span as the reference and its content words as the key facts.

None of these questions is in the training data (the data builder decontaminates against every
bench item and both halves of the chunk-level questions).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from leanstack.chipexpert.training.config import EvalSection
from leanstack.errors import LeanstackError
from leanstack.provenance import command_line

HELDOUT = {"ic": "heldout_ic.txt", "general": "heldout_general.txt"}
NO_CODE = "no Verilog module found"
NO_COMPILE = "does not compile"
# The MCQ rule benchmarks/chip_mcq_baselines.py chose on the tuning half of the MCQs.
MCQ_SCORING = "per-token"


def perplexity(model: Any, tokenizer: Any, text: str, max_tokens: int, window: int
               ) -> dict[str, float]:
    """Perplexity of ``text`` (its first ``max_tokens`` tokens) in non-overlapping windows."""
    import torch

    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    if len(ids) < 2:
        raise LeanstackError("held-out text has fewer than 2 tokens; rebuild the data")
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, window):
            chunk = torch.tensor([ids[start:start + window + 1]])
            if chunk.shape[1] < 2:
                break
            out = model(input_ids=chunk, labels=chunk)  # the model shifts labels itself
            n = chunk.shape[1] - 1
            nll += float(out.loss) * n
            count += n
    return {"perplexity": round(math.exp(nll / count), 4), "tokens": count}


def bench_items(ev: EvalSection, items: list[Any] | None = None
                ) -> tuple[list[Any], list[Any]]:
    """The evaluation subset of ``items`` (default: the shipped bench): per domain and per type
    of ``bench_types``, the first items by id (MCQs from the test half only); and the first
    ``verilog_items`` Verilog items."""
    from leanstack.chipexpert.bench.items import DOMAINS, load_items
    from leanstack.chipexpert.bench.mcq import split_half

    items = load_items() if items is None else items
    by_id = sorted(items, key=lambda it: it.id)
    chosen = []
    for domain in DOMAINS:
        for kind in ev.bench_types:
            limit = ev.bench_per_domain
            if kind == "mcq" and ev.mcq_per_domain is not None:
                limit = ev.mcq_per_domain
            pool = [it for it in by_id if it.domain == domain and it.type == kind
                    and (kind != "mcq" or split_half(it.id) == "test")]
            chosen += pool[:limit]
    verilog = [it for it in items if it.type == "verilog"][:ev.verilog_items]
    return chosen, verilog


def heldout_questions(n: int, path: Path | None = None) -> list[Any]:
    """``n`` questions of the test half of the chunk-level question set (default: the shipped
    one), spread evenly over it in id order, so every source document kind is asked."""
    from leanstack.chipexpert.chunk_eval import load_questions

    pool = sorted(load_questions(path, split="test"), key=lambda q: q.id)
    if n > len(pool):
        raise LeanstackError(f"eval.heldout_questions is {n} but the test half of the held-out "
                             f"questions has {len(pool)}; use at most {len(pool)}")
    return [pool[i * len(pool) // n] for i in range(n)]


def evidence_facts(evidence: str) -> list[str]:
    """The key facts a held-out answer is checked for: the evidence span's content words
    (stemmed, stop words out, each once; a fact is covered when the answer has the word), those
    the evidence itself covers (a short stem such as "it" of "its" would not match it)."""
    from leanstack.chipexpert.bench.checkers import fact_coverage
    from leanstack.chipexpert.bm25 import tokenize

    return [f for f in dict.fromkeys(tokenize(evidence)) if fact_coverage([f], evidence) == 1.0]


def answer_heldout(assistant: Any, questions: list[Any], similarity: Any, grader: Any,
                   on_result: Any = None) -> list[dict[str, Any]]:
    """Ask each held-out question as the bench asks an open item (the assistant's prompt, with
    its passages when it has a retriever, plus the open-answer instruction), and grade the raw
    reply: 0 / 0.5 / 1 and the continuous score, with the signals behind them."""
    from leanstack.chipexpert.bench.runner import INSTRUCTIONS, MAX_NEW_TOKENS
    from leanstack.chipexpert.chunk_eval import normalise
    from leanstack.chipexpert.grading import signals

    rows = []
    for q in questions:
        messages, citations = assistant.context_messages(q.question)
        last = messages[-1]
        messages = [*messages[:-1], {**last, "content": f"{last['content']}\n"
                                                         f"{INSTRUCTIONS['open']}"}]
        response = assistant.generator.generate(messages, MAX_NEW_TOKENS["open"])
        sig = signals(response, q.evidence, evidence_facts(q.evidence), len(citations),
                      similarity)
        rows.append({"id": q.id, "source": q.source, "type": "open",
                     "grade": grader.grade(sig), "score": round(grader.score(sig), 4),
                     "coverage": round(sig.coverage, 4), "similarity": round(sig.similarity, 4),
                     "repetition": round(sig.repetition, 4),
                     "invented_citations": sig.invented_citations,
                     "evidence_shown": any(normalise(q.evidence) in normalise(c.text)
                                           for c in citations),
                     "response": response,
                     "passages": [f"{c.source} — {c.section}" for c in citations]})
        if on_result:
            on_result(q.id, rows[-1]["grade"])
    return rows


def heldout_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean grade, share graded 0.5 or better, mean continuous score, share of prompts whose
    passages held the evidence span, and the answer format."""
    if not rows:
        return {"n": 0}
    n = len(rows)
    return {"n": n, "mean_grade": round(sum(r["grade"] for r in rows) / n, 4),
            "pass_rate": round(sum(r["grade"] >= 0.5 for r in rows) / n, 4),
            "mean_score": round(sum(r["score"] for r in rows) / n, 4),
            "evidence_shown": round(sum(r["evidence_shown"] for r in rows) / n, 4),
            "format": format_stats(rows)}


def mcq_stats(rows: list[dict[str, Any]], items: dict[str, Any]) -> dict[str, Any]:
    """MCQ accuracy (``MCQ_SCORING``) next to the always-longest baseline and chance on the
    same items, so a reader sees whether the accuracy means anything."""
    from leanstack.chipexpert.bench.items import LETTERS
    from leanstack.chipexpert.bench.mcq import ChoiceScores, pick

    mcq = [r for r in rows if r["type"] == "mcq"]
    if not mcq:
        return {}

    def longest(item: Any) -> str:
        zeros = [0.0] * len(item.choices)
        return LETTERS[pick("longest", ChoiceScores(item.choices, zeros, zeros,
                                                    [1] * len(item.choices)))]

    n = len(mcq)
    return {"n": n, "scoring": MCQ_SCORING, "split": "test half",
            "accuracy": round(sum(r["score"] for r in mcq) / n, 4),
            "always_longest": round(sum(longest(items[r["id"]]) == items[r["id"]].answer
                                        for r in mcq) / n, 4),
            "chance": round(sum(1 / len(items[r["id"]].choices) for r in mcq) / n, 4)}


def format_stats(results: list[dict[str, Any]]) -> dict[str, float]:
    """How the open answers look: share with a [n] citation, share of cited numbers that point
    at a shown passage, share that fell into a loop."""
    from leanstack.chipexpert.grounding import cited_numbers, loop_start

    opens = [r for r in results if r["type"] == "open"]
    if not opens:
        return {}
    cited = [r for r in opens if cited_numbers(r["response"])]
    numbers = [(n, len(r["passages"])) for r in opens for n in cited_numbers(r["response"])]
    valid = [n for n, shown in numbers if 1 <= n <= shown]
    return {"open_answers": len(opens),
            "with_citation": round(len(cited) / len(opens), 4),
            "citations": len(numbers),
            "citation_valid": round(len(valid) / len(numbers), 4) if numbers else None,
            "loops": round(sum(loop_start(r["response"]) is not None for r in opens)
                           / len(opens), 4)}


def verilog_stats(results: list[dict[str, Any]]) -> dict[str, Any]:
    """pass@1 (greedy, the checker's simulation + synthesis) and syntax validity (a module was
    found and it compiles with its testbench)."""
    if not results:
        return {}
    n = len(results)
    syntax = [r for r in results if not r["detail"].startswith((NO_CODE, NO_COMPILE))]
    return {"n": n, "pass_at_1": round(sum(r["passed"] for r in results) / n, 4),
            "syntax_valid": round(len(syntax) / n, 4),
            "module_found": round(sum(not r["detail"].startswith(NO_CODE) for r in results) / n,
                                  4)}


def evaluate_model(source: str | Path | None, data: Path, ev: EvalSection, label: str,
                   kb_dir: Path | None = None, progress: bool = True,
                   scorer: Any = None, grader: Any = None) -> dict[str, Any]:
    """Evaluate one model (a directory, or None/"smollm2" for the bundled base model);
    ``scorer`` (an ``OpenScorer``) and ``grader`` (calibrated) are shared between models when
    given."""
    from leanstack.chipexpert.assistant import Assistant, load_retriever
    from leanstack.chipexpert.bench.checkers import OpenScorer
    from leanstack.chipexpert.bench.runner import BenchRunner, summarize
    from leanstack.chipexpert.generators import LocalGenerator
    from leanstack.chipexpert.grading import calibrated_grader

    t0 = time.perf_counter()
    gen = LocalGenerator(str(source) if source is not None else None)
    model, tok = gen.loaded.model, gen.loaded.tokenizer
    record: dict[str, Any] = {"model": label, "source": str(source or "smollm2"),
                              "perplexity": {}, "bench": {}, "heldout_questions": {},
                              "verilog": {},
                              "command": command_line()}
    for name, file in HELDOUT.items():
        path = data / file
        if path.is_file():
            record["perplexity"][name] = perplexity(model, tok, path.read_text(encoding="utf-8"),
                                                    ev.perplexity_tokens, ev.perplexity_window)
    items, verilog = bench_items(ev)
    questions = heldout_questions(ev.heldout_questions)
    by_id = {it.id: it for it in items}
    scorer = scorer or OpenScorer()
    if questions and grader is None:
        grader = calibrated_grader(scorer.similarity)
    retriever = load_retriever(kb_dir) if any(ev.rag) and (items or questions) else None
    total = (len(items) + len(questions)) * len(ev.rag) + len(verilog)
    done = 0

    def tick(item_id: str, score: float) -> None:
        nonlocal done
        done += 1
        if progress:
            print(f"\r  {label}: {done}/{total} {item_id} {score:.2f}   ", end="",
                  file=sys.stderr, flush=True)

    for rag in ev.rag:
        mode = "rag" if rag else "no_rag"
        assistant = Assistant(gen, retriever if rag else None, ev.k)
        if items:
            runner = BenchRunner(assistant, scorer, mcq_scoring=MCQ_SCORING)
            rows = [asdict(r) for r in runner.run(items, on_result=lambda r: tick(r.id, r.score))]
            record["bench"][mode] = {
                "summary": summarize(rows), "format": format_stats(rows),
                "mcq": mcq_stats(rows, by_id),
                "items": [{k: r[k] for k in ("id", "domain", "level", "type", "score", "passed",
                                             "detail", "response")} for r in rows]}
        if questions:
            rows = answer_heldout(assistant, questions, scorer.similarity, grader, tick)
            record["heldout_questions"][mode] = {**heldout_summary(rows),
                                                 "grader": grader.to_json(), "items": rows}
    if verilog:
        runner = BenchRunner(Assistant(gen, None, ev.k), scorer)
        rows = [asdict(r) for r in runner.run(verilog, on_result=lambda r: tick(r.id, r.score))]
        record["verilog"] = {**verilog_stats(rows),
                             "items": [{k: r[k] for k in ("id", "passed", "detail")}
                                       for r in rows]}
    if progress and total:
        print(file=sys.stderr)
    record["subset"] = {"bench": [it.id for it in items], "verilog": [it.id for it in verilog],
                        "heldout_questions": [q.id for q in questions]}
    record["wall_s"] = round(time.perf_counter() - t0, 2)
    return record


def evaluate_stages(cfg: Any, out: Path | None = None, stages: list[str] | None = None,
                    kb_dir: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Evaluate the base model and each trained stage (those in ``stages``, default all that
    exist); write ``<run>/eval/<stage>.json`` and the stage's ``evaluation.json`` + card."""
    from leanstack.atomic import write_json
    from leanstack.chipexpert.bench.checkers import OpenScorer
    from leanstack.chipexpert.grading import calibrated_grader
    from leanstack.chipexpert.training.card import EVALUATION_FILE, write_card
    from leanstack.chipexpert.training.config import STAGES
    from leanstack.chipexpert.training.stages import data_dir, model_dir, run_dir

    run = run_dir(cfg, out)
    wanted = stages or ["base", *STAGES]
    bad = sorted(set(wanted) - {"base", *STAGES})
    if bad:
        raise LeanstackError(f"unknown stage(s) {', '.join(bad)}; use base, cpt, sft or dpo")
    heldout_questions(cfg.eval.heldout_questions)  # a bad size fails before any model loads
    scorer = OpenScorer()
    grader = calibrated_grader(scorer.similarity) if cfg.eval.heldout_questions else None
    results = {}
    for label in wanted:
        folder = model_dir(run, label) if label != "base" else None
        if folder is not None and not (folder / "config.json").is_file():
            if stages:
                raise LeanstackError(f"no {label} model in {folder}; train it first with "
                                     f"'leanstack chip train {label}'")
            continue
        rec = evaluate_model(folder if folder else cfg.model, data_dir(run), cfg.eval, label,
                             kb_dir, progress, scorer, grader)
        write_json(run / "eval" / f"{label}.json", rec)
        if folder is not None:
            write_json(folder / EVALUATION_FILE, rec)
            write_card(folder)
        results[label] = rec
    return results
