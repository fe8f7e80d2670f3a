import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from leanstack.errors import LeanstackError
from leanstack.leankv.config import PRESETS, LeanKVConfig
from leanstack.leankv.records import RecordLayout
from leanstack.leankv.store import KVStore


@pytest.mark.parametrize("bits", [(32, 32), (16, 16), (8, 4), (4, 2), (2, 8)])
def test_record_round_trip(bits):
    lay = RecordLayout(32, bits[0], bits[1], 16)
    g = torch.Generator().manual_seed(0)
    k, v = torch.randn(5, 32, generator=g), torch.randn(5, 32, generator=g)
    pos, score = torch.arange(5) * 1000, torch.rand(5, generator=g)
    rec = lay.encode(k, v, pos, score)
    assert rec.shape == (5, lay.size) and rec.dtype == torch.uint8
    k2, v2, pos2, score2 = lay.decode(rec)
    assert torch.equal(pos2, pos) and torch.equal(score2, score.half().float())
    tol = {32: 0, 16: 1e-3, 8: 0.03, 4: 0.4, 2: 1.5}
    assert (k2 - k).abs().max() <= tol[bits[0]] and (v2 - v).abs().max() <= tol[bits[1]]


def test_k8v4_record_size_matches_the_spec_arithmetic():
    # head_dim 64, group 64: 64 B keys + 32 B values + 2 x (scale, min) fp16 + int32 position
    # + fp16 score
    assert RecordLayout(64, 8, 4, 64).size == 64 + 32 + 8 + 4 + 2


@settings(max_examples=30, deadline=None)
@given(chunks=st.lists(st.tuples(st.integers(0, 2), st.integers(1, 12)), min_size=1, max_size=6),
       seed=st.integers(0, 1000))
def test_store_returns_what_was_appended(chunks, seed):
    cfg = LeanKVConfig(group=8, page_bytes=128)
    store = KVStore(cfg, num_layers=2, num_kv_heads=2, head_dim=8, batch_size=2, initial_pages=1)
    g = torch.Generator().manual_seed(seed)
    expect: dict[int, list[tuple[int, int, int]]] = {0: [], 1: [], 2: []}
    for n_pos, (tier, n) in enumerate(chunks):
        b = torch.randint(0, 2, (n,), generator=g)
        h = torch.randint(0, 2, (n,), generator=g)
        pos = torch.arange(n) + 100 * n_pos
        x = torch.randn(n, 8, generator=g)
        store.append(1, tier, b, h, store.layouts[tier].encode(x, x, pos, torch.zeros(n)))
        expect[tier] += list(zip(b.tolist(), h.tolist(), pos.tolist(), strict=True))
    for tier in range(3):
        got = store.read(1, tier)
        pos = store.layouts[tier].decode(got.records)[2]
        seen = sorted(zip(got.batch.tolist(), got.head.tolist(), pos.tolist(), strict=True))
        assert seen == sorted(expect[tier])
        assert store.read(0, tier).records.shape[0] == 0
    assert store.tokens_held() == sum(len(v) for v in expect.values())
    assert store.bytes_held() >= store.pool.num_allocated * 128
    store.clear(1, 0)
    assert store.read(1, 0).records.shape[0] == 0


def test_write_scores_updates_in_place():
    store = KVStore(LeanKVConfig(group=8), 1, 1, 8, 1)
    x = torch.zeros(3, 8)
    store.append(0, 1, torch.zeros(3, dtype=torch.int64), torch.zeros(3, dtype=torch.int64),
                 store.layouts[1].encode(x, x, torch.arange(3), torch.zeros(3)))
    got = store.read(0, 1)
    store.write_scores(1, got.byte_base, torch.tensor([1.0, 2.0, 3.0]))
    assert store.layouts[1].decode(store.read(0, 1).records)[3].tolist() == [1.0, 2.0, 3.0]


def test_page_too_small_is_one_line_error():
    with pytest.raises(LeanstackError, match="raise page_bytes"):
        KVStore(LeanKVConfig(page_bytes=64), 1, 1, 64, 1)


def test_presets_and_validation():
    assert set(PRESETS) >= {"lossless", "balanced", "aggressive"}
    assert LeanKVConfig.preset("balanced", recent_window=7).recent_window == 7
    with pytest.raises(LeanstackError, match="unknown preset"):
        LeanKVConfig.preset("tiny")
    with pytest.raises(LeanstackError, match="hi_mass <= keep_mass"):
        LeanKVConfig(hi_mass=0.9, keep_mass=0.5)
    with pytest.raises(LeanstackError, match="unsupported precision"):
        LeanKVConfig(hi_bits=(3, 4))
    with pytest.raises(LeanstackError, match="unknown LeanKV setting 'window'"):
        LeanKVConfig.from_dict({"window": 3})
    assert LeanKVConfig.from_dict(PRESETS["aggressive"].to_dict()) == PRESETS["aggressive"]


def test_new_settings_are_validated():
    with pytest.raises(LeanstackError, match="significance must be one of"):
        LeanKVConfig(significance="max")
    with pytest.raises(LeanstackError, match="budget must be >= 0"):
        LeanKVConfig(budget=-1)
    with pytest.raises(LeanstackError, match="full_bits must be 8, 16 or 32"):
        LeanKVConfig(full_bits=4)


def test_key_channel_norm_cuts_error_of_keys_with_an_outlier_channel():
    g = torch.Generator().manual_seed(0)
    k = torch.randn(200, 64, generator=g)
    k[:, 5] = 40 + 5 * torch.randn(200, generator=g)  # one large, offset channel
    zeros = torch.zeros(200, dtype=torch.int64)
    errors = {}
    for norm in (False, True):
        store = KVStore(LeanKVConfig(hi_bits=(4, 4), key_channel_norm=norm), 1, 1, 64, 1)
        layout = store.layouts[1]
        keys = k
        if norm:
            store.set_key_norm(0, zeros, zeros, k)
            keys = store.normalize_keys(0, zeros, zeros, k)
        back = layout.decode(layout.encode(keys, k, torch.arange(200), torch.zeros(200)))[0]
        if norm:
            back = store.normalize_keys(0, zeros, zeros, back, inverse=True)
        errors[norm] = (back - k)[:, torch.arange(64) != 5].abs().mean().item()
    assert errors[True] < errors[False] / 4
    # the statistics are held by the store and counted: 2 x 64 fp16 per (layer, request, head)
    plain = KVStore(LeanKVConfig(hi_bits=(4, 4), key_channel_norm=False), 1, 1, 64, 1)
    assert store.bytes_held() - plain.bytes_held() == 2 * 64 * 2
    before = store.key_norm.clone()
    store.set_key_norm(0, zeros, zeros, k * 100)  # set once: later calls change nothing
    assert torch.equal(store.key_norm, before)
