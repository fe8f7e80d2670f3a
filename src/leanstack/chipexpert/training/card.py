"""The model card (``README.md``) written next to a trained model's weights.

It is rendered from ``training.json`` (what the stage did) and, once ``chip train eval`` has
run, ``evaluation.json`` (how the model scored), so the card always shows the real numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from leanstack.atomic import write_bytes

TRAINING_FILE = "training.json"
EVALUATION_FILE = "evaluation.json"
STAGE_TITLES = {"cpt": "continued pre-training", "sft": "instruction tuning (SFT)",
                "dpo": "preference alignment (DPO)"}


def _rows(pairs: list[tuple[str, Any]]) -> list[str]:
    return ["| key | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in pairs]]


def _decontamination_rows(summary: dict[str, Any]) -> list[tuple[str, Any]]:
    rows = [(f"removed (overlap with {name})", ", ".join(f"{k} {v}" for k, v in splits.items()))
            for name, splits in summary.get("removed", {}).items()]
    return [("decontamination rule", summary["rule"])] + rows if rows else []


def _evaluation_lines(ev: dict[str, Any]) -> list[str]:
    lines = ["## Results", "", f"Evaluated with `{ev.get('command', 'leanstack chip train eval')}`."
             , ""]
    ppl = ev.get("perplexity", {})
    if ppl:
        lines += ["| held-out text | perplexity | tokens |", "|---|---|---|"]
        lines += [f"| {name} | {v['perplexity']:.3f} | {v['tokens']} |" for name, v in ppl.items()]
        lines.append("")
    bench = ev.get("bench", {})
    if bench:
        lines += ["| ChipICD-Bench subset | overall | foundational | advanced | items |",
                  "|---|---|---|---|---|"]
        for name, b in bench.items():
            lv = b["summary"].get("by_level", {})
            lines.append(f"| {name} | {b['summary']['overall']['mean']:.3f} | "
                         f"{lv.get('foundational', {}).get('mean', '-')} | "
                         f"{lv.get('advanced', {}).get('mean', '-')} | "
                         f"{b['summary']['overall']['n']} |")
        lines.append("")
        for name, b in bench.items():
            types = ", ".join(f"{k} {v['mean']:.3f} (n={v['n']})"
                              for k, v in b["summary"].get("by_type", {}).items())
            if types:
                lines.append(f"By type ({name}): {types}.")
            mcq = b.get("mcq") or {}
            if mcq:
                lines.append(f"MCQ ({name}, {mcq['scoring']} scoring, {mcq['split']}): accuracy "
                             f"{mcq['accuracy']:.3f} against {mcq['always_longest']:.3f} for "
                             f"always picking the longest choice and {mcq['chance']:.3f} by "
                             f"chance, n={mcq['n']}.")
        lines.append("")
        for name, b in bench.items():
            fmt = b.get("format") or {}
            if fmt.get("citations"):
                lines.append(f"Open answers ({name}): {fmt['with_citation']:.2f} cite a passage "
                             f"as [n]; {fmt['citation_valid']:.2f} of {fmt['citations']} cited "
                             f"numbers point at a passage that was shown; {fmt['loops']:.2f} "
                             "loop.")
        lines.append("")
    held = {k: v for k, v in ev.get("heldout_questions", {}).items() if v.get("n")}
    if held:
        lines += ["| held-out questions (test half) | mean grade | graded ≥ 0.5 | evidence shown "
                  "| questions |", "|---|---|---|---|---|"]
        lines += [f"| {name} | {h['mean_grade']:.3f} | {h['pass_rate']:.3f} | "
                  f"{h['evidence_shown']:.3f} | {h['n']} |" for name, h in held.items()]
        lines.append("")
    ver = ev.get("verilog")
    if ver:
        lines += [f"Verilog: pass@1 {ver['pass_at_1']:.3f}, syntax-valid "
                  f"{ver['syntax_valid']:.3f} over {ver['n']} items.", ""]
    return lines


def render_card(folder: Path) -> str:
    """The card's Markdown for the model in ``folder``."""
    rec = json.loads((folder / TRAINING_FILE).read_text())
    hp = rec["hyperparameters"]
    title = STAGE_TITLES.get(rec["stage"], rec["stage"])
    data = rec["data"]
    merged = ", LoRA merged into the weights" if rec["method"] == "lora" else ""
    lines = [
        "---", "library_name: transformers", "pipeline_tag: text-generation",
        f"base_model: {rec['base_model']}", "tags: [leanstack, chipexpert, ic-design]", "---",
        "", f"# ChipExpert {rec['config_name']} — after {title}", "",
        f"Trained by `leanstack chip train {rec['stage']}` from `{rec['input_model']}` "
        f"({rec['method']} fine-tuning{merged}).",
        "Load it like any model: `leanstack chip ask --model <this directory>`.", "",
        "## Data", "",
        *_rows([("file", data["file"]), ("records", data["records"]),
                ("sha256", f"`{data['sha256'][:16]}…`"),
                *_decontamination_rows(data.get("decontamination", {}))]),
        "", "## Training", "",
        *_rows([("steps", f"{rec['steps']['first']} → {rec['steps']['last']}"
                 + (f" (resumed from {rec['steps']['resumed_from']})"
                    if rec["steps"]["resumed_from"] else "")),
                ("wall time", f"{rec['wall_s']:.1f} s"), ("tokens", rec["tokens"]),
                ("tokens/s", rec["tokens_per_s"]), ("threads", rec["threads"]),
                ("train loss (mean)", rec["train_loss"]),
                ("loss first → last logged", f"{rec['loss_first']} → {rec['loss_last']}"),
                *[(k, v) for k, v in hp.items() if k != "lora" or rec["method"] == "lora"],
                ("seed", rec["seed"]),
                ("versions", ", ".join(f"{k} {v}" for k, v in rec["versions"].items() if v))]),
        "",
    ]
    ev_file = folder / EVALUATION_FILE
    if ev_file.is_file():
        lines += _evaluation_lines(json.loads(ev_file.read_text()))
    return "\n".join(lines) + "\n"


def write_card(folder: Path) -> Path:
    """(Re)write ``README.md`` in ``folder`` from its training and evaluation records."""
    return write_bytes(folder / "README.md", render_card(folder).encode())
