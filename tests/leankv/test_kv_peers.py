import pytest
import torch
from transformers import DynamicCache

from leanstack.errors import LeanstackError
from leanstack.leankv import LeanKVCache, LeanKVConfig
from leanstack.leankv.evaluate import decode_fidelity, fp16_bytes
from leanstack.leankv.peers import (
    KIVICache,
    dense_spec,
    h2o_config,
    kivi_spec,
    leankv_spec,
    quanto_spec,
    uniform_config,
)
from leanstack.leankv.store import NUM_TIERS


def ids(n=70, seed=5):
    return torch.randint(3, 128, (1, n), generator=torch.Generator().manual_seed(seed))


def run(model, cache, tokens, prefix):
    with torch.no_grad():
        model(input_ids=tokens[:, :prefix], cache=cache)
        for i in range(prefix, tokens.shape[1]):
            model(input_ids=tokens[:, i:i + 1], cache=cache)
    return cache


def test_dense_spec_counts_fp16_bytes_exactly(tiny_llama):
    spec = dense_spec()
    cache = run(tiny_llama, spec.make(tiny_llama.config), ids(), 50)
    assert spec.bytes_held(cache) == fp16_bytes(tiny_llama.config, 70)
    assert isinstance(cache, DynamicCache)


def test_kivi_quantizes_whole_blocks_and_keeps_a_residual(tiny_llama):
    cache = run(tiny_llama, KIVICache(tiny_llama.config, bits=4, residual=16, group=16), ids(),
                50)
    layer = cache.layers[0]
    assert layer.quantized_tokens == 64  # 4 blocks of 16; 6 tokens still in the residual
    # 1 request x 2 heads: packed K+V, per-channel key scale/min per block, per-token value
    # scale/min, fp16 residual
    want = 2 * (2 * 64 * 16 * 4 // 8 + 4 * 16 * 4 + 64 * 1 * 4 + 2 * 6 * 16 * 2)
    assert layer.packed_bytes() == want
    assert cache.bytes_held() == 2 * want
    # quantized tokens really differ from the originals; the residual is untouched
    dense = run(tiny_llama, DynamicCache(config=tiny_llama.config), ids(), 50)
    assert not torch.equal(layer.keys[..., :64, :], dense.layers[0].keys[..., :64, :])
    assert torch.equal(layer.keys[..., 64:, :], dense.layers[0].keys[..., 64:, :])
    err = (layer.keys[..., :64, :] - dense.layers[0].keys[..., :64, :]).abs().max()
    assert err < 0.5


def test_kivi_rejects_bad_settings(tiny_llama):
    with pytest.raises(LeanstackError, match="KIVI needs"):
        KIVICache(tiny_llama.config, bits=3)


def test_quanto_cache_bytes_are_read_from_its_tensors(tiny_llama):
    pytest.importorskip("optimum.quanto")
    spec = quanto_spec(4, residual=16, group=16)
    cache = run(tiny_llama, spec.make(tiny_llama.config), ids(), 50)
    held = spec.bytes_held(cache)
    full = fp16_bytes(tiny_llama.config, 70)
    assert 0 < held < full / 2  # 4-bit data plus scales, shifts and an fp16 residual


def test_h2o_keeps_a_fixed_budget_per_head(tiny_llama):
    cfg = h2o_config(20, retier_every=1)  # 10 heavy hitters + 10 recent tokens per head
    cache = run(tiny_llama, LeanKVCache(tiny_llama.config, cfg), ids(), 50)
    kept = cache.store.length.view(1, 2, 2, NUM_TIERS).sum(-1)
    assert bool((kept == 20).all())
    assert cache.tier_counts()["pruned"] == 2 * 2 * (70 - 20)


def test_uniform_config_quantizes_every_token_and_prunes_none(tiny_llama):
    cfg = uniform_config(8, 8, group=16, retier_every=1)
    cache = run(tiny_llama, LeanKVCache(tiny_llama.config, cfg), ids(), 50)
    counts = cache.tier_counts()
    assert counts["pruned"] == 0 and counts["full"] == 0 and counts["high"] == 70 * 2 * 2


def test_harness_runs_any_cache_spec(tiny_llama):
    tokens = ids(40)
    dense = decode_fidelity(tiny_llama, tokens, 30, dense_spec())
    assert dense.kl < 1e-6 and dense.compression == pytest.approx(1.0)
    kivi = decode_fidelity(tiny_llama, tokens, 30, kivi_spec(2, residual=16, group=16))
    assert kivi.compression > 1.5 and kivi.kl > dense.kl
    lean = decode_fidelity(tiny_llama, tokens, 30,
                           leankv_spec("x", LeanKVConfig.preset("exact", group=16)))
    assert lean.kl < 1e-6 and lean.tier_counts["pruned"] == 0
