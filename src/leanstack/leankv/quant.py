"""Asymmetric group quantization with real bit-packing.

A vector of ``head_dim`` floats is split into groups along its last axis; each group keeps an
fp16 minimum (zero point) and an fp16 scale, and its values become ``bits``-bit integers packed
``8 // bits`` to a byte. ``bits`` 16 and 32 mean "not quantized", stored as fp16 / fp32 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leanstack.errors import LeanstackError

QUANT_BITS = (2, 4, 8)
RAW_BITS = {16: torch.float16, 32: torch.float32}
SUPPORTED_BITS = (*QUANT_BITS, *RAW_BITS)


def check_bits(bits: int) -> None:
    """Raise a one-line error unless ``bits`` is a supported precision."""
    if bits not in SUPPORTED_BITS:
        raise LeanstackError(f"unsupported precision {bits} bits: use one of {SUPPORTED_BITS}")


def pack_bits(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integers in ``[0, 2**bits)`` along the last axis, ``8 // bits`` per uint8 byte."""
    per = 8 // bits
    if q.shape[-1] % per:
        raise LeanstackError(f"last axis {q.shape[-1]} is not a multiple of {per} for {bits}-bit")
    q = q.to(torch.uint8).reshape(*q.shape[:-1], q.shape[-1] // per, per)
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=q.device)
    return (q << shifts).sum(-1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: uint8 bytes back to integers (as uint8), last axis widened."""
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
    q = (packed.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return q.reshape(*packed.shape[:-1], packed.shape[-1] * (8 // bits))


@dataclass(frozen=True)
class Quantized:
    """Packed integers plus the fp16 per-group scale and minimum needed to restore them."""

    packed: torch.Tensor  # uint8 [..., dim * bits / 8]
    scale: torch.Tensor  # float16 [..., dim / group]
    minimum: torch.Tensor  # float16 [..., dim / group]


def quantize(x: torch.Tensor, bits: int, group: int) -> Quantized:
    """Quantize ``x`` (float, last axis divisible by ``group``) to ``bits`` per value."""
    if bits not in QUANT_BITS:
        raise LeanstackError(f"quantize takes bits in {QUANT_BITS}, got {bits}")
    dim = x.shape[-1]
    if group <= 0 or dim % group:
        raise LeanstackError(f"group size {group} must divide the last axis {dim}")
    levels = (1 << bits) - 1
    xg = x.float().reshape(*x.shape[:-1], dim // group, group)
    minimum = xg.amin(-1).to(torch.float16)
    span = xg.amax(-1) - minimum.float()
    # Nudge the scale up before rounding to fp16 so minimum + levels * scale still covers max.
    scale = (span / levels * (1 + 2.0**-10)).to(torch.float16)
    scale_f = scale.float().unsqueeze(-1)
    inv = torch.where(scale_f > 0, 1.0 / scale_f, torch.zeros_like(scale_f))
    q = torch.round((xg - minimum.float().unsqueeze(-1)) * inv).clamp_(0, levels)
    return Quantized(pack_bits(q.reshape(x.shape), bits), scale, minimum)


def dequantize(qx: Quantized, bits: int, group: int,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Restore floats from :func:`quantize` output."""
    q = unpack_bits(qx.packed, bits).float()
    dim = q.shape[-1]
    qg = q.reshape(*q.shape[:-1], dim // group, group)
    x = qg * qx.scale.float().unsqueeze(-1) + qx.minimum.float().unsqueeze(-1)
    return x.reshape(q.shape).to(dtype)


def bytes_per_vector(dim: int, bits: int, group: int) -> int:
    """Bytes one ``dim``-vector takes at ``bits``: packed data plus fp16 scale and minimum."""
    check_bits(bits)
    if bits in RAW_BITS:
        return dim * bits // 8
    return dim * bits // 8 + 4 * (dim // group)
