"""ChipExpert training data: build the CPT, SFT and DPO sets from scratch and measure them.

Builds into a fresh temporary directory (so every Verilog testbench really runs; no cache),
then counts SmolLM2-135M tokens per set (the chat template applied to SFT and DPO records) and
copies the decontamination report's totals.

Run: ``.venv/bin/python benchmarks/chip_training_data.py [--seed N]``; writes
``benchmarks/results/chip_training_data.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from leanstack.atomic import write_json
from leanstack.chipexpert.training.datasets import build_training_data
from leanstack.provenance import benchmark_record

RESULTS = Path(__file__).parent / "results" / "chip_training_data.json"


def _tokens(out: Path) -> dict[str, int]:
    from transformers import AutoTokenizer

    from leanstack.llm.loading import resolve_model_dir

    tok = AutoTokenizer.from_pretrained(resolve_model_dir(None))

    def n(text: str) -> int:
        return len(tok(text)["input_ids"])

    def chat(messages: list[dict]) -> int:
        return n(tok.apply_chat_template(messages, tokenize=False))

    def rows(name: str) -> list[dict]:
        return [json.loads(ln) for ln in (out / name).read_text().splitlines()]

    sft = [chat(r["messages"]) for r in rows("sft.jsonl")]
    dpo = rows("dpo.jsonl")
    return {"cpt": sum(n(r["text"]) for r in rows("cpt.jsonl")),
            "sft": sum(sft), "sft_max": max(sft),
            "dpo_prompt_chosen": sum(chat(r["prompt"] + r["chosen"]) for r in dpo),
            "dpo_prompt_rejected": sum(chat(r["prompt"] + r["rejected"]) for r in dpo),
            "heldout_ic": n((out / "heldout_ic.txt").read_text()),
            "heldout_general": n((out / "heldout_general.txt").read_text())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="chip-training-data-") as tmp:
        out = Path(tmp)
        t0 = time.perf_counter()
        data = build_training_data(out, seed=args.seed)
        wall = time.perf_counter() - t0
        tokens = _tokens(out)
        manifest = json.loads(data.manifest.read_text())
        decon = json.loads(data.decontamination.read_text())
    removed = {name: {split: len(v["removed"]) for split, v in s["splits"].items()}
               for name, s in decon["sets"].items()}
    result = {
        "what": "building the ChipExpert training data from scratch (no simulation cache)",
        "seed": args.seed, "build_wall_s": round(wall, 1), "counts": data.counts,
        "sft_kinds": data.sft_kinds, "dpo_failures": data.dpo_failures,
        "smollm2_tokens": tokens, "verilog": manifest["verilog"],
        "decontamination_removed": removed, "dedup": decon["dedup"],
        **benchmark_record(("leanstack", "transformers", "datasketch"),
                           iverilog=manifest["versions"].get("iverilog")),
    }
    write_json(RESULTS, result)
    print(json.dumps({k: result[k] for k in ("build_wall_s", "counts", "smollm2_tokens")}))


if __name__ == "__main__":
    main()
