"""``leanstack demo`` section for ChipICD-Bench: the items, their executable checkers, and a few
EDA (documentation-grounded) MCQs asked to SmolLM2 without and with retrieval."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from leanstack.chipexpert.bench.checkers import check_many, tools_missing
from leanstack.chipexpert.bench.items import DOMAINS, load_items
from leanstack.chipexpert.store import write_json

DEMO_MCQS = 3  # a RAG prompt is ~500 tokens, scored once per choice: seconds each on 2 cores


def run_demo(out_dir: Path) -> None:
    """Print item counts, check every Verilog/SPICE reference, then ask a few EDA MCQs."""
    from rich.progress import Progress

    items = load_items()
    kinds = Counter(it.type for it in items)
    print(f"ChipICD-Bench: {len(items)} items in {len(DOMAINS)} domains — "
          + ", ".join(f"{n} {k}" for k, n in kinds.most_common()))
    executable = [it for it in items if it.executable]
    if tools_missing():
        print(f"  (skipping the checker run: {', '.join(tools_missing())} not installed)")
    else:
        t0 = time.perf_counter()
        checks = check_many([(it, it.answer) for it in executable])
        passed = sum(c.passed for c in checks)
        print(f"  reference answers through their checkers (iverilog+vvp+yosys, ngspice): "
              f"{passed}/{len(executable)} pass in {time.perf_counter() - t0:.1f} s")
        counter = next(it for it in executable if it.checker.get("top") == "counter4")
        wrong = counter.answer.replace("q + 4'd1", "q + 4'd2")
        print(f"  a subtly wrong counter4 (adds 2 instead of 1): "
              f"{check_many([(counter, wrong)])[0].detail}")

    from leanstack.chipexpert.assistant import Assistant, load_retriever
    from leanstack.chipexpert.bench.runner import BenchRunner, bench_record
    from leanstack.chipexpert.generators import make_generator
    from leanstack.errors import LeanstackError

    mcqs = [it for it in items if it.domain == "eda" and it.type == "mcq"][:DEMO_MCQS]
    generator = make_generator()
    configs = [("no RAG", None)]
    try:
        configs.append(("RAG", load_retriever()))
    except LeanstackError as e:
        print(f"  (retrieval skipped: {e})")
    records = {}
    with Progress(transient=True) as bar:
        for name, retriever in configs:
            runner = BenchRunner(Assistant(generator, retriever, k=3))
            task = bar.add_task(f"SmolLM2, {name}", total=len(mcqs))
            results = runner.run(mcqs, on_result=lambda _r, t=task: bar.update(t, advance=1))
            records[name] = bench_record(results, generator.name, retriever is not None,
                                         {"demo": f"first {DEMO_MCQS} EDA mcq items"})
    print(f"  {generator.name}, {len(mcqs)} EDA MCQs, choice picked by log-likelihood:")
    for name, rec in records.items():
        right = [r["id"] for r in rec["items"] if r["passed"]]
        print(f"    {name:7} {len(right)}/{len(mcqs)} right ({', '.join(right) or 'none'})")
    path = out_dir / "chip_bench_demo.json"
    write_json(path, {"runs": list(records.values())})
    print(f"  results: {path}; full run: leanstack chip bench [--rag] --out FILE.json")
