"""LeanKV as a KV format of the serving engine (``leanstack.llm.engine``).

Every token's keys and values are stored at the preset's high-tier precision (``hi_bits``: keys
at more bits than values, e.g. K8V4), quantized per token and KV head in groups along head_dim
with an fp16 scale and minimum (LeanKV's quantizer); 16- and 32-bit tiers store raw floats. A
record is smaller than an fp16 one, so one engine page holds more tokens and more requests fit
in the same byte budget. Per-head significance tiering and pruning (``LeanKVCache``) are not
applied here: the engine addresses a token by one (page, slot) for all heads.

Importing this module registers the ``leankv`` format: ``leankv:PRESET`` or ``leankv:FILE.toml``
(a TOML table of ``LeanKVConfig`` settings, optionally ``preset = "NAME"`` as the base).
"""

from __future__ import annotations

import torch

from leanstack.errors import LeanstackError
from leanstack.leankv.config import LeanKVConfig
from leanstack.leankv.quant import RAW_BITS, Quantized, bytes_per_vector, dequantize, quantize
from leanstack.llm.engine.kv_format import ModelShape, register_kv_format


class _Half:
    """Encoder for one of K or V at ``bits`` per value."""

    def __init__(self, shape: ModelShape, bits: int, group: int):
        self.bits, self.group, self.dim = bits, group, shape.head_dim
        self.raw = RAW_BITS.get(bits)
        self.packed_bytes = self.dim * bits // 8 if self.raw is None else 0
        self.bytes = bytes_per_vector(self.dim, bits, group)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[n, heads, dim] -> uint8 [n, heads, bytes]."""
        if self.raw is not None:
            return x.to(self.raw).contiguous().view(torch.uint8)
        q = quantize(x, self.bits, self.group)
        return torch.cat([q.packed, q.scale.view(torch.uint8), q.minimum.view(torch.uint8)], -1)

    def decode(self, b: torch.Tensor) -> torch.Tensor:
        """uint8 [n, heads, bytes] -> float32 [n, heads, dim]."""
        if self.raw is not None:
            return b.contiguous().view(self.raw).float()
        groups = self.dim // self.group
        p = self.packed_bytes
        scale = b[..., p:p + 2 * groups].contiguous().view(torch.float16)
        minimum = b[..., p + 2 * groups:].contiguous().view(torch.float16)
        return dequantize(Quantized(b[..., :p], scale, minimum), self.bits, self.group)


class LeanKVFormat:
    """Records of K at ``hi_bits[0]`` and V at ``hi_bits[1]`` for every KV head of a token."""

    def __init__(self, shape: ModelShape, config: LeanKVConfig, name: str):
        if shape.head_dim % config.group:
            raise LeanstackError(f"LeanKV group {config.group} must divide head_dim "
                                 f"{shape.head_dim}: set group in the preset")
        self.name = name
        self.config = config
        self.heads = shape.num_kv_heads
        self.k = _Half(shape, config.hi_bits[0], config.group)
        self.v = _Half(shape, config.hi_bits[1], config.group)
        self.record_bytes = self.heads * (self.k.bytes + self.v.bytes)

    def encode(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        rec = torch.cat([self.k.encode(k), self.v.encode(v)], -1)
        return rec.reshape(k.shape[0], self.record_bytes)

    def decode(self, layer: int, records: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rec = records.view(-1, self.heads, self.k.bytes + self.v.bytes)
        return self.k.decode(rec[..., :self.k.bytes]), self.v.decode(rec[..., self.k.bytes:])


def _factory(shape: ModelShape, spec: str) -> LeanKVFormat:
    spec = spec or "balanced"
    return LeanKVFormat(shape, LeanKVConfig.load(spec), f"leankv:{spec}")


register_kv_format("leankv", _factory)
