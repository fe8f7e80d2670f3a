import copy

import pytest
import torch
from transformers import DynamicCache

from leanstack.errors import LeanstackError
from leanstack.leankv import LeanKVCache, LeanKVConfig
from leanstack.leankv.store import NUM_TIERS


def exact(**kw):
    return LeanKVConfig.preset("exact", group=16, **kw)


def padded_batch(seed=1, length=24, pad=6):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 128, (2, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :pad] = 0
    return ids, mask


def test_full_precision_tier_reproduces_dense_attention(tiny_llama):
    ids, mask = padded_batch()
    with torch.no_grad():
        dense_cache = DynamicCache(config=tiny_llama.config)
        ref = tiny_llama(input_ids=ids, attention_mask=mask, cache=dense_cache)
        cache = LeanKVCache(tiny_llama.config, exact())
        out = tiny_llama(input_ids=ids, attention_mask=mask, cache=cache)
        valid = mask.bool()
        assert (ref.logits - out.logits)[valid].abs().max() < 1e-5
        # decode steps read the store, not the fresh keys
        nxt = torch.randint(3, 128, (2, 1))
        mask2 = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], 1)
        ref2 = tiny_llama(input_ids=nxt, attention_mask=mask2, cache=dense_cache)
        out2 = tiny_llama(input_ids=nxt, attention_mask=mask2, cache=cache)
        assert (ref2.logits - out2.logits).abs().max() < 1e-5


def test_generate_batch_with_padding_matches_dense(tiny_llama):
    ids, mask = padded_batch()
    kw = dict(attention_mask=mask, max_new_tokens=20, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        dense = tiny_llama.generate(ids, **kw)
        cache = LeanKVCache(tiny_llama.config, exact(retier_every=4))
        # the documented spelling; transformers 5.24 also accepts cache=
        ours = tiny_llama.generate(ids, past_key_values=cache, **kw)
    assert torch.equal(dense, ours)
    counts = cache.tier_counts()
    # padding (6 tokens x 2 layers x 2 heads) is pruned, everything else kept
    assert counts["pruned"] == 6 * 2 * 2
    assert counts["full"] + counts["high"] == 2 * 43 * 2 * 2 - 24


def test_fp16_tier_is_close_to_dense(tiny_llama):
    ids, mask = padded_batch(seed=2)
    cfg = LeanKVConfig.preset("exact", group=16, full_bits=16, hi_bits=(16, 16))
    with torch.no_grad():
        ref = tiny_llama(input_ids=ids, attention_mask=mask).logits
        cache = LeanKVCache(tiny_llama.config, cfg)
        tiny_llama(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], cache=cache)
        out = tiny_llama(input_ids=ids[:, -1:], attention_mask=mask, cache=cache).logits
    assert (ref[:, -1] - out[:, -1]).abs().max() < 1e-2


def _tiered(**kw):
    """K8V8 / K4V4 / K4V2 tiers with pruning, whatever the shipped presets currently are."""
    base = {"hi_bits": (4, 4), "lo_bits": (4, 2), "hi_mass": 0.5, "keep_mass": 0.9,
            "full_bits": 8}
    return LeanKVConfig(**{**base, **kw})


def test_compressing_preset_prunes_quantizes_and_saves_bytes(tiny_llama):
    cfg = _tiered(group=16, page_bytes=256, recent_window=8, sink_tokens=2, retier_every=4,
                  hi_mass=0.6, keep_mass=0.9)
    ids = torch.randint(3, 128, (2, 120), generator=torch.Generator().manual_seed(3))
    model = copy.deepcopy(tiny_llama)
    for layer in model.model.layers:  # KV head 0 attends sharply, head 1 diffusely
        layer.self_attn.k_proj.weight.data[:16] *= 8
    with torch.no_grad():
        cache = LeanKVCache(model.config, cfg)
        model(input_ids=ids[:, :100], cache=cache)
        for i in range(100, 120):
            model(input_ids=ids[:, i:i + 1], cache=cache)
    counts = cache.tier_counts()
    assert counts["low"] > 0 and counts["pruned"] > 0
    assert cache.compression() > 1.5  # head_dim 16: per-record overhead is large
    store = cache.store
    # per-head budgets: the kept count differs between KV heads of a layer
    kept = store.length.view(2, 2, 2, NUM_TIERS).sum(-1)  # batch, layer, head
    assert bool((kept[:, :, 0] != kept[:, :, 1]).any())
    # the recent window and the sinks always stay in the full tier
    for layer in range(2):
        got = store.read(layer, 0)
        pos = store.layouts[0].decode(got.records)[2]
        for b in range(2):
            for h in range(2):
                mine = set(pos[(got.batch == b) & (got.head == h)].tolist())
                assert {0, 1} | set(range(112, 120)) <= mine


def test_cache_is_rejected_without_leankv_attention(tiny_llama):
    cache = LeanKVCache(tiny_llama.config, exact())
    tiny_llama.config._attn_implementation = "sdpa"
    try:
        with torch.no_grad(), pytest.raises(LeanstackError, match="attention implementation"):
            tiny_llama(input_ids=torch.tensor([[5, 6, 7]]), cache=cache)
    finally:
        tiny_llama.config._attn_implementation = "leankv"


def test_other_caches_still_work_after_switching(tiny_llama):
    LeanKVCache(tiny_llama.config, exact())
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        a = tiny_llama(input_ids=ids, cache=DynamicCache(config=tiny_llama.config)).logits
        tiny_llama.config._attn_implementation = "sdpa"
        b = tiny_llama(input_ids=ids).logits
        tiny_llama.config._attn_implementation = "leankv"
    assert torch.allclose(a, b, atol=1e-6)


def test_bad_model_config_is_one_line_error():
    with pytest.raises(LeanstackError, match="model.config"):
        LeanKVCache(object(), exact())


def test_eight_bit_full_tier_holds_fewer_bytes_and_stays_close(tiny_llama):
    ids = torch.randint(3, 128, (1, 60), generator=torch.Generator().manual_seed(4))
    out, held = {}, {}
    for bits in (16, 8):
        cfg = LeanKVConfig.preset("lossless", group=16, page_bytes=256, full_bits=bits,
                                  recent_window=64)  # every token stays in the full tier
        with torch.no_grad():
            cache = LeanKVCache(tiny_llama.config, cfg)
            tiny_llama(input_ids=ids[:, :-1], cache=cache)
            out[bits] = tiny_llama(input_ids=ids[:, -1:], cache=cache).logits
        held[bits] = cache.bytes_held()
        assert cache.tier_counts()["full"] == 60 * 2 * 2
    assert held[8] < 0.7 * held[16]
    assert (out[8] - out[16]).abs().max() < 0.05


def _compressing(**kw):
    return _tiered(group=16, page_bytes=256, recent_window=8, sink_tokens=2, retier_every=4,
                   **kw)


def test_working_set_mirrors_the_store_and_decodes_only_new_tokens(tiny_llama, monkeypatch):
    from leanstack.leankv.records import RecordLayout

    ids = torch.randint(3, 128, (2, 90), generator=torch.Generator().manual_seed(5))
    decoded = []
    real = RecordLayout.decode
    monkeypatch.setattr(RecordLayout, "decode",
                        lambda self, rec: decoded.append(rec.shape[0]) or real(self, rec))
    cache = LeanKVCache(tiny_llama.config, _compressing())
    with torch.no_grad():
        tiny_llama(input_ids=ids[:, :80], cache=cache)
        for i in range(80, 90):
            decoded.clear()
            tiny_llama(input_ids=ids[:, i:i + 1], cache=cache)
            # per layer: the 2 x 2 new records, plus at a re-tier only the tokens that moved
            stored = cache.store.tokens_held()
            assert sum(decoded) < stored / 2
    store = cache.store
    for layer_idx, layer in enumerate(cache.layers):
        tok = layer.working.flat()
        assert tok["pos"].numel() == int(store.length.view(2, 2, 2, NUM_TIERS)[:, layer_idx]
                                          .sum())
        for tier in range(NUM_TIERS):
            got = store.read(layer_idx, tier)
            k, v, pos, _ = real(store.layouts[tier], got.records)
            if store.quantizes_keys(tier):
                k = store.normalize_keys(layer_idx, got.batch, got.head, k, inverse=True)
            key = (got.batch * 2 + got.head) * 1000 + pos
            mine = tok["group"] * 1000 + tok["pos"]
            at = torch.nonzero(mine.unsqueeze(1) == key.unsqueeze(0))  # [match, (mine, theirs)]
            assert at.shape[0] == pos.numel()  # every stored token once in the working set
            j, i = at[:, 0], at[:, 1]
            assert bool((tok["tier"][j] == tier).all())
            assert torch.allclose(tok["k"][j], k[i], atol=1e-5)
            assert torch.allclose(tok["v"][j], v[i], atol=1e-5)


def test_pool_holds_about_the_pages_in_use(tiny_llama):
    ids = torch.randint(3, 128, (1, 300), generator=torch.Generator().manual_seed(6))
    cache = LeanKVCache(tiny_llama.config, _compressing())
    with torch.no_grad():
        tiny_llama(input_ids=ids[:, :260], cache=cache)
        assert cache.bytes_reserved() <= 1.15 * cache.bytes_held()
        for i in range(260, 300):
            tiny_llama(input_ids=ids[:, i:i + 1], cache=cache)
    assert cache.tier_counts()["pruned"] > 0
    assert cache.bytes_held() <= cache.bytes_reserved() <= 1.15 * cache.bytes_held()
    assert cache.working_set_bytes() > 0
