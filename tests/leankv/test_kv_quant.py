import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from leanstack.errors import LeanstackError
from leanstack.leankv.quant import (
    QUANT_BITS,
    bytes_per_vector,
    dequantize,
    pack_bits,
    quantize,
    unpack_bits,
)

torch.set_num_threads(1)


@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from(QUANT_BITS), rows=st.integers(1, 5), cols=st.integers(1, 6),
       seed=st.integers(0, 2**31 - 1))
def test_pack_unpack_round_trip(bits, rows, cols, seed):
    g = torch.Generator().manual_seed(seed)
    width = cols * (8 // bits)
    q = torch.randint(0, 1 << bits, (rows, width), generator=g, dtype=torch.uint8)
    packed = pack_bits(q, bits)
    assert packed.dtype == torch.uint8
    assert packed.shape == (rows, width * bits // 8)  # real packing: fewer bytes
    assert torch.equal(unpack_bits(packed, bits), q)


def test_pack_layout_is_little_end_first():
    q = torch.tensor([[1, 2, 3, 0]], dtype=torch.uint8)
    assert pack_bits(q, 2).tolist() == [[1 | 2 << 2 | 3 << 4]]


@settings(max_examples=80, deadline=None)
@given(bits=st.sampled_from(QUANT_BITS), group=st.sampled_from([8, 16, 32]),
       groups=st.integers(1, 4), rows=st.integers(1, 6), scale=st.floats(1e-3, 50.0),
       seed=st.integers(0, 2**31 - 1))
def test_round_trip_error_within_half_a_step(bits, group, groups, rows, scale, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, group * groups, generator=g) * scale + torch.randn(1, generator=g)
    qx = quantize(x, bits, group)
    back = dequantize(qx, bits, group)
    err = (back - x).abs().reshape(rows, groups, group)
    step = qx.scale.float().unsqueeze(-1)
    # Half a quantization step, plus the fp16 rounding of the zero point.
    bound = step / 2 + qx.minimum.float().abs().unsqueeze(-1) * 2.0**-10 + 1e-6
    assert bool((err <= bound).all())
    assert bool((back.reshape(rows, groups, group).amax(-1)
                 <= x.reshape(rows, groups, group).amax(-1) + step.squeeze(-1)).all())


def test_more_bits_less_error():
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    errs = [(dequantize(quantize(x, b, 64), b, 64) - x).abs().mean().item() for b in (2, 4, 8)]
    assert errs[0] > errs[1] > errs[2]


def test_constant_group_is_exact():
    x = torch.full((3, 32), 1.5)
    assert torch.equal(dequantize(quantize(x, 4, 32), 4, 32), x)


def test_bytes_per_vector_counts_scale_and_zero():
    assert bytes_per_vector(64, 4, 64) == 32 + 4
    assert bytes_per_vector(64, 2, 32) == 16 + 8
    assert bytes_per_vector(64, 16, 64) == 128


def test_bad_input_is_one_line_error():
    with pytest.raises(LeanstackError, match="group size"):
        quantize(torch.zeros(2, 10), 4, 4)
    with pytest.raises(LeanstackError, match="bits"):
        quantize(torch.zeros(2, 8), 3, 8)
    with pytest.raises(LeanstackError, match="unsupported precision"):
        bytes_per_vector(64, 5, 64)
