"""Per-model calibration: walk a ladder of configurations from the most to the least
compressed on the corpus's *calibration* half and keep the first that meets the targets.

The ladder is the named presets followed by progressively safer variants (no pruning, then
everything at K8V4, then an fp16 window of 128 tokens). A rung passes when its mean perplexity
increase and KL over the calibration documents are within the targets and, when retrieval is
measured, it answers at least as many retrieval questions as the dense cache did.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from leanstack.leankv.config import LeanKVConfig
from leanstack.leankv.suite import SuiteSettings, evaluate_split

LADDER: tuple[tuple[str, dict[str, Any]], ...] = (
    ("aggressive", {}),
    ("balanced-window", {}),
    ("balanced", {}),
    ("lossless", {}),
    ("lossless", {"keep_mass": 1.0}),
    ("lossless", {"keep_mass": 1.0, "hi_mass": 1.0}),
    ("lossless", {"keep_mass": 1.0, "hi_mass": 1.0, "full_bits": 16, "recent_window": 128}),
)


@dataclass
class Rung:
    """One evaluated configuration of the ladder."""

    base: str
    overrides: dict[str, Any]
    config: LeanKVConfig
    mean: dict[str, float]
    passed: bool


def passes(mean: dict[str, float], target_ppl: float, target_kl: float) -> bool:
    """Whether a calibration mean meets the targets (retrieval: at least dense's, if measured)."""
    retrieval_ok = (mean["retrieval"] != mean["retrieval"]  # NaN: not measured
                    or mean["retrieval"] >= mean["retrieval_dense"])
    return mean["ppl_increase_pct"] <= target_ppl and mean["kl"] <= target_kl and retrieval_ok


def calibrate(loaded: Any, target_ppl: float, target_kl: float, settings: SuiteSettings,
              progress: Callable[[int], None] | None = None,
              on_rung: Callable[[Rung], None] | None = None) -> list[Rung]:
    """Evaluate rungs in order until one passes; returns every evaluated rung (the last one
    passed, unless none did)."""
    settings = replace(settings, split="calibration")
    rungs = []
    for base, overrides in LADDER:
        config = LeanKVConfig.preset(base, **overrides)
        mean = evaluate_split(loaded, config, settings, progress)["mean"]
        rung = Rung(base, overrides, config, mean, passes(mean, target_ppl, target_kl))
        rungs.append(rung)
        if on_rung:
            on_rung(rung)
        if rung.passed:
            break
    return rungs


def preset_toml(rung: Rung, model: str, target_ppl: float, target_kl: float) -> str:
    """The chosen configuration as a preset file, with its calibration numbers as notes."""
    notes = [f"model = \"{model}\"", "split = \"calibration\"",
             f"target_ppl_increase_pct = {target_ppl}", f"target_kl = {target_kl}",
             f"met_targets = {'true' if rung.passed else 'false'}"]
    notes += [f"{k} = {v!r}" for k, v in rung.mean.items() if v == v]
    return (f"# LeanKV preset calibrated by `leanstack kv calibrate` (from {rung.base!r})\n"
            + rung.config.to_toml() + "\n[calibration]\n" + "\n".join(notes) + "\n")
