import torch

from leanstack.leankv.attention import fused_attention, padded_attention, sparse_attention
from leanstack.leankv.config import LeanKVConfig
from leanstack.leankv.significance import normalized_significance


def dense_reference(query, keys, values, keep, scaling):
    """Per-head masked attention: keys/values [B, H, T, D], keep [B, H, T] bool, causal."""
    b, hq, q_len, _ = query.shape
    heads = keys.shape[1]
    rep = hq // heads
    k = keys.repeat_interleave(rep, 1)
    v = values.repeat_interleave(rep, 1)
    logits = query @ k.transpose(-1, -2) * scaling
    t = keys.shape[2]
    causal = torch.arange(t).view(1, -1) <= (t - q_len + torch.arange(q_len)).view(-1, 1)
    allowed = causal.view(1, 1, q_len, t) & keep.repeat_interleave(rep, 1).unsqueeze(2)
    probs = torch.softmax(logits.masked_fill(~allowed, float("-inf")), -1)
    return (probs @ v).transpose(1, 2), probs


def test_each_head_attends_only_to_its_own_kept_tokens():
    g = torch.Generator().manual_seed(0)
    b, heads, rep, t, q_len, d = 2, 3, 2, 12, 3, 8
    query = torch.randn(b, heads * rep, q_len, d, generator=g)
    keys = torch.randn(b, heads, t, d, generator=g)
    values = torch.randn(b, heads, t, d, generator=g)
    keep = torch.rand(b, heads, t, generator=g) > 0.4
    keep[..., -q_len:] = True  # the new tokens are always present
    keep[..., 0] = True
    bi, hi, ti = torch.nonzero(keep, as_tuple=True)
    out, mass = sparse_attention(query, keys[bi, hi, ti], values[bi, hi, ti], bi * heads + hi, ti,
                                 heads, torch.arange(t - q_len, t), None, d ** -0.5)
    ref, probs = dense_reference(query, keys, values, keep, d ** -0.5)
    assert (out - ref).abs().max() < 1e-5
    ref_mass = probs.reshape(b, heads, rep, q_len, t).sum((2, 3))
    assert torch.allclose(mass, ref_mass[bi, hi, ti], atol=1e-5)
    # a query row's mass over its KV head sums to one per query head
    assert torch.allclose(ref_mass.sum(-1), torch.full((b, heads), float(rep * q_len)))


def test_query_weight_scales_mass_only():
    g = torch.Generator().manual_seed(1)
    query = torch.randn(1, 1, 2, 4, generator=g)
    k, v = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    group, pos, q_pos = torch.zeros(5, dtype=torch.int64), torch.arange(5), torch.tensor([3, 4])
    out1, m1 = sparse_attention(query, k, v, group, pos, 1, q_pos, None, 0.5)
    out2, m2 = sparse_attention(query, k, v, group, pos, 1, q_pos, None, 0.5,
                                torch.tensor([0.0, 1.0]))
    assert torch.equal(out1, out2)
    assert m2[4] == m1[4] and m2[0] < m1[0]


def test_decayed_normalisation():
    score, pos = torch.tensor([1.0]), torch.tensor([0])
    assert normalized_significance(score, pos, 4).item() == 0.25
    assert abs(normalized_significance(score, pos, 2, decay=0.5).item() - 1 / 1.5) < 1e-6


def test_fused_attention_matches_the_mass_keeping_path():
    # slots out of order with holes (-1), a padding mask that hides one request's first token,
    # and a fully padded query: the fused op must give padded_attention's output (zeros where
    # nothing is visible)
    g = torch.Generator().manual_seed(2)
    b, heads, rep, width, q_len, d = 2, 2, 3, 9, 4, 8
    query = torch.randn(b, heads * rep, q_len, d, generator=g)
    keys, values = torch.randn(b * heads, width, d, generator=g), torch.randn(b * heads, width, d,
                                                                              generator=g)
    kpos = torch.stack([torch.randperm(width, generator=g) for _ in range(b * heads)])
    kpos[kpos == 5] = -1  # a pruned hole in every group
    q_pos = torch.arange(width - q_len, width)
    mask = torch.ones(b, 1, q_len, width, dtype=torch.bool)
    mask[1, :, :, 0] = False
    mask[1, :, 0, :] = False  # request 1's first query sees nothing
    for m in (None, mask):
        ref, _ = padded_attention(query, keys, values, kpos, heads, q_pos, m, d ** -0.5)
        out = fused_attention(query, keys, values, kpos, heads, q_pos, m, d ** -0.5)
        assert out.shape == ref.shape and (out - ref).abs().max() < 1e-5
    assert torch.equal(out[1, 0], torch.zeros_like(out[1, 0]))


def test_only_policies_that_prune_or_split_precision_rank_tokens():
    assert not LeanKVConfig.preset("exact").ranks_tokens
    assert not LeanKVConfig(hi_bits=(8, 4), lo_bits=(8, 4), hi_mass=0.9, keep_mass=1.0).ranks_tokens
    assert LeanKVConfig(hi_bits=(8, 4), lo_bits=(4, 2), hi_mass=0.9, keep_mass=1.0).ranks_tokens
    assert LeanKVConfig(hi_mass=1.0, keep_mass=1.0, budget=64).ranks_tokens
    assert LeanKVConfig(hi_bits=(4, 4), lo_bits=(4, 4), hi_mass=0.99, keep_mass=0.99).ranks_tokens
