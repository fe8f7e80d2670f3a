"""The LeanKV engine format without a model: batched writes and the working set's precision."""

import pytest
import torch

from leanstack.llm.engine import KVManager, ModelShape, SamplingParams, Sequence

SHAPE = ModelShape(num_layers=2, num_kv_heads=2, head_dim=64)
PAGE = 16 * 2 * 2 * 2 * 64 * 2  # 16 fp16 tokens of SHAPE


def _sequences(kv: KVManager, fmt: str, lengths: list[int]) -> list[Sequence]:
    seqs = []
    for n in lengths:
        seq = Sequence([1] * n, SamplingParams(max_tokens=4), fmt)
        assert kv.allocate(seq, n)
        seqs.append(seq)
    return seqs


def _tokens(lengths: list[int]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for n in lengths:
        k = torch.randn(SHAPE.num_layers, n, SHAPE.num_kv_heads, SHAPE.head_dim, generator=gen)
        out.append((torch.arange(n), k, torch.randn(k.shape, generator=gen)))
    return out


def test_one_batched_write_per_layer_equals_writes_per_sequence():
    lengths = [5, 1, 3]
    data = _tokens(lengths)
    kv_a = KVManager(SHAPE, 8 * PAGE, PAGE)
    kv_b = KVManager(SHAPE, 8 * PAGE, PAGE)
    fmt = kv_a.format("balanced")[0]
    batched = _sequences(kv_a, "balanced", lengths)
    single = _sequences(kv_b, "balanced", lengths)
    for layer in range(SHAPE.num_layers):
        pos = torch.cat([p for p, _, _ in data])
        k = torch.cat([k[layer] for _, k, _ in data])
        v = torch.cat([v[layer] for _, _, v in data])
        fmt.write_batch(layer, [s.kv_store for s in batched], lengths, pos, k, v)
        for seq, (p, k_s, v_s) in zip(single, data, strict=True):
            seq.kv_store.write(layer, p, k_s[layer], v_s[layer])
    for a, b, (p, k, _) in zip(batched, single, data, strict=True):
        sa, sb = a.kv_store, b.kv_store
        assert sa.tokens_written == len(p)
        for name in ("keys", "values", "pos", "slot", "count"):
            assert torch.equal(getattr(sa, name), getattr(sb, name)), name
        # what the pages hold decodes to what attention reads, close to the input (K8V8)
        keys, _, pos = sa.read_back()
        kept = sa.pos >= 0
        assert torch.equal(keys, sa.keys[kept]) and torch.equal(pos, sa.pos[kept])
        want = k.permute(0, 2, 1, 3)  # [layers, heads, n, dim], the working set's order
        assert torch.allclose(sa.keys[:, :, :len(p)].float(), want, atol=0.05)
    assert kv_a.num_free == kv_b.num_free
    for seq in batched:
        kv_a.free(seq)
    assert kv_a.num_free == kv_a.num_pages


def test_working_set_is_fp16_unless_a_tier_stores_32_bits():
    kv = KVManager(SHAPE, 8 * PAGE, PAGE)
    (seq16,) = _sequences(kv, "balanced", [2])
    (seq32,) = _sequences(kv, "exact", [2])
    ((pos, k, v),) = _tokens([2])
    for seq in (seq16, seq32):
        for layer in range(SHAPE.num_layers):
            seq.kv_store.write(layer, pos, k[layer], v[layer])
    assert seq16.kv_store.keys.dtype == torch.float16
    assert seq32.kv_store.keys.dtype == torch.float32
    # the exact format keeps the inputs bit for bit, so attention sees the model's own keys
    assert torch.equal(seq32.kv_store.keys[:, :, :2], k.permute(0, 2, 1, 3))
    q = torch.randn(1, 4, SHAPE.head_dim)  # 4 query heads over 2 KV heads
    out = seq16.kv_store.attend(0, q, torch.tensor([1]), SHAPE.head_dim ** -0.5)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert seq16.kv_store.working_set_bytes() < seq32.kv_store.working_set_bytes()


@pytest.mark.parametrize("preset", ["leankv:balanced-window", "balanced"])
def test_batched_attention_equals_attention_sequence_by_sequence(preset):
    # three decoding sequences of different widths (one with a pruned hole) and a prompt chunk;
    # balanced-window ranks tokens (prunes), the shipped balanced does not (fused attention)
    lengths, chunk = [5, 1, 3], 4
    data = _tokens([*lengths, chunk])
    kvs = [KVManager(SHAPE, 16 * PAGE, PAGE) for _ in range(2)]
    fmt = kvs[0].format(preset)[0]
    batched, single = (_sequences(kv, preset, [*lengths, chunk]) for kv in kvs)
    for seqs in (batched, single):
        for layer in range(SHAPE.num_layers):
            for seq, (p, k, v) in zip(seqs, data, strict=True):
                seq.kv_store.write(layer, p, k[layer], v[layer])
        seqs[0].kv_store.pos[:, 1, 2] = -1  # a pruned token: a masked hole
    q = torch.randn(len(lengths) + chunk, 4, SHAPE.head_dim, generator=torch.Generator()
                    .manual_seed(1))
    q_pos = torch.tensor([n - 1 for n in lengths] + list(range(chunk)))
    sizes = [1] * len(lengths) + [chunk]
    scaling = SHAPE.head_dim ** -0.5
    for layer in range(SHAPE.num_layers):
        out = fmt.attend_batch(layer, [s.kv_store for s in batched], sizes, q, q_pos, scaling)
        want = torch.cat([s.kv_store.attend(layer, q[i:i + n], q_pos[i:i + n], scaling)
                          for s, i, n in zip(single, [0, 1, 2, 3], sizes, strict=True)])
        assert torch.allclose(out, want, atol=1e-5)
    if not fmt.config.ranks_tokens:  # nothing to rank by: no mass is kept
        assert all(s.kv_store.score.eq(0).all() for s in batched + single)
        return
    for a, b in zip(batched, single, strict=True):
        assert a.kv_store.score.abs().sum() > 0
        assert torch.allclose(a.kv_store.score, b.kv_store.score, atol=1e-6)
    # the hole got no attention: its slot saw no query
    assert batched[0].kv_store.score[:, 1, 2].eq(0).all()
