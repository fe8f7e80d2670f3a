"""Protection against over-pruning: a per-head floor of kept tokens, SnapKV-style pinning of
observed prompt tokens, and early stopping of hopeless calibration rungs."""

import math

import pytest
import torch

from leanstack.errors import LeanstackError
from leanstack.leankv import LeanKVCache, LeanKVConfig
from leanstack.leankv.calibrate import hopeless
from leanstack.leankv.significance import assign_tiers
from leanstack.leankv.store import PRUNED, TIER_FULL, TIER_HI
from leanstack.leankv.suite import DocumentResult


@pytest.mark.parametrize("settings, problem", [
    ({"min_kept": -1}, "min_kept must be >= 0"),
    ({"snap_window": -4, "snap_keep": 0.1}, "snap_window must be >= 0"),
    ({"snap_window": 8, "snap_keep": 1.5}, "snap_keep must be a share"),
    ({"snap_window": 8}, "work together"),
    ({"snap_keep": 0.2}, "work together"),
])
def test_bad_protection_settings_are_one_line_errors(settings, problem):
    with pytest.raises(LeanstackError, match=problem) as err:
        LeanKVConfig(**settings)
    assert "\n" not in str(err.value)


def _concentrated_heads():
    """Two heads of 40 tokens each; almost all mass on 2 tokens per head."""
    n = 40
    group = torch.arange(2).repeat_interleave(n)
    pos = torch.arange(n).repeat(2)
    score = torch.full((2 * n,), 1e-3)
    score[[10, 11, n + 20, n + 21]] = 10.0
    score[[12, n + 22]] = 0.5  # third most significant of each head
    return group, pos, score, torch.full_like(group, TIER_FULL)


def _tiers(cfg, pinned=None):
    group, pos, score, tier = _concentrated_heads()
    zero = torch.zeros(1, dtype=torch.int64)
    return assign_tiers(cfg, group, pos, score, tier, 40, zero, torch.zeros_like(group),
                        None, pinned), group, pos


def test_floor_keeps_each_heads_most_significant_tokens():
    base = {"hi_mass": 0.5, "keep_mass": 0.5, "sink_tokens": 0, "recent_window": 0}
    plain, group, _ = _tiers(LeanKVConfig(**base))
    kept_plain = torch.bincount(group[plain != PRUNED], minlength=2)
    assert (kept_plain <= 2).all()  # half the mass is covered by the top two tokens
    floored, _, pos = _tiers(LeanKVConfig(**base, min_kept=5))
    kept = torch.bincount(group[floored != PRUNED], minlength=2)
    assert kept.tolist() == [5, 5]
    # the floor keeps the most significant ones: the third token of each head is among them
    assert floored[12] != PRUNED and floored[40 + 22] != PRUNED


def test_pinned_tokens_stay_at_least_in_the_high_tier_and_are_never_promoted():
    cfg = LeanKVConfig(hi_mass=0.3, keep_mass=0.5, sink_tokens=0, recent_window=0)
    group, pos, score, tier = _concentrated_heads()
    pinned = torch.zeros_like(group, dtype=torch.bool)
    pinned[[0, 1, 45]] = True  # barely attended to: pruned unless pinned
    new, _, _ = _tiers(cfg, pinned)
    assert (new[pinned] == TIER_HI).all()
    unpinned, _, _ = _tiers(cfg)
    assert (unpinned[pinned] == PRUNED).all()
    # a token already in the low tier is not promoted by a pin
    zero = torch.zeros(1, dtype=torch.int64)
    low = tier.clone().fill_(2)
    again = assign_tiers(cfg, group, pos, score, low, 40, zero, torch.zeros_like(group), None,
                         pinned)
    assert (again[pinned] == 2).all()


def test_observation_window_pins_a_share_of_each_heads_prompt(tiny_llama):
    torch.manual_seed(1)
    ids = torch.randint(0, 128, (1, 50))
    harsh = {"hi_mass": 0.3, "keep_mass": 0.3, "sink_tokens": 1, "recent_window": 2,
             "retier_every": 4, "full_bits": 16, "hi_bits": (8, 4), "lo_bits": (4, 2)}
    plain = LeanKVCache(tiny_llama.config, LeanKVConfig(**harsh))
    snap = LeanKVCache(tiny_llama.config, LeanKVConfig(**harsh, snap_window=8, snap_keep=0.25))
    with torch.no_grad():
        tiny_llama(ids, cache=plain)
        tiny_llama(ids, cache=snap)
    layer = snap.layers[0]
    groups = layer.pinned // (1 << 40)
    # ceil(0.25 * 50) tokens pinned in each of the two KV heads
    assert torch.bincount(groups, minlength=2).tolist() == [math.ceil(0.25 * 50)] * 2
    tok = layer.working.flat()
    kept = set((tok["group"] * (1 << 40) + tok["pos"]).tolist())
    assert set(layer.pinned.tolist()) <= kept  # every pinned token survived the re-tier
    assert snap.tier_counts()["pruned"] < plain.tier_counts()["pruned"]
    assert plain.layers[0].pinned is None


def _doc(ppl, kl, retrieval=float("nan"), dense=float("nan")):
    return DocumentResult("d", "prose", 10, 10.0, 10.0, ppl, kl, 1.0, 3.0, 1, 3, 3.0, dense,
                          retrieval)


def test_a_rung_is_hopeless_only_when_lossless_remaining_documents_cannot_save_it():
    # mean over 4 documents, the 3 others at best -1% each: (4.9 - 3) / 4 <= 0.5 is still
    # possible, (5.1 - 3) / 4 > 0.5 is not
    assert not hopeless([_doc(4.9, 0.0)], 4, 0.5, 0.01)
    assert hopeless([_doc(5.1, 0.0)], 4, 0.5, 0.01)
    # a document that gained 3% makes the others' best case -3% each
    assert not hopeless([_doc(-3.0, 0.0), _doc(10.0, 0.0)], 4, 0.5, 0.01)
    assert hopeless([_doc(0.1, 0.05)], 4, 0.5, 0.01)  # KL 0.05 / 4 > 0.01
    # retrieval: 0 of dense's 1.0 on the only measured document, 3 left that could all succeed
    assert not hopeless([_doc(0.0, 0.0, 0.0, 1.0)], 4, 0.5, 0.01, min_retrieval=0.9)
    lost = [_doc(0.0, 0.0, 0.0, 1.0)] * 3 + [_doc(0.0, 0.0, 0.5, 1.0)]
    assert hopeless(lost, 4, 0.5, 0.01, min_retrieval=0.9)
    assert not hopeless(lost, 4, 0.5, 0.01, min_retrieval=0.0)


def test_calibration_gives_up_early_and_reevaluates_for_looser_targets(tiny_model_dir):
    from leanstack.leankv.calibrate import LADDER, calibrate
    from leanstack.leankv.corpus import documents
    from leanstack.leankv.suite import SuiteSettings, evaluate_split
    from leanstack.llm import load_model

    loaded = load_model(str(tiny_model_dir))
    settings = SuiteSettings(split="calibration", prefix=16, decode=4, lengths=(), trials=0)
    n_docs = len(documents("calibration"))
    last = documents("calibration")[-1].name
    report = evaluate_split(loaded, LeanKVConfig(), settings, first=[last],
                            give_up=lambda done, n: len(done) == 2)
    assert report["stopped_early"] and report["documents_total"] == n_docs
    assert [d["name"] for d in report["documents"]][0] == last
    assert len(report["documents"]) == 2
    memo: dict = {}
    strict = calibrate(loaded, -100.0, 1e9, settings, memo=memo)
    assert len(strict) == len(LADDER) and not any(r.passed for r in strict)
    # every rung gave up after its first document: it already misses -100% on average
    assert all(r.stopped_early and r.documents == 1 for r in strict)
    assert all(len(memo["rungs"][name]["documents"]) == 1 for name, _ in LADDER)
    loose = calibrate(loaded, 1e9, 1e9, settings, memo=memo)
    assert len(loose) == 1 and loose[0].passed  # re-evaluated in full, not read from the memo
    assert loose[0].documents == n_docs and not loose[0].stopped_early
    assert len(memo["rungs"][LADDER[0][0]]["documents"]) == n_docs
