"""ChipICD-Bench: SmolLM2-135M-Instruct without and with retrieval over all items.

Asks every shipped item (src/leanstack/chipexpert/bench/items/) twice — without retrieval and
with the top 3 fused passages of the knowledge base — through the ChipExpert assistant, scores
the answers (MCQ by PMI-calibrated log-likelihood, or per character with ``--mcq-scoring
per-char``; numeric by tolerance, Verilog by iverilog + yosys, SPICE by ngspice .meas, open
answers by the similarity/key-fact proxy) and reports mean scores per domain and level. Items
run cheapest first (mcq, open, numeric, verilog, spice), each type round-robin over the
domains, so a run cut short by ``--max-minutes`` still covers every domain; results are saved
after every item and ``--resume`` continues a cut run.
``--resume --redo-types mcq`` drops the saved items of those types and runs them again (after
changing how they are scored) while keeping the rest.

Run: ``.venv/bin/python benchmarks/chip_bench.py [--quick] [--configs norag,rag]
[--max-minutes M] [--resume [--redo-types T,...]] [--mcq-scoring pmi|per-char]``. Each
configuration writes ``benchmarks/results/chip_bench_<config>.json``; once both exist this
script (or ``--combine``) writes ``benchmarks/results/chip_bench.json`` and ``chip_bench.png``
and prints the Markdown table. Two processes with ``--configs norag`` and ``--configs rag``
can run side by side. Needs the knowledge base (``leanstack chip corpus build``) for the rag
configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from leanstack.chipexpert.bench.items import DOMAINS, Item, load_items
from leanstack.chipexpert.bench.report import markdown_table, save_chart, type_table
from leanstack.chipexpert.bench.runner import MCQ_SCORING, BenchRunner, ItemResult, bench_record
from leanstack.chipexpert.store import write_json
from leanstack.provenance import command_line

RESULTS = Path(__file__).parent / "results"
CONFIGS = ("norag", "rag")
TYPE_ORDER = ("mcq", "open", "numeric", "verilog", "spice")


def ordered(items: list[Item]) -> list[Item]:
    """Cheapest types first; within a type, round-robin over the domains."""
    out = []
    for kind in TYPE_ORDER:
        per: dict[str, list[Item]] = defaultdict(list)
        for it in items:
            if it.type == kind:
                per[it.domain].append(it)
        while any(per.values()):
            for d in DOMAINS:
                if per[d]:
                    out.append(per[d].pop(0))
    return out


def first_per_domain(items: list[Item], n: int) -> list[Item]:
    """The first ``n`` items of each domain, order kept."""
    seen: dict[str, int] = defaultdict(int)
    kept = []
    for it in items:
        seen[it.domain] += 1
        if seen[it.domain] <= n:
            kept.append(it)
    return kept


def partial_path(config: str, quick: bool = False) -> Path:
    return RESULTS / f"chip_bench{'_quick' if quick else ''}_{config}.json"


def run_config(config: str, items: list[Item], args: argparse.Namespace,
               generator: Any) -> dict:
    """Run (or resume) one configuration, saving after every item."""
    from rich.progress import Progress

    from leanstack.chipexpert.assistant import Assistant, load_retriever

    assistant = Assistant(generator, load_retriever() if config == "rag" else None, k=3)
    runner = BenchRunner(assistant, mcq_scoring=args.mcq_scoring)
    redo = {t.strip() for t in args.redo_types.split(",") if t.strip()}
    done: list[ItemResult] = []
    if args.resume and partial_path(config, args.quick).exists():
        old = json.loads(partial_path(config, args.quick).read_text())
        done = [ItemResult(**r) for r in old["items"] if r["type"] not in redo]
    have = {r.id for r in done}
    todo = [it for it in items if it.id not in have]
    t_end = time.monotonic() + args.max_minutes * 60 if args.max_minutes else None
    settings = {"k": 3 if config == "rag" else 0, "items_total": len(items),
                "order": "mcq, open, numeric, verilog, spice; round-robin over domains"}
    with Progress(transient=True) as bar:
        task = bar.add_task(f"{config}", total=len(items), completed=len(done))
        for it in todo:
            if t_end and time.monotonic() > t_end:
                break
            done.append(runner.run_item(it))
            bar.update(task, advance=1, description=f"{config} {it.id}")
            record = bench_record(done, generator.name, config == "rag",
                                  {**settings, "complete": len(done) == len(items),
                                   "mcq_by_loglik": runner.loglik,
                                   "mcq_scoring": args.mcq_scoring})
            write_json(partial_path(config, args.quick), record)
    print(f"{config}: {len(done)}/{len(items)} items, "
          f"{sum(r.seconds for r in done) / 60:.1f} min of model time", flush=True)
    return json.loads(partial_path(config, args.quick).read_text())


def paired(norag: list[dict], rag: list[dict]) -> dict[str, dict[str, int]]:
    """Per domain (and overall): on how many items retrieval scored higher, lower, the same."""
    other = {r["id"]: r["score"] for r in norag}
    out: dict[str, dict[str, int]] = {}
    for r in rag:
        for key in (r["domain"], "overall"):
            cell = out.setdefault(key, {"rag_better": 0, "norag_better": 0, "same": 0})
            diff = r["score"] - other[r["id"]]
            cell["rag_better" if diff > 0 else "norag_better" if diff < 0 else "same"] += 1
    return out


def combine(quick: bool) -> None:
    """Merge the per-configuration files into chip_bench.json + chip_bench.png (on the items
    both have run) and print the tables."""
    records = []
    for config in CONFIGS:
        path = partial_path(config, quick)
        if not path.exists():
            print(f"{path.name} missing; run --configs {config} first")
            return
        records.append(json.loads(path.read_text()))
    common = set.intersection(*({r["id"] for r in rec["items"]} for rec in records))
    from leanstack.chipexpert.bench.runner import summarize

    for rec in records:
        rec["items"] = [r for r in rec["items"] if r["id"] in common]
        rec["summary"] = summarize(rec["items"])
    total = records[0]["settings"].get("items_total", len(common))
    result = {"benchmark": "chip_bench", "quick": quick, "items_compared": len(common),
              "items_total": total, "paired": paired(records[0]["items"], records[1]["items"]),
              "runs": records,
              "command": command_line()}
    stem = "chip_bench_quick" if quick else "chip_bench"
    write_json(RESULTS / f"{stem}.json", result)
    save_chart(records, RESULTS / f"{stem}.png")
    print(f"{len(common)} of {total} items compared ({records[0]['model']}), "
          f"{records[0]['environment']['cpu_count']} CPUs\n")
    print(markdown_table(records))
    print()
    print(type_table(records))
    print("\n| domain | items where RAG scored higher | lower | same |\n|---|---|---|---|")
    for key in [k for k in (*DOMAINS, "overall") if k in result["paired"]]:
        cell = result["paired"][key]
        print(f"| {DOMAINS.get(key, key)} | {cell['rag_better']} | {cell['norag_better']} | "
              f"{cell['same']} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="two items per domain")
    p.add_argument("--configs", default="norag,rag", help="norag, rag or both (comma-separated)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop each configuration "
                   "after this long (results so far are kept)")
    p.add_argument("--resume", action="store_true", help="continue from the saved results")
    p.add_argument("--redo-types", default="", help="with --resume: run the saved items of "
                   "these types again (comma-separated)")
    p.add_argument("--mcq-scoring", default="per-token", choices=MCQ_SCORING,
                   help="how an MCQ choice is picked from log-likelihoods")
    p.add_argument("--combine", action="store_true", help="only merge the saved results")
    p.add_argument("--model", default=None, help="local model (default: bundled SmolLM2)")
    args = p.parse_args()
    if not args.combine:
        import torch

        from leanstack.chipexpert.generators import make_generator

        torch.set_num_threads(1)
        items = ordered(load_items())
        if args.quick:
            items = first_per_domain(items, 2)
        generator = make_generator(args.model)
        for config in [c.strip() for c in args.configs.split(",") if c.strip()]:
            if config not in CONFIGS:
                sys.exit(f"unknown config {config!r}; use norag and/or rag")
            run_config(config, items, args, generator)
    combine(args.quick)


if __name__ == "__main__":
    main()
