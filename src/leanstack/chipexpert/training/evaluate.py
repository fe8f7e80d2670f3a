"""Evaluate a model after each stage: perplexity on held-out IC-design and general text,
a ChipICD-Bench subset (per domain and level, with and without retrieval, through the bench
runner), Verilog pass@1 with the bench's executable checker, and the measurable effects of the
answer format (citations in the reply, citations of passages that were shown, loops).

The subset is small on purpose (``[eval]`` in the config sets its size) so every stage can be
evaluated on a CPU; it is the first ``bench_per_domain`` items of each domain, the same for every
model, and none of them is in the training data (the data builder decontaminates against them).
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

HELDOUT = {"ic": "heldout_ic.txt", "general": "heldout_general.txt"}
NO_CODE = "no Verilog module found"
NO_COMPILE = "does not compile"


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


def bench_items(ev: EvalSection) -> tuple[list[Any], list[Any]]:
    """The evaluation subset: (items of ``bench_types`` per domain, Verilog items)."""
    from leanstack.chipexpert.bench.items import load_items

    items = load_items()
    per: dict[str, int] = {}
    chosen = []
    for it in items:
        if it.type in ev.bench_types and it.type != "verilog":
            per[it.domain] = per.get(it.domain, 0) + 1
            if per[it.domain] <= ev.bench_per_domain:
                chosen.append(it)
    verilog = [it for it in items if it.type == "verilog"][:ev.verilog_items]
    return chosen, verilog


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
                   kb_dir: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Evaluate one model (a directory, or None/"smollm2" for the bundled base model)."""
    from leanstack.chipexpert.assistant import Assistant, load_retriever
    from leanstack.chipexpert.bench.runner import BenchRunner, summarize
    from leanstack.chipexpert.generators import LocalGenerator

    t0 = time.perf_counter()
    gen = LocalGenerator(str(source) if source is not None else None)
    model, tok = gen.loaded.model, gen.loaded.tokenizer
    record: dict[str, Any] = {"model": label, "source": str(source or "smollm2"),
                              "perplexity": {}, "bench": {}, "verilog": {},
                              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    for name, file in HELDOUT.items():
        path = data / file
        if path.is_file():
            record["perplexity"][name] = perplexity(model, tok, path.read_text(encoding="utf-8"),
                                                    ev.perplexity_tokens, ev.perplexity_window)
    items, verilog = bench_items(ev)
    retriever = load_retriever(kb_dir) if any(ev.rag) and items else None
    total = len(items) * len(ev.rag) + len(verilog)
    done = 0

    def tick(result: Any) -> None:
        nonlocal done
        done += 1
        if progress:
            print(f"\r  {label}: {done}/{total} {result.id} {result.score:.2f}   ", end="",
                  file=sys.stderr, flush=True)

    for rag in ev.rag:
        if not items:
            break
        runner = BenchRunner(Assistant(gen, retriever if rag else None, ev.k))
        rows = [asdict(r) for r in runner.run(items, on_result=tick)]
        record["bench"]["rag" if rag else "no_rag"] = {
            "summary": summarize(rows), "format": format_stats(rows),
            "items": [{k: r[k] for k in ("id", "domain", "level", "type", "score", "passed",
                                         "detail", "response")} for r in rows]}
    if verilog:
        runner = BenchRunner(Assistant(gen, None, ev.k))
        rows = [asdict(r) for r in runner.run(verilog, on_result=tick)]
        record["verilog"] = {**verilog_stats(rows),
                             "items": [{k: r[k] for k in ("id", "passed", "detail")}
                                       for r in rows]}
    if progress and total:
        print(file=sys.stderr)
    record["wall_s"] = round(time.perf_counter() - t0, 2)
    return record


def evaluate_stages(cfg: Any, out: Path | None = None, stages: list[str] | None = None,
                    kb_dir: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Evaluate the base model and each trained stage (those in ``stages``, default all that
    exist); write ``<run>/eval/<stage>.json`` and the stage's ``evaluation.json`` + card."""
    from leanstack.atomic import write_json
    from leanstack.chipexpert.training.card import EVALUATION_FILE, write_card
    from leanstack.chipexpert.training.config import STAGES
    from leanstack.chipexpert.training.stages import data_dir, model_dir, run_dir

    run = run_dir(cfg, out)
    wanted = stages or ["base", *STAGES]
    bad = sorted(set(wanted) - {"base", *STAGES})
    if bad:
        raise LeanstackError(f"unknown stage(s) {', '.join(bad)}; use base, cpt, sft or dpo")
    results = {}
    for label in wanted:
        folder = model_dir(run, label) if label != "base" else None
        if folder is not None and not (folder / "config.json").is_file():
            if stages:
                raise LeanstackError(f"no {label} model in {folder}; train it first with "
                                     f"'leanstack chip train {label}'")
            continue
        rec = evaluate_model(folder if folder else cfg.model, data_dir(run), cfg.eval, label,
                             kb_dir, progress)
        write_json(run / "eval" / f"{label}.json", rec)
        if folder is not None:
            write_json(folder / EVALUATION_FILE, rec)
            write_card(folder)
        results[label] = rec
    return results
