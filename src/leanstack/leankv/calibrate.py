"""Per-model calibration: walk a ladder of configurations from the most to the least
compressed on the corpus's *calibration* half and keep the first that meets the targets.

The ladder runs from K4V2 with half of each head's mass pruned (prompt tokens the last prompt
queries attend to pinned, SnapKV-style, and a floor of kept tokens per head) and progressive
eviction at K4V4, through mass-based pruning with K4V4/K4V2 tiers (with and without pinning),
then no pruning with more and more of each head's mass at K8V4, to everything at K8V4 with a
K8V8 and then an fp16 window of 128 tokens. A rung passes when its mean perplexity increase and
KL over the calibration documents are within the targets and, when retrieval is measured, it
answers at least ``min_retrieval`` times as many retrieval questions as the dense cache did.
A rung stops being evaluated as soon as the documents done so far miss the targets however well
the remaining ones do (see :func:`hopeless`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from leanstack.leankv.config import LeanKVConfig
from leanstack.leankv.suite import DenseMemo, DocumentResult, SuiteSettings, evaluate_split

# shared by every rung: K8V8 sinks and window, 8-token re-tiers, 1 KiB pages
_BASE: dict[str, Any] = {"full_bits": 8, "retier_every": 8, "page_bytes": 1024}
# SnapKV-style protection: the top 10% of each head's tokens by the attention of a chunk's last
# 32 queries stay at the high tier, never pruned
_SNAP: dict[str, Any] = {"snap_window": 32, "snap_keep": 0.1}
LADDER: tuple[tuple[str, dict[str, Any]], ...] = (
    ("K4V2, 50% of the mass pruned, observed 10% pinned, floor 16",
     {"hi_bits": (4, 2), "lo_bits": (4, 2), "hi_mass": 0.5, "keep_mass": 0.5,
      "recent_window": 16, "min_kept": 16, **_SNAP}),
    ("K4V4, survivors' last 1% re-pruned, decay 0.985",
     {"hi_bits": (4, 4), "lo_bits": (4, 4), "hi_mass": 0.99, "keep_mass": 0.99,
      "recent_window": 16, "score_decay": 0.985, "reprune": True}),
    ("K4V2, 20% of the mass pruned, observed 10% pinned, floor 32",
     {"hi_bits": (4, 2), "lo_bits": (4, 2), "hi_mass": 0.8, "keep_mass": 0.8,
      "recent_window": 16, "min_kept": 32, **_SNAP}),
    ("K4V4/K4V2, 10% of the mass pruned, observed 10% pinned, floor 32",
     {"hi_bits": (4, 4), "lo_bits": (4, 2), "hi_mass": 0.5, "keep_mass": 0.9,
      "recent_window": 16, "min_kept": 32, **_SNAP}),
    ("K4V4/K4V2, 10% of the mass pruned",
     {"hi_bits": (4, 4), "lo_bits": (4, 2), "hi_mass": 0.5, "keep_mass": 0.9,
      "recent_window": 16}),
    ("K4V4/K4V2, 3% of the mass pruned, observed 10% pinned, floor 64",
     {"hi_bits": (4, 4), "lo_bits": (4, 2), "hi_mass": 0.5, "keep_mass": 0.97,
      "recent_window": 16, "min_kept": 64, **_SNAP}),
    ("K4V4/K4V2, 3% of the mass pruned",
     {"hi_bits": (4, 4), "lo_bits": (4, 2), "hi_mass": 0.5, "keep_mass": 0.97,
      "recent_window": 16}),
    ("K4V4/K4V2, no pruning",
     {"hi_bits": (4, 4), "lo_bits": (4, 2), "hi_mass": 0.5, "keep_mass": 1.0,
      "recent_window": 16}),
    ("K4V4, no pruning",
     {"hi_bits": (4, 4), "lo_bits": (4, 4), "hi_mass": 1.0, "keep_mass": 1.0,
      "recent_window": 24}),
    ("K8V4 for 50% of the mass, K4V4, 5% pruned, observed 10% pinned, floor 64",
     {"hi_bits": (8, 4), "lo_bits": (4, 4), "hi_mass": 0.5, "keep_mass": 0.95,
      "recent_window": 24, "min_kept": 64, **_SNAP}),
    ("K8V4 for 50% of the mass, K4V4, 1.5% pruned",
     {"hi_bits": (8, 4), "lo_bits": (4, 4), "hi_mass": 0.5, "keep_mass": 0.985,
      "recent_window": 24}),
    ("K8V4 for 30% of the mass, K4V4, no pruning",
     {"hi_bits": (8, 4), "lo_bits": (4, 4), "hi_mass": 0.3, "keep_mass": 1.0,
      "recent_window": 24}),
    ("K8V4 for 50% of the mass, K4V4, no pruning",
     {"hi_bits": (8, 4), "lo_bits": (4, 4), "hi_mass": 0.5, "keep_mass": 1.0,
      "recent_window": 24}),
    ("K8V4, no pruning",
     {"hi_bits": (8, 4), "lo_bits": (8, 4), "hi_mass": 1.0, "keep_mass": 1.0,
      "recent_window": 24}),
    ("K8V4, K8V8 window of 128",
     {"hi_bits": (8, 4), "lo_bits": (8, 4), "hi_mass": 1.0, "keep_mass": 1.0,
      "recent_window": 128}),
    ("K8V4, fp16 window of 128",
     {"hi_bits": (8, 4), "lo_bits": (8, 4), "hi_mass": 1.0, "keep_mass": 1.0,
      "recent_window": 128, "full_bits": 16}),
)


def rung_config(overrides: dict[str, Any]) -> LeanKVConfig:
    """The configuration of one ladder rung."""
    return LeanKVConfig(**{**_BASE, **overrides})


@dataclass
class Rung:
    """One evaluated configuration of the ladder."""

    name: str
    config: LeanKVConfig
    mean: dict[str, float]
    passed: bool
    documents: int = 0  # documents evaluated (fewer than the split when it stopped early)
    stopped_early: bool = False


def passes(mean: dict[str, float], target_ppl: float, target_kl: float,
           min_retrieval: float = 1.0) -> bool:
    """Whether a calibration mean meets the targets (retrieval: at least ``min_retrieval`` times
    dense's, if measured)."""
    retrieval_ok = (mean["retrieval"] != mean["retrieval"]  # NaN: not measured
                    or mean["retrieval"] >= min_retrieval * mean["retrieval_dense"] - 1e-9)
    return mean["ppl_increase_pct"] <= target_ppl and mean["kl"] <= target_kl and retrieval_ok


BEST_PPL_INCREASE_PCT = -1.0
"""What :func:`hopeless` assumes a remaining document could at best score: compression noise
lowers a document's perplexity by up to ~0.7% on the calibration half, never by 1%."""


def hopeless(results: list[DocumentResult], n_documents: int, target_ppl: float,
             target_kl: float, min_retrieval: float = 1.0) -> bool:
    """Whether the documents evaluated so far already make the mean over ``n_documents`` miss
    the targets, even if every remaining document did as well as possible (perplexity
    :data:`BEST_PPL_INCREASE_PCT` or the lowest seen so far, no KL, every retrieval question
    answered that the dense cache missed)."""
    best = min([BEST_PPL_INCREASE_PCT, *(r.ppl_increase_pct for r in results)])
    rest_docs = n_documents - len(results)
    ppl = (sum(r.ppl_increase_pct for r in results) + best * rest_docs) / n_documents
    kl = sum(r.kl for r in results) / n_documents
    measured = [r for r in results if r.retrieval == r.retrieval]
    rest = n_documents - len(measured)
    ours = sum(r.retrieval for r in measured) + rest
    dense = sum(r.retrieval_dense for r in measured)
    return ppl > target_ppl or kl > target_kl or ours < min_retrieval * dense - 1e-9


def _still_hopeless(report: dict[str, Any], target_ppl: float, target_kl: float,
                    min_retrieval: float) -> bool:
    """Whether a report that stopped early also misses these targets."""
    results = [DocumentResult(**d) for d in report["documents"]]
    return hopeless(results, report["documents_total"], target_ppl, target_kl, min_retrieval)


def calibrate(loaded: Any, target_ppl: float, target_kl: float, settings: SuiteSettings,
              progress: Callable[[int], None] | None = None,
              on_rung: Callable[[Rung], None] | None = None, min_retrieval: float = 1.0,
              memo: dict[str, Any] | None = None) -> list[Rung]:
    """Evaluate rungs in order until one passes; returns every evaluated rung (the last one
    passed, unless none did). ``memo`` (a dict kept between calls with the same settings)
    remembers evaluated rungs and the dense model's answers and log-probabilities, so several
    targets cost one walk; a rung that stopped early is evaluated again only for targets it
    might still meet."""
    settings = replace(settings, split="calibration")
    memo = {} if memo is None else memo
    dense: DenseMemo = memo.setdefault("dense answers", {})
    reports: dict[str, dict[str, Any]] = memo.setdefault("rungs", {})

    def give_up(results: list[DocumentResult], n_documents: int) -> bool:
        return hopeless(results, n_documents, target_ppl, target_kl, min_retrieval)

    rungs = []
    for name, overrides in LADDER:
        config = rung_config(overrides)
        old = reports.get(name)
        if old is None or (old.get("stopped_early") and not _still_hopeless(
                old, target_ppl, target_kl, min_retrieval)):
            hardest = memo.get("hardest documents")
            reports[name] = evaluate_split(loaded, config, settings, progress,
                                           dense_memo=dense, give_up=give_up, first=hardest)
            docs = sorted(reports[name]["documents"], key=lambda d: -d["ppl_increase_pct"])
            memo["hardest documents"] = [d["name"] for d in docs]
        mean = reports[name]["mean"]
        ok = passes(mean, target_ppl, target_kl, min_retrieval)
        stopped = reports[name].get("stopped_early", False)
        rung = Rung(name, config, mean, ok and not stopped, len(reports[name]["documents"]),
                    stopped)
        rungs.append(rung)
        if on_rung:
            on_rung(rung)
        if rung.passed:
            break
    return rungs


def preset_toml(rung: Rung, model: str, target_ppl: float, target_kl: float,
                min_retrieval: float = 1.0, command: str = "leanstack kv calibrate") -> str:
    """The chosen configuration as a preset file, with its calibration numbers as notes."""
    notes = [f"model = {json.dumps(model)}", "split = \"calibration\"",
             f"rung = {json.dumps(rung.name)}", f"command = {json.dumps(command)}",
             f"target_ppl_increase_pct = {target_ppl}",
             f"target_kl = {target_kl}", f"min_retrieval_vs_dense = {min_retrieval}",
             f"met_targets = {'true' if rung.passed else 'false'}",
             f"documents_evaluated = {rung.documents}"]
    notes += [f"{k} = {v!r}" for k, v in rung.mean.items() if v == v]
    return ("# LeanKV preset chosen on the calibration half of the corpus (never the test half)\n"
            f"# by `{command}`: the first ladder rung meeting the targets.\n"
            + rung.config.to_toml() + "\n[calibration]\n" + "\n".join(notes) + "\n")
