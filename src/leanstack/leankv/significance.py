"""Token significance and per-head tier assignment.

Significance of a token is the attention mass it has received, divided by how many queries
could see it (so old and new tokens compare fairly). Per request and KV head, tokens are ranked
by significance and kept until their cumulative share of the head's total reaches a threshold:
a head whose attention is concentrated keeps few tokens, a diffuse head keeps many.
"""

from __future__ import annotations

import torch

from leanstack.leankv.config import LeanKVConfig
from leanstack.leankv.store import PRUNED, TIER_FULL, TIER_HI, TIER_LO


def normalized_significance(score: torch.Tensor, pos: torch.Tensor, seq_len: int,
                            decay: float = 1.0, mode: str = "mean") -> torch.Tensor:
    """Accumulated (optionally decayed) attention mass per query that could see the token
    (``mode="mean"``), or the accumulated mass itself (``mode="sum"``, as H2O ranks tokens)."""
    if mode == "sum":
        return score
    seen = (seq_len - pos).clamp_min(1).to(score.dtype)
    if decay < 1.0:
        seen = (1 - decay ** seen) / (1 - decay)
    return score / seen


def rank_in_group(group: torch.Tensor, sig: torch.Tensor) -> torch.Tensor:
    """Per token, its rank (0 = most significant) among the tokens of its group."""
    order = torch.argsort(sig, descending=True, stable=True)
    order = order[torch.argsort(group[order], stable=True)]
    counts = torch.bincount(group)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(group)
    rank[order] = torch.arange(group.numel(), device=group.device) - starts[group[order]]
    return rank


def cumulative_share(group: torch.Tensor, sig: torch.Tensor,
                     below: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank tokens within each group by significance (descending); return, per token, the share
    of its group's total mass held by the tokens ranked strictly above it, and the group total.
    ``below[g]`` is extra mass of group ``g`` ranked under every token (e.g. already pruned)."""
    order = torch.argsort(sig, descending=True, stable=True)
    order = order[torch.argsort(group[order], stable=True)]
    g, s = group[order], sig[order]
    n_groups = int(group.max()) + 1 if group.numel() else 0
    if below is not None:
        n_groups = max(n_groups, below.numel())
    total = torch.zeros(n_groups, dtype=sig.dtype, device=sig.device).index_add_(0, group, sig)
    if below is not None:
        total[:below.numel()] += below.to(sig.dtype)
    csum = torch.cumsum(s, 0)
    counts = torch.bincount(g, minlength=n_groups)
    group_start = torch.cumsum(counts, 0) - counts
    before_group = torch.where(group_start > 0, csum[(group_start - 1).clamp_min(0)],
                               torch.zeros_like(total))
    above = csum - s - before_group[g]
    share = torch.empty_like(sig)
    share[order] = above / total[g].clamp_min(1e-30)
    return share, total


def _protected(config: LeanKVConfig, pos: torch.Tensor, seq_len: int,
               rel: torch.Tensor) -> torch.Tensor:
    """Sinks (counted from the first non-padding position) and the recent window."""
    return ((rel >= 0) & (rel < config.sink_tokens)) | (pos >= seq_len - config.recent_window)


def decision_significance(config: LeanKVConfig, pos: torch.Tensor, score: torch.Tensor,
                          seq_len: int, first_valid: torch.Tensor,
                          batch: torch.Tensor) -> torch.Tensor:
    """Significance of each token as the tier decision sees it: zero for padding and for the
    protected sinks and recent window (sinks often draw most of a head's attention and would
    otherwise let the thresholds prune nearly everything else)."""
    rel = pos - first_valid[batch]
    sig = normalized_significance(score, pos, seq_len, config.score_decay, config.significance)
    return torch.where((rel < 0) | _protected(config, pos, seq_len, rel), torch.zeros_like(sig),
                       sig)


def assign_tiers(config: LeanKVConfig, group: torch.Tensor, pos: torch.Tensor,
                 score: torch.Tensor, tier: torch.Tensor, seq_len: int,
                 first_valid: torch.Tensor, batch: torch.Tensor,
                 pruned_mass: torch.Tensor | None = None,
                 pinned: torch.Tensor | None = None) -> torch.Tensor:
    """New tier (0 full, 1 high, 2 low, 3 pruned) of each token; never promotes.

    ``group`` identifies the (request, KV head) of each token, ``first_valid[b]`` is the first
    non-padding position of request ``b`` (sinks count from there). ``pruned_mass[g]`` is the
    significance group ``g`` has already pruned: it counts at the bottom of the ranking, so the
    ``keep_mass`` threshold bounds what all pruning together gives up instead of pruning the tail
    of the survivors again at every re-tier. ``pinned`` marks tokens kept at least in the high
    tier (SnapKV-style protection); ``config.min_kept`` keeps each head's most significant tokens
    from being pruned.
    """
    rel = pos - first_valid[batch]
    protected = _protected(config, pos, seq_len, rel)
    sig = decision_significance(config, pos, score, seq_len, first_valid, batch)
    new = torch.full_like(tier, PRUNED)
    if config.budget > 0:  # a fixed number of tokens per head, all in the high tier
        rank = rank_in_group(group, sig)
        new = torch.where((rank < config.budget) & (sig > 0), torch.full_like(tier, TIER_HI), new)
    else:
        share, _ = cumulative_share(group, sig, pruned_mass)
        new = torch.where(share < config.keep_mass, torch.full_like(tier, TIER_LO), new)
        new = torch.where(share < config.hi_mass, torch.full_like(tier, TIER_HI), new)
        new = torch.where(sig <= 0, torch.full_like(tier, PRUNED), new)  # never attended to
    if config.keep_mass >= 1.0 and config.budget == 0:  # keep everything that is not padding
        new = torch.where((new == PRUNED) & (rel >= 0), torch.full_like(tier, TIER_LO), new)
    if config.min_kept > 0:  # a floor per head: its most significant tokens stay
        floor = (rank_in_group(group, sig) < config.min_kept) & (rel >= 0)
        new = torch.where(floor & (new == PRUNED), torch.full_like(tier, TIER_LO), new)
    if pinned is not None:
        new = torch.where(pinned & (rel >= 0), torch.clamp(new, max=TIER_HI), new)
    if config.hi_mass >= 1.0:
        new = torch.where(new == TIER_LO, torch.full_like(tier, TIER_HI), new)
    new = torch.where(protected & (rel >= 0), torch.full_like(tier, TIER_FULL), new)
    return torch.maximum(new, tier)
