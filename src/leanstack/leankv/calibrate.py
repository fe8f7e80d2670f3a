"""Per-model calibration: walk a ladder of configurations from the most to the least
compressed on the corpus's *calibration* half and keep the first that meets the targets.

The ladder runs from progressive eviction at K4V4 through mass-based pruning with K4V4/K4V2
tiers, then no pruning with more and more of each head's mass at K8V4, to everything at K8V4
with an fp16 window of 128 tokens. A rung passes when its mean perplexity increase and KL over
the calibration documents are within the targets and, when retrieval is measured, it answers at
least ``min_retrieval`` times as many retrieval questions as the dense cache did.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from leanstack.leankv.config import LeanKVConfig
from leanstack.leankv.suite import DenseMemo, SuiteSettings, evaluate_split

# shared by every rung: K8V8 sinks and window, 8-token re-tiers, 1 KiB pages
_BASE: dict[str, Any] = {"full_bits": 8, "retier_every": 8, "page_bytes": 1024}
LADDER: tuple[tuple[str, dict[str, Any]], ...] = (
    ("K4V4, survivors' last 1% re-pruned, decay 0.985",
     {"hi_bits": (4, 4), "lo_bits": (4, 4), "hi_mass": 0.99, "keep_mass": 0.99,
      "recent_window": 16, "score_decay": 0.985, "reprune": True}),
    ("K4V4/K4V2, 10% of the mass pruned",
     {"hi_bits": (4, 4), "lo_bits": (4, 2), "hi_mass": 0.5, "keep_mass": 0.9,
      "recent_window": 16}),
    ("K4V4/K4V2, 3% of the mass pruned",
     {"hi_bits": (4, 4), "lo_bits": (4, 2), "hi_mass": 0.5, "keep_mass": 0.97,
      "recent_window": 16}),
    ("K4V4/K4V2, no pruning",
     {"hi_bits": (4, 4), "lo_bits": (4, 2), "hi_mass": 0.5, "keep_mass": 1.0,
      "recent_window": 16}),
    ("K4V4, no pruning",
     {"hi_bits": (4, 4), "lo_bits": (4, 4), "hi_mass": 1.0, "keep_mass": 1.0,
      "recent_window": 24}),
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


def passes(mean: dict[str, float], target_ppl: float, target_kl: float,
           min_retrieval: float = 1.0) -> bool:
    """Whether a calibration mean meets the targets (retrieval: at least ``min_retrieval`` times
    dense's, if measured)."""
    retrieval_ok = (mean["retrieval"] != mean["retrieval"]  # NaN: not measured
                    or mean["retrieval"] >= min_retrieval * mean["retrieval_dense"] - 1e-9)
    return mean["ppl_increase_pct"] <= target_ppl and mean["kl"] <= target_kl and retrieval_ok


def calibrate(loaded: Any, target_ppl: float, target_kl: float, settings: SuiteSettings,
              progress: Callable[[int], None] | None = None,
              on_rung: Callable[[Rung], None] | None = None, min_retrieval: float = 1.0,
              memo: dict[str, Any] | None = None) -> list[Rung]:
    """Evaluate rungs in order until one passes; returns every evaluated rung (the last one
    passed, unless none did). ``memo`` (a dict kept between calls with the same settings)
    remembers evaluated rungs and the dense cache's answers, so several targets cost one walk."""
    settings = replace(settings, split="calibration")
    memo = {} if memo is None else memo
    dense: DenseMemo = memo.setdefault("dense answers", {})
    reports: dict[str, dict[str, Any]] = memo.setdefault("rungs", {})
    rungs = []
    for name, overrides in LADDER:
        config = rung_config(overrides)
        if name not in reports:
            reports[name] = evaluate_split(loaded, config, settings, progress,
                                           dense_memo=dense)
        mean = reports[name]["mean"]
        rung = Rung(name, config, mean, passes(mean, target_ppl, target_kl, min_retrieval))
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
             f"met_targets = {'true' if rung.passed else 'false'}"]
    notes += [f"{k} = {v!r}" for k, v in rung.mean.items() if v == v]
    return ("# LeanKV preset chosen on the calibration half of the corpus (never the test half)\n"
            f"# by `{command}`: the first ladder rung meeting the targets.\n"
            + rung.config.to_toml() + "\n[calibration]\n" + "\n".join(notes) + "\n")
