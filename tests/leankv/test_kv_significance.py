import torch

from leanstack.leankv.config import LeanKVConfig
from leanstack.leankv.significance import assign_tiers, cumulative_share
from leanstack.leankv.store import PRUNED, TIER_FULL, TIER_HI, TIER_LO


def test_cumulative_share_ranks_within_each_group():
    group = torch.tensor([0, 0, 0, 1, 1])
    sig = torch.tensor([0.2, 0.5, 0.3, 1.0, 3.0])
    share, total = cumulative_share(group, sig)
    assert torch.allclose(total, torch.tensor([1.0, 4.0]))
    assert torch.allclose(share, torch.tensor([0.8, 0.0, 0.5, 0.75, 0.0]))


def test_concentrated_head_keeps_fewer_tokens_than_diffuse_head():
    n = 40
    cfg = LeanKVConfig(sink_tokens=0, recent_window=0, hi_mass=0.5, keep_mass=0.9)
    pos = torch.arange(n).repeat(2)
    group = torch.arange(2).repeat_interleave(n)
    concentrated = torch.zeros(n)
    concentrated[:3] = torch.tensor([10.0, 5.0, 1.0])
    diffuse = torch.ones(n)
    score = torch.cat([concentrated, diffuse]) * (n - pos)  # undo the per-query normalisation
    tier = torch.full((2 * n,), TIER_FULL)
    new = assign_tiers(cfg, group, pos, score, tier, n, torch.zeros(1, dtype=torch.int64),
                       torch.zeros(2 * n, dtype=torch.int64))
    kept = (new != PRUNED).view(2, n).sum(1)
    assert kept[0] <= 3 and kept[1] >= 0.85 * n
    assert new[0] == TIER_HI  # the most significant token is at high precision
    assert set(new[n:].tolist()) >= {TIER_HI, TIER_LO, PRUNED}


def test_sinks_and_recent_window_stay_full_and_padding_is_pruned():
    cfg = LeanKVConfig(sink_tokens=2, recent_window=3, hi_mass=0.0, keep_mass=0.0)
    pos = torch.arange(12)
    first_valid = torch.tensor([2])
    new = assign_tiers(cfg, torch.zeros(12, dtype=torch.int64), pos, torch.ones(12),
                       torch.zeros(12, dtype=torch.int64), 12, first_valid,
                       torch.zeros(12, dtype=torch.int64))
    assert new[:2].tolist() == [PRUNED, PRUNED]  # padding
    assert new[2:4].tolist() == [TIER_FULL, TIER_FULL]  # sinks count from the first real token
    assert new[-3:].tolist() == [TIER_FULL] * 3
    assert set(new[4:9].tolist()) == {PRUNED}


def test_tiers_only_ever_demote():
    cfg = LeanKVConfig(sink_tokens=0, recent_window=0, hi_mass=1.0, keep_mass=1.0)
    tier = torch.tensor([TIER_LO, TIER_HI, PRUNED, TIER_FULL])
    new = assign_tiers(cfg, torch.zeros(4, dtype=torch.int64), torch.arange(4),
                       torch.ones(4), tier, 10, torch.zeros(1, dtype=torch.int64),
                       torch.zeros(4, dtype=torch.int64))
    assert new.tolist() == [TIER_LO, TIER_HI, PRUNED, TIER_HI]


def test_a_heavy_sink_does_not_eat_the_budget():
    # the sink draws 95% of the attention; the thresholds apply to the rest
    n = 20
    cfg = LeanKVConfig(sink_tokens=1, recent_window=0, hi_mass=0.5, keep_mass=0.9)
    score = torch.full((n,), 0.05 / (n - 1))
    score[0] = 0.95
    score = score * (n - torch.arange(n))
    new = assign_tiers(cfg, torch.zeros(n, dtype=torch.int64), torch.arange(n), score,
                       torch.zeros(n, dtype=torch.int64), n, torch.zeros(1, dtype=torch.int64),
                       torch.zeros(n, dtype=torch.int64))
    assert new[0] == TIER_FULL
    assert int((new != PRUNED).sum()) >= 0.9 * (n - 1)


def test_budget_keeps_the_same_number_of_tokens_in_every_head():
    n = 30
    cfg = LeanKVConfig(sink_tokens=1, recent_window=2, budget=5, hi_bits=(8, 4))
    pos = torch.arange(n).repeat(2)
    group = torch.arange(2).repeat_interleave(n)
    score = torch.rand(2 * n, generator=torch.Generator().manual_seed(0))
    new = assign_tiers(cfg, group, pos, score, torch.zeros(2 * n, dtype=torch.int64), n,
                       torch.zeros(1, dtype=torch.int64), torch.zeros(2 * n, dtype=torch.int64))
    for g in range(2):
        mine = new[group == g]
        assert (mine == TIER_HI).sum() == 5 and (mine == TIER_LO).sum() == 0
        assert (mine == TIER_FULL).sum() == 3  # one sink, two recent
        candidates = torch.arange(1, n - 2)
        sig = (score[group == g] / (n - pos[group == g]))[candidates]
        top = candidates[torch.argsort(sig, descending=True)[:5]]
        assert set(torch.nonzero(mine == TIER_HI).squeeze(1).tolist()) == set(top.tolist())


def test_sum_significance_favours_old_tokens_that_mean_does_not():
    # token 0 collected 3.0 from 100 queries, token 1 collected 2.0 from 4 queries
    cfg = dict(sink_tokens=0, recent_window=0, budget=1)
    pos, score = torch.tensor([0, 96]), torch.tensor([3.0, 2.0])
    args = (torch.zeros(2, dtype=torch.int64), pos, score, torch.zeros(2, dtype=torch.int64),
            100, torch.zeros(1, dtype=torch.int64), torch.zeros(2, dtype=torch.int64))
    mean = assign_tiers(LeanKVConfig(**cfg), *args)
    total = assign_tiers(LeanKVConfig(significance="sum", **cfg), *args)
    assert mean.tolist() == [PRUNED, TIER_HI]
    assert total.tolist() == [TIER_HI, PRUNED]


def test_already_pruned_mass_counts_against_keep_mass():
    # 20 equal tokens, keep 90%: with nothing pruned yet the last 2 go; once 10% of the mass is
    # already pruned, re-tiering must not prune the survivors' tail again
    n = 20
    cfg = LeanKVConfig(sink_tokens=0, recent_window=0, hi_mass=0.5, keep_mass=0.9)
    args = (cfg, torch.zeros(n, dtype=torch.int64), torch.arange(n),
            (n - torch.arange(n)).float(), torch.full((n,), TIER_HI), n,
            torch.zeros(1, dtype=torch.int64), torch.zeros(n, dtype=torch.int64))
    assert int((assign_tiers(*args) == PRUNED).sum()) == 2
    assert int((assign_tiers(*args, pruned_mass=torch.tensor([n / 9])) == PRUNED).sum()) == 0
    half_done = assign_tiers(*args, pruned_mass=torch.tensor([n / 19]))  # 5% of mass pruned
    assert int((half_done == PRUNED).sum()) == 1


def test_cache_accumulates_pruned_mass_per_head(tiny_llama):
    from leanstack.leankv.cache import LeanKVCache

    cfg = LeanKVConfig(group=16, page_bytes=256, recent_window=4, sink_tokens=1, retier_every=2,
                       hi_mass=0.5, keep_mass=0.8)
    ids = torch.randint(3, 128, (1, 60), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cache = LeanKVCache(tiny_llama.config, cfg)
        tiny_llama(input_ids=ids[:, :40], cache=cache)
        after_prefill = cache.store.pruned_mass.clone()
        for i in range(40, 60):
            tiny_llama(input_ids=ids[:, i:i + 1], cache=cache)
    assert bool((after_prefill > 0).all())
    assert bool((cache.store.pruned_mass >= after_prefill).all())
    # every pruned token's mass is counted once: far fewer pruned than with compounding
    pruned = cache.tier_counts()["pruned"]
    assert 0 < pruned < 0.5 * 60 * 2 * 2
